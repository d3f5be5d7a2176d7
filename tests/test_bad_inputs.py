"""Bad input, table-driven: every case must fail with a message naming the file and the key or
line, print no traceback, and leave everything already in results/ byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import small_tokenize_config, tiny_model, write_run_dir

REPO = Path(__file__).resolve().parents[1]
METAPRETRAIN = [sys.executable, "-m", "metapretrain.cli"]

EXP_HEAD = "experiment: bad\n"

# (case id, experiment YAML, expected substrings of the error, expected line or None)
CONFIG_CASES = [
    ("unknown-top-key", EXP_HEAD + "trian: {lr: 1}\n", ["did you mean 'defaults.train'"], 2),
    ("unknown-section-key", EXP_HEAD + "defaults:\n  train: {lrate: 1}\n", ["unknown key 'lrate'", "train"], 3),
    ("wrong-type", EXP_HEAD + "defaults:\n  train: {batch_size: eight}\n", ["defaults.train.batch_size", "'eight'", "integer"], 3),
    ("missing-experiment", "defaults: {}\n", ["missing required key", "experiment"], None),
    ("section-not-mapping", EXP_HEAD + "defaults:\n  model: micro\n", ["defaults.model", "mapping"], 3),
    ("zero-batch", EXP_HEAD + "defaults:\n  train: {batch_size: 0}\n", ["defaults.train.batch_size", ">= 1"], 3),
    ("negative-lr", EXP_HEAD + "defaults:\n  train: {lr: -0.1}\n", ["defaults.train.lr", "> 0"], 3),
    ("negative-width", EXP_HEAD + "defaults:\n  model: {d_model: -64}\n", ["defaults.model.d_model", ">= 8"], 3),
    ("heads-not-dividing", EXP_HEAD + "defaults:\n  model: {d_model: 64, n_heads: 6}\n", ["model.n_heads", "not divisible"], 3),
    ("kv-not-dividing", EXP_HEAD + "defaults:\n  model: {n_heads: 4, n_kv_heads: 3}\n", ["model.n_kv_heads", "not divisible"], 3),
    ("n-way-over-vocab", EXP_HEAD + "defaults:\n  tokenizer: {vocab_size: 64}\n  meta: {learner: fomaml, episode: {n_way: 65}}\n",
     ["meta.episode.n_way", "larger than the vocabulary"], 4),
    ("seq-over-context", EXP_HEAD + "defaults:\n  train: {seq_len: 100000}\n", ["train.seq_len", "max_seq_len"], 3),
    ("axis-value-not-allowed", EXP_HEAD + "grid:\n  meta.learner: [fomaml, maml3]\n", ["meta.learner", "'maml3'", "one of"], 3),
    ("axis-unknown-key", EXP_HEAD + "grid:\n  train.lr_max: [1, 2]\n", ["unknown key 'lr_max'"], 3),
    ("bundle-unknown-key", EXP_HEAD + "grid:\n  m:\n    a: {meta.hybrid: 0.5}\n", ["did you mean 'hybrid_ratio'"], 4),
    ("duplicate-axis-values", EXP_HEAD + "grid:\n  seed: [3, 3]\n", ["distinct"], 3),
    ("zip-unequal", EXP_HEAD + "zip:\n  z:\n    seed: [1, 2, 3]\n    train.lr: [0.1, 0.2]\n", ["equal lengths", "seed: 3", "train.lr: 2"], 3),
    ("exclude-unknown-axis", EXP_HEAD + "grid:\n  seed: [1]\nexclude:\n  - {seeds: 1}\n", ["not a grid axis"], 5),
    ("bad-yaml", EXP_HEAD + "defaults: {train: [\n", ["not valid YAML"], None),
    ("bad-enum", EXP_HEAD + "defaults:\n  train: {on_nonfinite: ignore}\n", ["'skip', 'stop'"], 3),
    ("hybrid-ratio-range", EXP_HEAD + "defaults:\n  meta: {hybrid_ratio: 1.5}\n", ["meta.hybrid_ratio", "<= 1"], 3),
    ("slurm-stage-key", EXP_HEAD + "defaults:\n  launch: {slurm: {stages: {pretrain: {gpu: 2}}}}\n", ["launch.slurm.stages.pretrain.gpu", "unknown SLURM setting"], None),
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def results(tmp_path, tokenized_dir):
    """A results/ tree with finished outputs in it, which no failing command may touch."""
    res = tmp_path / "results"
    shutil.copytree(tokenized_dir, res / "bad" / "tokenize" / "kept")
    (res / "bad" / "runs" / "seed~1" / "pretrain").mkdir(parents=True)
    (res / "bad" / "runs" / "seed~1" / "pretrain" / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    return res


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, METAPRETRAIN_RESULTS=str(cwd / "results"))
    return subprocess.run(METAPRETRAIN + args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(("case", "text", "needles", "line"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_experiment_config(tmp_path, results, case, text, needles, line):
    before = snapshot(results)
    cfg = tmp_path / f"{case}.yaml"
    cfg.write_text(text)
    for cmd in (["grid", "validate", str(cfg)], ["status", str(cfg)]):
        proc = run_cli(cmd, tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        err = proc.stderr
        assert str(cfg) in err, err
        for needle in needles:
            assert needle in err, err
        if line is not None:
            assert f"{cfg}:{line}:" in err, err
    assert snapshot(results) == before


CORPUS_CASES = [
    ("corpus-empty", "empty.txt", b"", "corpus file is empty"),
    ("corpus-whitespace", "ws.txt", b"   \n\n", "corpus file is empty"),
    ("corpus-binary", "bin.txt", b"abc\n\x00\x01\x02", "bin.txt:2: binary data"),
    ("corpus-bad-utf8", "latin.txt", b"ok\nna\xefve\n", "latin.txt:2: invalid UTF-8"),
    ("corpus-missing", None, None, "matches no file"),
]


@pytest.mark.parametrize(("case", "name", "data", "needle"), CORPUS_CASES, ids=[c[0] for c in CORPUS_CASES])
def test_bad_corpus(tmp_path, results, case, name, data, needle):
    import json

    before = snapshot(results)
    data_root = tmp_path / "data"
    (data_root / "corpus").mkdir(parents=True)
    if name:
        (data_root / "corpus" / name).write_bytes(data)
    cfg = tmp_path / "tok.yaml"
    cfg.write_text(json.dumps(small_tokenize_config(data_root)))
    out = results / "bad" / "tokenize" / "kept"
    proc = run_cli(["tokenize", "--config", str(cfg), "--out", str(out)], tmp_path)
    assert proc.returncode == 1
    assert needle in proc.stderr, proc.stderr
    assert str(data_root) in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(results) == before


GOOD_UNER = "# sent_id = s1\n1\tAnna\tB-PER\t-\tx\n2\tbor\tO\t-\t-\n3\ti\tO\t-\t-\n4\tParis\tB-LOC\t-\tx\n\n"

# (case id, file contents, expected line or None, expected substring, extra `uner stats` options)
UNER_CASES = [
    ("uner-4-columns", "1\tA\tO\t-\n\n", 1, "expected 5 tab-separated columns, found 4", []),
    ("uner-6-columns", "1\tA\tO\t-\t-\n2\tB\tO\t-\t-\t-\n\n", 2, "found 6", []),
    ("uner-space-separated", "1 A O - -\n\n", 1, "found 1", []),
    ("uner-id-gap", "1\tA\tO\t-\t-\n3\tB\tO\t-\t-\n\n", 2, "token id '3' does not follow", []),
    ("uner-id-not-from-1", "# text = a\n2\tA\tO\t-\t-\n\n", 2, "token id '2'", []),
    ("uner-unknown-tag", "1\tA\tO\t-\t-\n2\tB\tB-PERSON1\t-\t-\n\n", 2, "unknown tag 'B-PERSON1'", []),
    ("uner-bad-prefix", "1\tA\tO\t-\t-\n2\tB\tX-PER\t-\t-\n\n", 2, "unknown tag 'X-PER'", []),
    ("uner-comment-in-sentence", "1\tA\tO\t-\t-\n# text = b\n\n", 2, "comment line inside a sentence", []),
    ("uner-no-final-blank", "1\tA\tO\t-\t-\n\n1\tB\tO\t-\t-\n", 3, "not followed by a blank line", []),
    ("uner-no-final-newline", "1\tA\tO\t-\t-\n\n1\tB\tO\t-\t-", 3, "no newline at the end", []),
    ("uner-broken-iob2", "1\tA\tO\t-\t-\n2\tB\tI-PER\t-\t-\n\n", 2, "I-PER after O breaks IOB2",
     ["--invalid-transition", "error"]),
    ("uner-bad-utf8", b"1\tA\tO\t-\t-\n2\tna\xefve\tO\t-\t-\n\n", 2, "invalid UTF-8", []),
]


@pytest.mark.parametrize(("case", "text", "line", "needle", "opts"), UNER_CASES, ids=[c[0] for c in UNER_CASES])
def test_bad_uner_file(tmp_path, results, case, text, line, needle, opts):
    before = snapshot(results)
    uner = tmp_path / "uner"
    (uner / "Danish-DDT").mkdir(parents=True)
    (uner / "Danish-DDT" / "da_ddt-ud-train.iob2").write_text(GOOD_UNER)
    bad = uner / "Danish-DDT" / "da_ddt-ud-test.iob2"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    proc = run_cli(["uner", "stats", str(uner), *opts], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    prefix = f"{bad}:{line}: " if line is not None else f"{bad}: "
    assert prefix in proc.stderr and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(results) == before


# ------------------------------------------------------------------------ stages over results/
TINY_RUN = {
    "model": tiny_model(),
    "train": {"budget": {"unit": "steps", "value": 2}, "batch_size": 2, "seq_len": 16, "eval_batches": 1,
              "checkpoint": {"every": 1, "log_spaced": 0, "export_hf": "none"}},
    "finetune": {"max_train_sentences": 8, "max_eval_sentences": 8, "epochs": 1},
    "launch": {"launcher": "debug"},
    "wandb": {"mode": "disabled"},
}


def write_run(run: Path, over: dict | None = None) -> Path:
    return write_run_dir(run.parent, run.name, {**TINY_RUN, **(over or {})}, "bad")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenized_dir):
    """A tiny finished pretrain run (checkpoints 0, 1, 2), trained in-process once and copied per test."""
    from metapretrain.train.stage import train_run

    run = write_run(tmp_path_factory.mktemp("trained") / "seed~2")
    train_run(str(run), str(tokenized_dir))
    return run


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files of `before` that changed or went, and new files outside the runs' logs/ (launch records)."""
    gone = [k for k, v in before.items() if after.get(k) != v]
    new = [k for k in after.keys() - before.keys() if "/logs/" not in k]
    return sorted(gone + new)


