"""Layout checks (issue 21, items 1 and 6): who parses metrics.jsonl, who names learners and step kinds."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "metapretrain"


def _hits(pattern: str, *, skip=()) -> list[str]:
    rx = re.compile(pattern)
    return [f"{p.relative_to(SRC)}:{n}" for p in sorted(SRC.rglob("*.py")) if p.relative_to(SRC).as_posix() not in skip
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if rx.search(line)]


def test_only_metrics_log_reads_json_lines():
    assert _hits(r"\b(read|parse)_jsonl\(", skip={"io.py", "metrics_log.py"}) == []


def test_learner_names_are_spelled_only_in_the_meta_package():
    from metapretrain.meta import known_learners

    names = "|".join(map(re.escape, known_learners()))
    assert _hits(rf"[\"']({names})[\"']", skip={p.relative_to(SRC).as_posix() for p in (SRC / "meta").glob("*.py")}) == []


def test_the_loop_and_the_distributed_layer_name_no_step_kind():
    pattern = r"[\"'](next_token|meta)[\"']"
    assert _hits(pattern, skip={p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")}
                 - {"train/loop.py", "train/distributed.py"}) == []
