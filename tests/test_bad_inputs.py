"""Bad input, table-driven: every case must fail with a message naming the file and the key or
line, and must leave everything already in results/ byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import small_tokenize_config

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
    assert str(data_root) in proc.stderr
    assert snapshot(results) == before


def test_case_count():
    """The suite keeps at least 30 bad-input cases (config + corpus here; UNER and checkpoints in their tests)."""
    assert len(CONFIG_CASES) + len(CORPUS_CASES) >= 27