def _resign(ckpt_dir: Path) -> None:
    """Rewrite a checkpoint's manifest over its current files, as a tampering tool would."""
    from metapretrain.checkpoint import manifest_digest
    from metapretrain.io import read_json, sha256_file, write_json

    manifest = read_json(ckpt_dir / "manifest.json")
    manifest.pop("sha256", None)
    manifest["files"] = {name: sha256_file(ckpt_dir / name) for name in manifest["files"]}
    write_json(ckpt_dir / "manifest.json", manifest | {"sha256": manifest_digest(manifest)})


class _Payload:
    """Unpickling this runs a shell command: what a malicious state.pt would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _shape(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    # model.d_model changed after the run was trained (killed before done.json): resuming must refuse,
    # naming the run's config file, the key and both values.
    (run / "pretrain" / "done.json").unlink()
    write_run(run, {"model": {**TINY_RUN["model"], "d_model": 48}})
    return ["pretrain", "--run-dir", str(run), "--data", str(run.parent.parent / "tokenize" / "kept")], \
        ["config.resolved.yaml", "model.d_model", f"{TINY_RUN['model']['d_model']} -> 48",
         "trained with a different config"]


def _payload(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    import torch

    (run / "pretrain" / "done.json").unlink()
    last = run / "pretrain" / "checkpoints" / "step_00000002"
    torch.save({"format": 1, "optimizer": _Payload(tmp / "pwned")}, last / "state.pt")
    _resign(last)  # checksums match: only weights_only loading stands between the file and the shell
    return ["pretrain", "--run-dir", str(run), "--data", str(run.parent.parent / "tokenize" / "kept")], \
        ["step_00000002/state.pt: cannot be loaded", "Weights only load failed"]


def _other_tokenizer(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    import json

    tok = run / "pretrain" / "tokenizer.json"
    spec = json.loads(tok.read_text())
    spec["model"]["vocab"]["zzzz-not-in-the-run"] = 100000  # another tokenizer: ids the model never saw
    tok.write_text(json.dumps(spec))
    return ["export", "--checkpoint", str(run / "pretrain" / "checkpoints" / "step_00000002"),
            "--out", str(tmp / "hf")], [f"{tok}: not the tokenizer checkpoint", "step_00000002"]


def _other_tokenize_output(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    import json

    (run / "pretrain" / "done.json").unlink()
    other = tmp / "other_tok"
    shutil.copytree(run.parent.parent / "tokenize" / "kept", other)
    spec = json.loads((other / "tokenizer.json").read_text())
    a, b = list(spec["model"]["vocab"])[300:302]  # same size, two ids swapped: silently wrong text if accepted
    spec["model"]["vocab"][a], spec["model"]["vocab"][b] = spec["model"]["vocab"][b], spec["model"]["vocab"][a]
    (other / "tokenizer.json").write_text(json.dumps(spec))
    return ["pretrain", "--run-dir", str(run), "--data", str(other)], \
        [f"{other / 'tokenizer.json'}: not the tokenizer this run was trained with", str(run / "pretrain")]


def _bitflip(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    f = run / "pretrain" / "checkpoints" / "step_00000002" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))
    return ["export", "--checkpoint", str(f.parent), "--out", str(tmp / "hf")], [f"{f}: checksum mismatch"]


def _incomplete(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    d = run / "pretrain" / "checkpoints" / "step_00000002"
    (d / "manifest.json").unlink()  # a write killed before its manifest (only possible by hand: writes are atomic)
    return ["export", "--checkpoint", str(d), "--out", str(tmp / "hf")], [f"{d}: incomplete checkpoint (no manifest.json)"]


def _renamed(run: Path, tmp: Path) -> tuple[list[str], list[str]]:
    ck = run / "pretrain" / "checkpoints"
    shutil.rmtree(ck / "step_00000001")
    (ck / "step_00000002").rename(ck / "step_00000001")  # a hand-renamed directory: its manifest says step 2
    return ["export", "--checkpoint", str(ck / "step_00000001"), "--out", str(tmp / "hf")], \
        [f"{ck / 'step_00000001' / 'manifest.json'}: step 2 does not match the directory name"]


CHECKPOINT_CASES = [("ckpt-wrong-model-shape", _shape), ("ckpt-pickled-code-payload", _payload),
                    ("ckpt-other-tokenizer", _other_tokenizer), ("ckpt-other-tokenize-output", _other_tokenize_output),
                    ("ckpt-bit-flipped", _bitflip),
                    ("ckpt-incomplete", _incomplete), ("ckpt-renamed", _renamed)]


@pytest.mark.parametrize(("case", "damage"), CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint(tmp_path, results, trained, case, damage):
    run = results / "bad" / "runs" / "seed~2"
    shutil.copytree(trained, run)
    args, needles = damage(run, tmp_path)
    before = snapshot(results)
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-3000:]
    assert changed(before, snapshot(results)) == []
    assert not (tmp_path / "pwned").exists()  # the payload never ran
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------------ invalid UTF-8, every file kind
def _bad_byte(path: Path, line: int) -> Path:
    """Append an invalid UTF-8 byte to `line` (1-based) of `path`."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] += b"\xff"
    path.write_bytes(b"\n".join(lines))
    return path


