"""The whole DAG on CPU: tokenize → pretrain (vanilla, fomaml) → finetune → NER table → dynamics → figures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def small_demo(tmp_path: Path) -> Path:
    """The default config, shortened: fewer documents and steps, so the test takes a few minutes."""
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    d = cfg["defaults"]
    d["corpus"]["max_documents"] = 30000
    d["tokenizer"]["vocab_size"] = 2048
    d["train"]["budget"]["value"] = 60
    d["train"]["eval_every"] = 20
    d["train"]["checkpoint"] = {"every": 20, "log_spaced": 2}
    d["finetune"].update({"max_train_sentences": 300, "max_eval_sentences": 80, "epochs": 1})
    d["wandb"] = {"mode": "offline"}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow
def test_default_grid_end_to_end(tmp_path):
    cfg = small_demo(tmp_path)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb"), PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--configfile", str(cfg)], capture_output=True, text=True, timeout=1500, env=env)
    exp = tmp_path / "results" / "demo"
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in exp.rglob("*.log"))
        pytest.fail(f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs}")

    tok = next((exp / "tokenize").glob("*/manifest.json")).parent
    assert {p.name for p in tok.iterdir()} >= {"tokenizer.json", "train.bin", "val.bin", "manifest.json", "done.json"}
    for method in ("vanilla", "fomaml"):
        run = exp / "runs" / f"method~{method}"
        records = [json.loads(line) for line in (run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if r["kind"] == "train"]
        assert train and train[-1]["step"] == 60
        assert any(r["kind"] == "eval" for r in records)
        if method == "fomaml":
            assert sum(r.get("n_meta", 0) for r in train) > 0
        assert (run / "pretrain" / "hf" / "config.json").exists()
        for regime in ("head", "full"):
            assert (run / "finetune" / f"Danish-DDT~{regime}" / "results.csv").exists()
        assert (run / "dynamics" / "dynamics.csv").exists()
        assert (run / "pretrain" / "done.json").exists() and (run / "dynamics" / "done.json").exists()
        # --cores 2: each compute job was given both cores (one at a time) and torch computed with them.
        for done in (run / "pretrain" / "done.json", run / "dynamics" / "done.json"):
            assert json.loads(done.read_text())["threads"] == {"intra_op": 2, "inter_op": 2}, done
    ner = (exp / "ner" / "results.csv").read_text()
    assert "micro_f1" in ner and "Danish-DDT" in ner and "English-EWT" in ner
    index = json.loads((exp / "figures" / "index.json").read_text())
    assert index
    pngs = list((exp / "figures").rglob("*.png"))
    assert len(pngs) >= 4

    status = subprocess.run([str(BIN / "metapretrain"), "status", str(cfg), "--json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["rows"]
    assert rows and all(r["state"] == "done" for r in rows), [(r["run_id"], r["stage"], r["state"]) for r in rows]

    # Nothing to do on a second invocation: the DAG is complete and up to date.
    again = subprocess.run([str(BIN / "snakemake"), "-n", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                            "--configfile", str(cfg)], capture_output=True, text=True, timeout=300, env=env)
    assert "Nothing to be done" in again.stdout + again.stderr
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
