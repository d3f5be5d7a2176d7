"""Layering the checkpoint package promises: which packages may import which, and which paths are built where.

These read the source tree (no imports run), so a forbidden import or literal that comes back fails here.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "metapretrain"

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


# The path literals metapretrain.paths builds (done_file, tokenizer_file), as code spells them: quoted.
_LITERAL = re.compile(r"""["'](?:[^"'\n]*/)?(done\.json|tokenizer\.json)["']""")


@pytest.mark.parametrize("pkg", ["checkpoint", "finetune", "dynamics", "model"])
def test_done_and_tokenizer_paths_come_from_paths(pkg):
    bad = [f"{f.relative_to(SRC.parent.parent)}:{n}: {line.strip()}"
           for f in sorted((SRC / pkg).rglob("*.py"))
           for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if _LITERAL.search(line)]
    assert bad == []


def test_the_literal_check_catches_quoted_paths():
    assert _LITERAL.search('out / "done.json"') and _LITERAL.search("d / 'tokenizer.json'")
    assert _LITERAL.search('Path("RUN/pretrain/tokenizer.json")')
    assert not _LITERAL.search("`pretrain/done.json` names the final step")  # prose in docstrings