def _exp_file(tmp: Path, extra: str = "") -> Path:
    f = tmp / "exp.yaml"
    f.write_text(EXP_HEAD + "defaults:\n  finetune: {enabled: false}\n  dynamics: {enabled: false}\n"
                 "grid:\n  seed: [2]\n" + extra)
    return f


def _u_experiment(res: Path, run: Path, tmp: Path):
    f = _bad_byte(_exp_file(tmp), 3)
    return ["grid", "validate", str(f)], f, 3, 2


def _u_experiment_status(res: Path, run: Path, tmp: Path):
    f = _bad_byte(_exp_file(tmp), 4)
    return ["status", str(f)], f, 4, 2


def _u_run_config(res: Path, run: Path, tmp: Path):
    f = _bad_byte(run / "config.resolved.yaml", 5)
    return ["pretrain", "--run-dir", str(run), "--data", str(res / "bad" / "tokenize" / "kept")], f, 5, 2


def _u_tokenize_config(res: Path, run: Path, tmp: Path):
    import json

    f = tmp / "tok.yaml"
    f.write_text(json.dumps(small_tokenize_config(tmp), indent=1))
    _bad_byte(f, 4)
    return ["tokenize", "--config", str(f), "--out", str(res / "bad" / "tokenize" / "kept")], f, 4, 2


