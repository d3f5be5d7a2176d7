"""The dynamics stage over real checkpoints of a tiny model: the probe batch, the tables and done.json, reruns,
torn and uncommitted rows, changed settings, preemption, a real tokenize output, vanilla runs and the CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from helpers import tiny_decoder, tiny_model, write_run_dir

VOCAB = 64
SIZE = {"d_model": 16, "ffn_hidden": 32, "max_seq_len": 32}  # a smaller tiny decoder: d 16, FFN 32
RUN_ID = "method~fomaml/model.preset~micro"


# Tiny matrices: more threads only contend for the shared CPU cores.
pytestmark = pytest.mark.usefixtures("single_thread")


STEPS_SAVED = (0, 10, 20)


def _make_run(root, metrics=None, seq_len=16, meta=True, tok=None):
    """A run directory with 3 checkpoints of a tiny model, a val shard (or `tok`), metrics.jsonl and run.json."""
    from metapretrain.checkpoint import save_checkpoint
    from metapretrain.config.load import run_config_from_dict

    dyn = {"probe_batch_size": 3, "smoothing": 1}
    if metrics is not None:
        dyn["metrics"] = metrics
    config = {"seed": 7, "model": tiny_model(**SIZE), "train": {"seq_len": seq_len}, "dynamics": dyn,
              "launch": {"launcher": "debug"}}
    run_dir = write_run_dir(root / "runs", "run", config, "t", run_id=RUN_ID)
    cfg = run_config_from_dict(config)
    vocab = VOCAB
    if tok is None:
        tok = root / "tok"
        tok.mkdir()
        rng = np.random.default_rng(0)
        rng.integers(0, VOCAB, 500, dtype=np.uint16).tofile(tok / "val.bin")
        (tok / "manifest.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": VOCAB,
                                                       "splits": {"val": {"file": "val.bin", "tokens": 500}}}))
    else:
        vocab = json.loads((tok / "manifest.json").read_text())["vocab_size"]
    model = tiny_decoder(vocab, **SIZE)
    g = torch.Generator().manual_seed(5)
    for step in STEPS_SAVED:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        save_checkpoint(run_dir, step, model=model, state={}, config=cfg.to_dict(), tokens=step * 48,
                        flops=step * 1e6)
    if meta:
        lines = [{"kind": "train", "step": s, "tokens": s * 48, "flops": s * 1e6, "wall": s, "loss": 4.0,
                  "meta/query_acc": s / 100} for s in range(1, 21, 3)]
        (run_dir / "pretrain").mkdir(exist_ok=True)
        (run_dir / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir, tok


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_probe_batch_is_fixed_by_the_seed(tmp_path):
    from metapretrain.dynamics.probe_pass import probe_batch

    _, tok = _make_run(tmp_path)
    a, b = probe_batch(tok, 3, 16, seed=7), probe_batch(tok, 3, 16, seed=7)
    assert a.shape == (3, 17) and a.dtype == torch.int64 and torch.equal(a, b)
    assert not torch.equal(a, probe_batch(tok, 3, 16, seed=8))
    with pytest.raises(ValueError, match="probe_batch_size=40"):
        probe_batch(tok, 40, 16, seed=7)


def test_stage_writes_tables_and_done_last(tmp_path):
    from metapretrain.dynamics.stage import dynamics_run
    from metapretrain.dynamics.store import COLUMNS

    run_dir, tok = _make_run(tmp_path)
    done = dynamics_run(str(run_dir), str(tok))
    out = run_dir / "dynamics"
    assert done["stage"] == "dynamics" and done["run_id"] == RUN_ID
    assert set(done["outputs"]) == {"dynamics.csv", "peaks.csv"}
    rows = _read(out / "dynamics.csv")
    assert tuple(rows[0]) == COLUMNS
    assert {int(r["step"]) for r in rows} == set(STEPS_SAVED)
    assert {r["run_id"] for r in rows} == {RUN_ID}
    by = {(r["step"], r["layer"], r["component"], r["head"], r["metric"]): r for r in rows}
    assert float(by[("20", "1", "resid.act", "", "cka_final")]["value"]) == pytest.approx(1.0)
    assert float(by[("0", "1", "resid.act", "", "cka_final")]["value"]) < 1.0
    assert by[("10", "0", "attn", "3", "head_entropy")]["tokens"] == "480"
    assert float(by[("10", "", "episode", "", "query_acc")]["value"]) == pytest.approx(0.10)
    assert ("0", "", "episode", "", "query_acc") not in by  # nothing logged at or before step 0
    assert float(by[("20", "", "lm_head.weight", "", "frobenius_norm")]["value"]) > 0
    assert {"attn.v_proj.grad", "ffn.down_proj.act", "attn.o_proj.weight"} <= {r["component"] for r in rows}
    # the final checkpoint is committed first (CKA's reference), the rest in step order
    assert [int(r["step"]) for r in rows][0] == 20
    peaks = _read(out / "peaks.csv")
    assert peaks and set(peaks[0]) == {"run_id", "layer", "component", "metric", "peak_step", "peak_value", "rise",
                                       "fall", "is_rise_and_fall", "shape", "trough_step", "trough_value",
                                       "trough_fall", "trough_rise", "is_fall_and_rise"}
    assert {p["shape"] for p in peaks} <= {"rise_fall", "fall_rise", "monotone_up", "monotone_down", "flat"}
    assert {p["metric"] for p in peaks} >= {"effective_rank", "per", "head_entropy", "cka_final", "query_acc"}
    assert not any(p["metric"] == "head_entropy" and p["layer"] == "" for p in peaks)


def test_rerun_is_a_no_op_and_a_torn_row_is_repaired(tmp_path):
    from metapretrain.dynamics.stage import dynamics_run

    run_dir, tok = _make_run(tmp_path, metrics=["weight_norm", "episodic_accuracy"])
    dynamics_run(str(run_dir), str(tok))
    out = run_dir / "dynamics"
    table, done = (out / "dynamics.csv").read_bytes(), (out / "done.json").read_bytes()
    dynamics_run(str(run_dir), str(tok))
    assert (out / "dynamics.csv").read_bytes() == table and (out / "done.json").read_bytes() == done

    # A kill mid-row: a partial trailing line, no done.json. The rerun cuts it and recomputes nothing.
    (out / "done.json").unlink()
    with open(out / "dynamics.csv", "a") as fh:
        fh.write(f"{RUN_ID},30,1440,3e7,0,attn.q_pr")
    dynamics_run(str(run_dir), str(tok))
    assert (out / "dynamics.csv").read_bytes() == table
    assert (out / "done.json").exists()


def test_uncommitted_checkpoint_is_recomputed(tmp_path):
    """Rows appended but never committed (killed before the commit record) are dropped and recomputed."""
    from metapretrain.dynamics.stage import dynamics_run
    from metapretrain.dynamics.store import DynamicsTable

    run_dir, tok = _make_run(tmp_path, metrics=["weight_norm", "cka"])
    dynamics_run(str(run_dir), str(tok))
    out = run_dir / "dynamics"
    table = (out / "dynamics.csv").read_bytes()
    commit = json.loads((out / "dynamics.commit.json").read_text())
    (out / "done.json").unlink()
    # Pretend the last checkpoint's block was written (plus half a row) but its commit never happened.
    last_block = table.rfind(f"{RUN_ID},10,".encode())
    first_of_last = table.find(f"{RUN_ID},10,".encode())
    assert 0 < first_of_last <= last_block
    (out / "dynamics.commit.json").write_text(json.dumps(commit | {"bytes": first_of_last, "steps": [20, 0]}))
    with open(out / "dynamics.csv", "ab") as fh:
        fh.write(b"half,a,row")
    assert dynamics_run(str(run_dir), str(tok))["computed"] == 1
    assert (out / "dynamics.csv").read_bytes() == table
    assert json.loads((out / "dynamics.commit.json").read_text())["steps"] == commit["steps"]

    # Without a commit record: the partial line and the last step's (possibly incomplete) rows go.
    (out / "done.json").unlink()
    (out / "dynamics.commit.json").unlink()
    with open(out / "dynamics.csv", "ab") as fh:
        fh.write(b"torn,ro")
    assert DynamicsTable(out / "dynamics.csv", commit["identity"]).steps == {0, 20}
    assert dynamics_run(str(run_dir), str(tok))["computed"] == 1
    assert (out / "dynamics.csv").read_bytes() == table


def test_changed_metrics_start_the_table_over(tmp_path, monkeypatch):
    from metapretrain.config.load import load_run_config, write_run_config
    from metapretrain.dynamics.stage import dynamics_run
    from metapretrain.launch import preemption

    run_dir, tok = _make_run(tmp_path, metrics=["weight_norm"])
    dynamics_run(str(run_dir), str(tok))
    cfg = load_run_config(run_dir / "config.resolved.yaml").to_dict()
    cfg["dynamics"]["metrics"] = ["episodic_accuracy"]
    write_run_config(run_dir / "config.resolved.yaml", cfg)
    monkeypatch.setattr(preemption, "requested", lambda: True)
    with pytest.raises(preemption.Preempted):  # killed while recomputing: no stale done.json is left
        dynamics_run(str(run_dir), str(tok))
    assert not (run_dir / "dynamics" / "done.json").exists()
    monkeypatch.setattr(preemption, "requested", lambda: False)
    done = dynamics_run(str(run_dir), str(tok))
    assert done["metrics"] == ["episodic_accuracy"] and done["computed"] == 2  # the first was committed
    assert {r["metric"] for r in _read(run_dir / "dynamics" / "dynamics.csv")} == {"query_acc"}
    # A new smoothing only redoes the peaks.
    cfg["dynamics"]["smoothing"] = 2
    write_run_config(run_dir / "config.resolved.yaml", cfg)
    done = dynamics_run(str(run_dir), str(tok))
    assert done["computed"] == 0 and done["settings"]["smoothing"] == 2


def test_preempted_stage_resumes_to_the_same_tables(tmp_path, monkeypatch):
    from metapretrain.dynamics.stage import dynamics_run
    from metapretrain.launch import preemption

    run_dir, tok = _make_run(tmp_path / "a", metrics=["effective_rank", "cka", "head_entropy"])
    monkeypatch.setattr(preemption, "requested", lambda: True)
    with pytest.raises(preemption.Preempted):
        dynamics_run(str(run_dir), str(tok))
    out = run_dir / "dynamics"
    assert not (out / "done.json").exists()
    assert {int(r["step"]) for r in _read(out / "dynamics.csv")} == {20}
    monkeypatch.setattr(preemption, "requested", lambda: False)
    dynamics_run(str(run_dir), str(tok))

    fresh_dir, fresh_tok = _make_run(tmp_path / "b", metrics=["effective_rank", "cka", "head_entropy"])
    dynamics_run(str(fresh_dir), str(fresh_tok))
    resumed = _read(out / "dynamics.csv")
    fresh = _read(fresh_dir / "dynamics" / "dynamics.csv")
    assert len(resumed) == len(fresh)
    for a, b in zip(resumed, fresh, strict=True):
        assert {k: a[k] for k in a if k != "value"} == {k: b[k] for k in b if k != "value"}
        assert float(a["value"]) == pytest.approx(float(b["value"]), rel=1e-6, abs=1e-9)


def test_stage_on_the_tokenize_stage_output(tmp_path, tokenized_dir):
    """The probe batch comes from a real val shard written by the tokenize stage."""
    from metapretrain.dynamics.stage import dynamics_run

    run_dir, tok = _make_run(tmp_path, metrics=["effective_rank", "head_entropy"], tok=tokenized_dir)
    done = dynamics_run(str(run_dir), str(tok))
    assert done["probe_shape"] == [3, 17]
    rows = _read(run_dir / "dynamics" / "dynamics.csv")
    assert all(math.isfinite(float(r["value"])) for r in rows)


def test_vanilla_run_has_no_episodic_rows(tmp_path):
    from metapretrain.dynamics.stage import dynamics_run

    run_dir, tok = _make_run(tmp_path, metrics=["episodic_accuracy", "weight_norm"], meta=False)
    dynamics_run(str(run_dir), str(tok))
    rows = _read(run_dir / "dynamics" / "dynamics.csv")
    assert rows and not any(r["component"] == "episode" for r in rows)


def test_cli_runs_the_stage_through_the_launcher(tmp_path):
    from metapretrain.dynamics.stage import main

    run_dir, tok = _make_run(tmp_path, metrics=["weight_norm"])
    assert main(["--run-dir", str(run_dir), "--data", str(tok)]) == 0
    assert (run_dir / "dynamics" / "done.json").exists()
    assert (run_dir / "logs" / "dynamics.log").exists()
    assert main(["--run-dir", str(tmp_path / "nope"), "--data", str(tok)]) == 2
