"""The command line: `python -m metapretrain`."""

from __future__ import annotations

import subprocess
import sys

from metapretrain.cli import COMMANDS


def test_python_m_metapretrain_lists_the_commands(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metapretrain", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert listed == set(COMMANDS)
    proc = subprocess.run([sys.executable, "-m", "metapretrain", "grid", "show", str(tmp_path / "nope.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{tmp_path / 'nope.yaml'}: file not found" in proc.stderr