def _u_tokenizer_json(res: Path, run: Path, tmp: Path):
    import json

    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "a.txt").write_text("some text\n" * 50)
    tok = tmp / "tokenizer.json"
    tok.write_text(json.dumps(json.loads((res / "bad" / "tokenize" / "kept" / "tokenizer.json").read_text()), indent=1))
    _bad_byte(tok, 7)
    cfg = small_tokenize_config(tmp)
    cfg["tokenizer"] |= {"kind": "pretrained", "path": str(tok)}
    f = tmp / "tok.yaml"
    f.write_text(json.dumps(cfg))
    return ["tokenize", "--config", str(f), "--out", str(res / "bad" / "tokenize" / "kept")], tok, 7, 1


def _u_metrics(res: Path, run: Path, tmp: Path):
    (run / "pretrain" / "done.json").unlink()  # a resume reads metrics.jsonl to cut it back to the checkpoint
    f = _bad_byte(run / "pretrain" / "metrics.jsonl", 2)
    return ["pretrain", "--run-dir", str(run), "--data", str(res / "bad" / "tokenize" / "kept")], f, 2, 1


def _u_run_json(res: Path, run: Path, tmp: Path):
    import json

    (run / "pretrain" / "done.json").unlink()
    f = run / "run.json"
    f.write_text(json.dumps(json.loads(f.read_text()), indent=1))
    _bad_byte(f, 3)
    return ["pretrain", "--run-dir", str(run), "--data", str(res / "bad" / "tokenize" / "kept")], f, 3, 2


