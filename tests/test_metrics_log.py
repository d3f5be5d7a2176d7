"""metrics.jsonl's one reader (metrics_log): a torn last line is dropped, a damaged line elsewhere is named."""

from __future__ import annotations

import json

import pytest

from metapretrain.io import InputError
from metapretrain.metrics_log import read_records


def _lines(*recs) -> list[bytes]:
    return [json.dumps(r).encode() for r in recs]


def test_a_torn_last_line_is_dropped_and_other_damage_raises_or_is_reported(tmp_path):
    f = tmp_path / "metrics.jsonl"
    assert read_records(f) == []  # no file yet
    good = _lines(*({"kind": "train", "step": s} for s in (1, 2, 3)))
    f.write_bytes(b"\n".join(good) + b"\n" + good[2][:-4])  # a kill mid-write
    assert [r["step"] for r in read_records(f)] == [1, 2, 3]
    for bad, problem in ((good[1][:-4], r"2:\d+: not valid JSON"), (good[1].replace(b"train", b"tr\xffin"), "2: invalid UTF-8"),
                         (b"[1, 2]", "2: expected a JSON object with a `step`, got list"),
                         (b'{"kind": "train"}', "2: expected a JSON object with a `step`, got an object without one")):
        f.write_bytes(b"\n".join([good[0], bad, good[2], b""]))
        with pytest.raises(InputError, match=rf"metrics\.jsonl:{problem}"):
            read_records(f)
        seen = []
        assert [r["step"] for r in read_records(f, on_damaged=seen.append)] == [1, 3]
        assert [e.line for e in seen] == [2]


def test_a_tail_read_keeps_the_rule_and_counts_lines_from_the_top(tmp_path):
    f = tmp_path / "metrics.jsonl"
    filler = b"\n".join(_lines(*({"kind": "train", "step": s} for s in range(300)))) + b"\n"
    bad = _lines({"kind": "eval", "step": 300})[0].replace(b"eval", b"ev\xffl")
    f.write_bytes(filler + bad + b"\n" + _lines({"kind": "train", "step": 301})[0] + b"\n" + b'{"kind": "tr')
    seen = []
    recs = read_records(f, on_damaged=seen.append, max_bytes=300)
    assert recs[-1]["step"] == 301 and len(recs) < 20  # the window only, its cut first line left out
    assert [e.line for e in seen] == [301]
    with pytest.raises(InputError, match=r"metrics\.jsonl:301: invalid UTF-8"):
        read_records(f, max_bytes=300)
    assert [r["step"] for r in read_records(f, max_bytes=10 ** 6, on_damaged=seen.append)][-2:] == [299, 301]


def test_dynamics_stops_on_a_damaged_line_figures_skip_it(tmp_path):
    """Dynamics keeps the rows it computes, so it refuses a damaged log; figures are redrawn every time."""
    from metapretrain.dynamics.episodic import read_train_log
    from metapretrain.figures.load import read_metrics

    f = tmp_path / "metrics.jsonl"
    rows = [{"kind": "train", "step": s, "tokens": s, "flops": s, "wall": s, "loss": 1.0} for s in (1, 2, 3)]
    good = _lines(*rows)
    f.write_bytes(b"\n".join([good[0], good[1][:-4], good[2], b""]))
    with pytest.raises(InputError, match=r"metrics\.jsonl:2:\d+: not valid JSON"):
        read_train_log(f)
    train, _ = read_metrics(f)
    assert list(train["step"]) == [1, 3]
