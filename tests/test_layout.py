"""The source tree's layering, read as text (no imports run): which packages may import which, which module
builds which path or spells which stage, who parses metrics.jsonl and who names learners and step kinds.
A forbidden import or literal that comes back fails here."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "metapretrain"


def _hits(pattern: str | re.Pattern, files: list[Path] | None = None, skip=()) -> list[str]:
    """`file:line: text` of every line of `files` (default: every module under src/metapretrain) matching
    `pattern`, files named in `skip` (relative to src/metapretrain, or to the repository outside it) left out."""
    rx = re.compile(pattern)
    out = []
    for f in sorted(SRC.rglob("*.py")) if files is None else files:
        rel = f.relative_to(SRC).as_posix() if f.is_relative_to(SRC) else f.relative_to(REPO).as_posix()
        if rel in skip:
            continue
        out += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
                if rx.search(line)]
    return out


# ------------------------------------------------------------ imports: who may import whom
# Packages below the pretraining loop: they read checkpoints through metapretrain.checkpoint, never train/.
BELOW_TRAIN = ("finetune", "dynamics", "model", "figures")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, relative imports resolved."""
    package = ".".join(("metapretrain", *path.relative_to(SRC).parent.parts))
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # `from metapretrain import train` names the package in the imported names
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in prefixes)


def _offenders(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for pkg in packages:
        for f in sorted((SRC / pkg).rglob("*.py")):
            rel = f.relative_to(SRC).as_posix()
            for line, module in _imports(f):
                if _within(module, forbidden):
                    bad.append(f"src/metapretrain/{rel}:{line}: imports {module}")
    return bad


def test_no_package_below_train_imports_it():
    assert _offenders(BELOW_TRAIN, ("metapretrain.train",)) == []


def test_checkpoint_package_imports_no_stage():
    stages = tuple(f"metapretrain.{p}" for p in ("train", "finetune", "dynamics", "figures", "launch", "meta"))
    assert _offenders(("checkpoint",), stages) == []


def test_the_check_catches_what_it_is_for(tmp_path, monkeypatch):
    """The import check is not vacuous: a relative and an absolute import of train are both found."""
    pkg = tmp_path / "metapretrain" / "model"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("from ..train import loop\nimport metapretrain.train.runtime\n"
                                "from metapretrain import train\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path / "metapretrain")
    assert len(_offenders(("model",), ("metapretrain.train",))) == 4


# ------------------------------------------------------------ paths: built in paths.py, stages spelled in stages.py
# A string literal naming the file, or a path ending in it: "done.json", f"{d}/done.json", "*/done.json".
FILE_LITERAL = re.compile(r"""["'/](done|run|tokenizer)\.json["']""")
# A stage instance spelled by hand: f"finetune:{...}", f"finetune/{...}~{...}".
STAGE_SPELLING = re.compile(r"""["'/]finetune[:/]\{""")
# The path literals metapretrain.paths builds (done_file, tokenizer_file), as code spells them: quoted.
_LITERAL = re.compile(r"""["'](?:[^"'\n]*/)?(done\.json|tokenizer\.json)["']""")


def _code_and_rules() -> list[Path]:
    """Every module under src/metapretrain, the workflow's rule files and the Snakefile."""
    return sorted(SRC.rglob("*.py")) + sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]


def test_done_run_and_tokenizer_json_paths_are_built_only_in_paths_py():
    hits = _hits(FILE_LITERAL, _code_and_rules(), skip={"paths.py"})
    assert not hits, "build these with paths.done_file / run_record / tokenizer_file:\n" + "\n".join(hits)


def test_stage_instances_are_spelled_only_in_stages_py():
    hits = _hits(STAGE_SPELLING, _code_and_rules(), skip={"stages.py"})
    assert not hits, "take a stage's name and key from metapretrain.stages:\n" + "\n".join(hits)


def test_the_checks_see_a_literal():
    assert FILE_LITERAL.search('x / "done.json"') and FILE_LITERAL.search("f'{d}/run.json'")
    assert FILE_LITERAL.search('d / "tokenizer.json"') and not FILE_LITERAL.search('"write the exports and done.json"')
    assert STAGE_SPELLING.search('f"finetune/{ts}~{regime}"') and STAGE_SPELLING.search('f"finetune:{name}"')


@pytest.mark.parametrize("pkg", ["checkpoint", "finetune", "dynamics", "model"])
def test_done_and_tokenizer_paths_come_from_paths(pkg):
    assert _hits(_LITERAL, sorted((SRC / pkg).rglob("*.py"))) == []


def test_the_literal_check_catches_quoted_paths():
    assert _LITERAL.search('out / "done.json"') and _LITERAL.search("d / 'tokenizer.json'")
    assert _LITERAL.search('Path("RUN/pretrain/tokenizer.json")')
    assert not _LITERAL.search("`pretrain/done.json` names the final step")  # prose in docstrings


# ------------------------------------------------------------ metrics.jsonl, learners and step kinds
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