def _u_token_manifest(res: Path, run: Path, tmp: Path):
    (run / "pretrain" / "done.json").unlink()
    f = _bad_byte(res / "bad" / "tokenize" / "kept" / "manifest.json", 4)
    return ["pretrain", "--run-dir", str(run), "--data", str(f.parent)], f, 4, 1


def _u_checkpoint_manifest(res: Path, run: Path, tmp: Path):
    d = run / "pretrain" / "checkpoints" / "step_00000002"
    f = _bad_byte(d / "manifest.json", 3)
    return ["export", "--checkpoint", str(d), "--out", str(tmp / "hf")], f, 3, 1


def _u_job_record(res: Path, run: Path, tmp: Path):
    """A job record is a hint: `status` warns naming file:line and reports the stage from its files."""
    from metapretrain.io import write_json

    f = res / "bad" / "runs" / "seed~2" / "logs" / "pretrain.job.json"
    write_json(f, {"stage": "pretrain", "run_id": "seed~2", "launcher": "local", "job_id": "1", "state": "FAILED"})
    _bad_byte(f, 5)
    return ["status", str(_exp_file(tmp))], f, 5, 0


def _u_done_json(res: Path, run: Path, tmp: Path):
    """`doctor` reports a done.json it cannot read as damaged (exit 1: something needs attention)."""
    f = _bad_byte(run / "pretrain" / "done.json", 3)
    return ["doctor", str(_exp_file(tmp))], f, 3, 1


