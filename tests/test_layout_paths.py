"""Paths are built in paths.py and stage spellings in stages.py: a literal that comes back elsewhere fails here."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "metapretrain"

# A string literal naming the file, or a path ending in it: "done.json", f"{d}/done.json", "*/done.json".
FILE_LITERAL = re.compile(r"""["'/](done|run|tokenizer)\.json["']""")
# A stage instance spelled by hand: f"finetune:{...}", f"finetune/{...}~{...}".
STAGE_SPELLING = re.compile(r"""["'/]finetune[:/]\{""")


def _hits(pattern: re.Pattern, owner: str) -> list[str]:
    files = sorted(SRC.rglob("*.py")) + sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]
    hits = []
    for f in files:
        rel = f.relative_to(SRC).as_posix() if f.is_relative_to(SRC) else f.relative_to(REPO).as_posix()
        if rel == owner:
            continue
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    return hits


def test_done_run_and_tokenizer_json_paths_are_built_only_in_paths_py():
    hits = _hits(FILE_LITERAL, "paths.py")
    assert not hits, "build these with paths.done_file / run_record / tokenizer_file:\n" + "\n".join(hits)


def test_stage_instances_are_spelled_only_in_stages_py():
    hits = _hits(STAGE_SPELLING, "stages.py")
    assert not hits, "take a stage's name and key from metapretrain.stages:\n" + "\n".join(hits)


def test_the_checks_see_a_literal():
    assert FILE_LITERAL.search('x / "done.json"') and FILE_LITERAL.search("f'{d}/run.json'")
    assert FILE_LITERAL.search('d / "tokenizer.json"') and not FILE_LITERAL.search('"write the exports and done.json"')
    assert STAGE_SPELLING.search('f"finetune/{ts}~{regime}"') and STAGE_SPELLING.search('f"finetune:{name}"')
