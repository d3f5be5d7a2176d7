"""Reading a command's input files (metapretrain.io): file:line for bad UTF-8, file:line:col for bad JSON,
torn last JSON lines dropped, hint readers warning and carrying on."""

from __future__ import annotations

import json
import pickle

import pytest

from metapretrain.io import InputError, read_json, read_jsonl, read_text


def test_read_text_names_the_line_of_a_bad_byte(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("l1\nl2 é\r\nl3 \xff\n".encode("latin-1").replace(b"\xe9", "é".encode()))
    with pytest.raises(InputError) as info:
        read_text(f)
    assert str(info.value).startswith(f"{f}:3: invalid UTF-8") and "column 4" in str(info.value)
    assert (info.value.file, info.value.line) == (str(f), 3)
    f.write_bytes("ok é\r\n".encode())
    assert read_text(f) == "ok é\r\n"  # newlines as written: parsers that care see them


def test_read_json_names_line_and_column(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('{\n  "a": 1,\n  "b": ]\n}\n')
    with pytest.raises(InputError, match=r"a\.json:3:8: not valid JSON \(Expecting value\)"):
        read_json(f)
    f.write_bytes(b'{\n  "a": "\xc3"\n}\n')
    with pytest.raises(InputError, match=r"a\.json:2: invalid UTF-8"):
        read_json(f)
    with pytest.raises(FileNotFoundError):  # callers say what a missing file means
        read_json(tmp_path / "nope.json")
    with pytest.raises(InputError, match="cannot read"):
        read_json(tmp_path)


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path):
    f = tmp_path / "m.jsonl"
    rec = json.dumps({"step": 1, "name": "é"}).encode()
    f.write_bytes(rec + b"\n\n" + rec + b"\n" + rec[:-5])  # a kill mid-write
    assert [n for n, _ in read_jsonl(f)] == [1, 3]
    f.write_bytes(rec + b"\n" + "é".encode()[:1])  # torn inside a multi-byte character
    assert [n for n, _ in read_jsonl(f)] == [1]
    f.write_bytes(rec + b"\n" + rec[:-5] + b"\n" + rec + b"\n")
    with pytest.raises(InputError, match=r"m\.jsonl:2:\d+: not valid JSON"):
        read_jsonl(f)
    f.write_bytes(rec + b"\n" + rec.replace(b"step", b"st\xffep") + b"\n" + rec + b"\n")
    with pytest.raises(InputError, match=r"m\.jsonl:2: invalid UTF-8"):
        read_jsonl(f)
    skipped = []
    assert [n for n, _ in read_jsonl(f, on_bad=skipped.append)] == [1, 3]
    assert [e.line for e in skipped] == [2]


def test_input_error_survives_pickling():
    # A job's exception travels pickled from the local launcher's job process to the submitting one.
    err = pickle.loads(pickle.dumps(InputError("f.json", "not valid JSON (x)", 3, 4)))
    assert str(err) == "f.json:3:4: not valid JSON (x)" and err.line == 3


def test_status_skips_a_bad_metrics_line_with_a_warning(tmp_path, capsys):
    from metapretrain.status import last_records

    f = tmp_path / "metrics.jsonl"
    recs = [json.dumps({"kind": k, "step": s}).encode() for k, s in (("train", 1), ("eval", 1), ("train", 2))]
    f.write_bytes(b"\n".join(recs) + b"\n" + recs[2][:-3])  # the live writer's torn last line: no warning
    assert last_records(f) == ({"kind": "train", "step": 2}, {"kind": "eval", "step": 1})
    assert capsys.readouterr().err == ""
    eval2 = json.dumps({"kind": "eval", "step": 2}).encode()
    f.write_bytes(b"\n".join([*recs[:2], recs[2].replace(b"train", b"tr\xffin"), eval2, b""]))
    assert last_records(f) == ({"kind": "train", "step": 1}, {"kind": "eval", "step": 2})
    assert f"{f}:3: invalid UTF-8" in capsys.readouterr().err
    filler = b"\n".join(recs[:2]) + b"\n"
    f.write_bytes(filler * 200 + recs[2].replace(b"train", b"tr\xffin") + b"\n" + recs[0] + b"\n")
    assert last_records(f, max_bytes=1000)[0] == {"kind": "train", "step": 1}  # the line counted past the window
    assert f"{f}:401: invalid UTF-8" in capsys.readouterr().err


def test_figures_skip_a_bad_metrics_line_with_a_warning(tmp_path, caplog):
    from metapretrain.figures.load import read_metrics

    f = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": s, "tokens": s, "flops": s, "wall": s, "loss": 1.0} for s in (1, 2, 3)]
    lines = [json.dumps(r).encode() for r in rows]
    f.write_bytes(b"\n".join([lines[0], lines[1].replace(b"loss", b"l\xffss"), lines[2], b""]))
    train, _ = read_metrics(f)
    assert list(train["step"]) == [1, 3]
    assert f"{f}:2: invalid UTF-8" in caplog.text and "skipping the record" in caplog.text


def test_dynamics_table_repair_names_a_bad_line(tmp_path):
    """Without its commit record the table is re-read to repair it: a bad byte is file:line, not a traceback."""
    from metapretrain.dynamics.store import COLUMNS, DynamicsTable

    t = DynamicsTable(tmp_path / "dynamics.csv", {"run": "r"})
    t.append(0, [("r", 0, 0, 0.0, 0, "attn", "", "rank", 1.5)])
    t.append(5, [("r", 5, 5, 1.0, 0, "attn", "", "rank", 2.5)])
    assert [r["step"] for r in t.rows()] == ["0", "5"] and tuple(t.rows()[0]) == COLUMNS
    t.commit_path.unlink()
    data = t.path.read_bytes().split(b"\n")
    data[1] = data[1].replace(b"attn", b"at\xffn")
    t.path.write_bytes(b"\n".join(data))
    with pytest.raises(InputError, match=r"dynamics\.csv:2: invalid UTF-8"):
        DynamicsTable(t.path, {"run": "r"})
