"""The tokenize stage on real text: determinism, round trip, manifest, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import small_tokenize_config
from metapretrain.data.corpus import CorpusError, is_validation, iter_documents, read_text
from metapretrain.data.shards import open_split, read_manifest
from metapretrain.data.tokenize_stage import main as tokenize_main
from metapretrain.data.tokenize_stage import tokenize
from metapretrain.data.tokenizer import load_tokenizer


def test_outputs_and_manifest(tokenized_dir):
    m = read_manifest(tokenized_dir)
    assert m["vocab_size"] == 512 and m["dtype"] == "uint16"
    assert m["special_tokens"] == {"eos": 0, "mask": 1}
    for split in ("train", "val"):
        arr = open_split(tokenized_dir, split)
        assert len(arr) == m["splits"][split]["tokens"] > 1000
        assert arr.max() < 512
    assert json.loads((tokenized_dir / "done.json").read_text())["stage"] == "tokenize"
    tok = load_tokenizer(tokenized_dir / "tokenizer.json")
    assert tok.get_vocab_size() == 512 and tok.token_to_id("[MASK]") == 1


def test_round_trip_on_corpus_sample(tokenized_dir, small_corpus):
    """decode(encode(text)) == text for every document, and the shard holds exactly those encodings."""
    tok = load_tokenizer(tokenized_dir / "tokenizer.json")
    cfg = small_tokenize_config(small_corpus)
    docs = [d for d in iter_documents(cfg["corpus"], small_corpus) if not is_validation(d, 0.1)]
    shard = np.asarray(open_split(tokenized_dir, "train"))
    ends = np.flatnonzero(shard == 0)
    assert len(ends) == len(docs)
    start = 0
    for doc, end in list(zip(docs, ends, strict=True))[:500]:
        ids = shard[start:end].tolist()
        assert ids == tok.encode(doc, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == doc
        start = end + 1


def test_validation_never_overlaps_training(tokenized_dir, small_corpus):
    cfg = small_tokenize_config(small_corpus)
    docs = list(iter_documents(cfg["corpus"], small_corpus))
    train = {d for d in docs if not is_validation(d, 0.1)}
    val = {d for d in docs if is_validation(d, 0.1)}
    assert val and train and not (train & val)
    assert 0.05 < len(val) / len(docs) < 0.15


def test_deterministic_byte_identical(tmp_path, small_corpus, tokenized_dir):
    out = tmp_path / "again"
    tokenize(small_tokenize_config(small_corpus), out)
    for name in ("tokenizer.json", "train.bin", "val.bin", "manifest.json"):
        assert (out / name).read_bytes() == (tokenized_dir / name).read_bytes(), name


def test_uint32_when_vocab_does_not_fit():
    from metapretrain.data.shards import shard_dtype

    assert shard_dtype(65536) == np.uint16 and shard_dtype(65537) == np.uint32


def test_pretrained_tokenizer_is_loaded(tmp_path, small_corpus, tokenized_dir):
    cfg = small_tokenize_config(small_corpus)
    cfg["tokenizer"] = {"kind": "pretrained", "path": str(tokenized_dir / "tokenizer.json"), "vocab_size": 8192,
                        "min_frequency": 2}
    out = tmp_path / "pre"
    tokenize(cfg, out)
    assert (out / "train.bin").read_bytes() == (tokenized_dir / "train.bin").read_bytes()


def _corpus_with(tmp_path, name, data: bytes):
    (tmp_path / "corpus").mkdir(exist_ok=True)
    (tmp_path / "corpus" / name).write_bytes(data)
    return small_tokenize_config(tmp_path)


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("empty.txt", b"", "corpus file is empty"),
        ("blank.txt", b"\n \n\t\n", "corpus file is empty"),
        ("binary.txt", b"hello\nworld\x00\x01\x02\n", "binary.txt:2: binary data"),
        ("latin1.txt", "line one\nline two\ncaf\u00e9\n".encode("latin-1"), "latin1.txt:3: invalid UTF-8"),
    ],
)
def test_bad_corpus_files(tmp_path, name, data, needle):
    cfg = _corpus_with(tmp_path, name, data)
    out = tmp_path / "out"
    with pytest.raises(CorpusError, match=needle.replace(".", r"\.")):
        tokenize(cfg, out)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))  # no half-written temp directory left behind


def test_missing_corpus_and_cli_error(tmp_path, capsys):
    cfg = small_tokenize_config(tmp_path)
    with pytest.raises(CorpusError, match=r"matches no file"):
        tokenize(cfg, tmp_path / "out")
    cfg_file = tmp_path / "tok.yaml"
    cfg_file.write_text(json.dumps(cfg))
    assert tokenize_main(["--config", str(cfg_file), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "matches no file" in err and str(tmp_path) in err


def test_existing_output_survives_a_failed_rerun(tmp_path, small_corpus, tokenized_dir):
    import shutil

    out = tmp_path / "kept"
    shutil.copytree(tokenized_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = small_tokenize_config(tmp_path / "nowhere")
    with pytest.raises(CorpusError):
        tokenize(bad, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_read_text_names_line_of_bad_utf8(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"ok\nok\nok\n\xff\n")
    with pytest.raises(CorpusError, match=r"x\.txt:4: invalid UTF-8"):
        read_text(p)


def test_hf_dataset_source_on_local_fixture(tmp_path):
    """The `hf` source streams a local dataset directory (never the network in tests)."""
    ds = tmp_path / "ds"
    ds.mkdir()
    rows = [{"text": f"document number {i} about tokenizers and shards", "id": i} for i in range(300)]
    (ds / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = small_tokenize_config(tmp_path)
    cfg["corpus"]["sources"] = [{"type": "hf", "dataset": str(ds), "config": None, "split": "train",
                                 "text_field": "text", "streaming": True, "max_documents": 250}]
    cfg["tokenizer"]["vocab_size"] = 300
    docs = list(iter_documents(cfg["corpus"], tmp_path))
    assert len(docs) == 250 and docs[3] == rows[3]["text"]
    m = tokenize(cfg, tmp_path / "out")
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 250
    cfg["corpus"]["sources"][0]["text_field"] = "body"
    with pytest.raises(CorpusError, match="has no field 'body'"):
        list(iter_documents(cfg["corpus"], tmp_path))
