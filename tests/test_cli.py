"""The command line: `python -m metapretrain`, and input errors as one line with exit code 2."""

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
    assert proc.returncode == 2 and proc.stderr == f"metapretrain grid: error: {tmp_path / 'nope.yaml'}: file not found\n"


def test_input_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from metapretrain.cli import main

    exp = tmp_path / "results" / "e"
    (exp / "runs" / "r" / "finetune" / "X~head").mkdir(parents=True)
    (exp / "runs" / "r" / "finetune" / "X~head" / "results.csv").write_text("a,b\n1,2\n")
    (exp / "runs" / "r" / "finetune" / "X~head" / "done.json").write_text("{}")
    assert main(["ner-table", "--experiment-dir", str(exp), "--out", str(exp / "ner")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"metapretrain ner-table: error: {exp}/runs/r/finetune/X~head/results.csv:1: columns ['a', 'b']")
    assert err.count("\n") == 1 and not (exp / "ner").exists()