def _u_run_json_doctor(res: Path, run: Path, tmp: Path):
    """`doctor` warns about a run.json it cannot read and reports the run as changed (its hash is unknown)."""
    import json

    f = run / "run.json"
    f.write_text(json.dumps(json.loads(f.read_text()), indent=1))
    _bad_byte(f, 2)
    return ["doctor", str(_exp_file(tmp))], f, 2, 1


def _u_results_csv(res: Path, run: Path, tmp: Path):
    from metapretrain.finetune.stage import RESULT_COLUMNS
    from metapretrain.io import write_done

    d = run / "finetune" / "Danish-DDT~head"
    d.mkdir(parents=True)
    row = "seed~2,,Danish-DDT,head,Danish-DDT,test,in_language,micro_f1,0.5\n"
    (d / "results.csv").write_text(",".join(RESULT_COLUMNS) + "\n" + row + row)
    write_done(d, "finetune", "seed~2", ["results.csv"])
    f = _bad_byte(d / "results.csv", 3)
    return ["ner-table", "--experiment-dir", str(res / "bad"), "--out", str(res / "bad" / "ner")], f, 3, 2


def _u_grid_yaml(res: Path, run: Path, tmp: Path):
    f = res / "bad" / "grid.yaml"
    f.write_text("experiment: bad\naxes: [seed]\nruns:\n- run_id: seed~2\n  axes: {seed: '2'}\n")
    _bad_byte(f, 4)
    return ["figures", "--experiment-dir", str(res / "bad")], f, 4, 2


UTF8_CASES = [("utf8-experiment-file", _u_experiment), ("utf8-experiment-file-status", _u_experiment_status),
              ("utf8-run-config", _u_run_config), ("utf8-tokenize-config", _u_tokenize_config),
              ("utf8-tokenizer-json", _u_tokenizer_json), ("utf8-metrics-jsonl", _u_metrics),
              ("utf8-run-json", _u_run_json), ("utf8-token-manifest", _u_token_manifest),
              ("utf8-checkpoint-manifest", _u_checkpoint_manifest), ("utf8-job-record", _u_job_record),
              ("utf8-done-json", _u_done_json), ("utf8-run-json-doctor", _u_run_json_doctor), ("utf8-results-csv", _u_results_csv),
              ("utf8-grid-yaml", _u_grid_yaml)]


@pytest.mark.parametrize(("case", "damage"), UTF8_CASES, ids=[c[0] for c in UTF8_CASES])
def test_invalid_utf8(tmp_path, results, trained, case, damage):
    """Invalid UTF-8 at a known line of any file a command reads: the message names file:line, no traceback,
    and nothing already written changes (the CSV/UNER/corpus tables above cover those files' own cases)."""
    run = results / "bad" / "runs" / "seed~2"
    shutil.copytree(trained, run)
    args, bad, line, code = damage(results, run, tmp_path)
    before = snapshot(results)
    proc = run_cli(args, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert f"{bad}:{line}: invalid UTF-8" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert changed(before, snapshot(results)) == []
    assert not (tmp_path / "hf").exists()


def test_case_count():
    """The suite keeps at least 30 bad-input cases across configs, corpora, UNER files and checkpoints."""
    n = len(CONFIG_CASES) + len(CORPUS_CASES) + len(UNER_CASES) + len(CHECKPOINT_CASES) + len(UTF8_CASES)
    assert n >= 30
    print(f"\nBAD INPUTS tried: {n}")
