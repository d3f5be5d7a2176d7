"""`snakemake -n` on a generated 1,000-run grid: wall time and peak memory (JSON on stdout).

Target: <= 10 s on a 2-core machine. Also times `metapretrain status` on the same
grid (`status_s`, target < 2 s) when that command is available.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def grid_yaml() -> str:
    # 10 × 10 × 10 = 1,000 runs; finetune/dynamics off so the DAG has pretrain jobs per run.
    return """experiment: bench1000
defaults:
  finetune: {enabled: false}
  dynamics: {enabled: false}
grid:
  seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  train.lr: [1.0e-4, 2.0e-4, 3.0e-4, 4.0e-4, 5.0e-4, 6.0e-4, 7.0e-4, 8.0e-4, 9.0e-4, 1.0e-3]
  meta.hybrid_ratio: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
"""


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024, proc


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench_grid."))
    try:
        (work / "grid.yaml").write_text(grid_yaml())
        snakemake = shutil.which("snakemake", path=str(BIN)) or "snakemake"
        wall, peak, proc = timed([snakemake, "-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"), "-d", str(work),
                                  "--configfile", str(work / "grid.yaml")], work)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            return 1
        jobs = next(int(line.split()[1]) for line in proc.stdout.splitlines()
                    if line.split()[:1] == ["pretrain"] and len(line.split()) == 2)
        result = {"bench": "grid", "runs": 1000, "pretrain_jobs": jobs, "wall_s": round(wall, 3),
                  "peak_rss_mb": round(peak, 1), "target_wall_s": 10.0}
        status = shutil.which("metapretrain", path=str(BIN))
        if status:
            s_wall, _, s_proc = timed([status, "status", str(work / "grid.yaml"), "--json"], work)
            if s_proc.returncode == 0:
                result["status_s"] = round(s_wall, 3)
                result["target_status_s"] = 2.0
        print(json.dumps(result, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
