"""Run every benchmark under bench/ and write bench/results/<machine>.json and .md.

Each bench_*.py prints one JSON object; this collects them with the machine's
description (CPU model, cores, GPU if any, torch version). Benchmarks compare
ratios measured side by side inside one process, so results from noisy
machines stay meaningful; absolute numbers are for the table only.

    python bench/run_all.py [--only model,meta] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    info = {"hostname": platform.node(), "python": platform.python_version(), "cores": os.cpu_count(),
            "platform": platform.platform()}
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        info["cpu"] = cpu
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def machine_slug(info: dict) -> str:
    name = info.get("gpu") or info.get("cpu") or "unknown"
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{name}-{info['cores']}c").strip("-").lower()


def run_bench(path: Path, timeout: int) -> dict:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}", "stderr": proc.stderr[-2000:], "bench_wall_s": wall}
    text = proc.stdout
    try:  # the last JSON object printed
        start = text.rindex("\n{") + 1 if not text.lstrip().startswith("{") else text.index("{")
        result = json.loads(text[start:])
    except ValueError:
        return {"error": "no JSON in output", "stdout": text[-2000:], "bench_wall_s": wall}
    result["bench_wall_s"] = wall
    return result


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif not isinstance(v, list):
            out[key] = v
    return out


def markdown(info: dict, results: dict) -> str:
    lines = [f"# Benchmarks on {info.get('gpu') or info.get('cpu')} ({info['cores']} cores)", "",
             f"torch {info.get('torch')}, Python {info['python']}", "", "| benchmark | metric | value |", "|---|---|---|"]
    for name, res in results.items():
        for key, value in flatten(res).items():
            if key in ("bench", "stderr", "stdout"):
                continue
            if isinstance(value, float):
                value = f"{value:.4g}"
            lines.append(f"| {name} | {key} | {value} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated bench names (e.g. model,meta)")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    benches = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {f"bench_{n.strip()}.py" for n in args.only.split(",")}
        benches = [b for b in benches if b.name in wanted]
    info = machine()
    results = {}
    for path in benches:
        name = path.stem.removeprefix("bench_")
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_bench(path, args.timeout)
        status = results[name].get("error", "ok")
        print(f"[bench] {name}: {status} ({results[name].get('bench_wall_s')}s)", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = machine_slug(info)
    (out / f"{slug}.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    (out / f"{slug}.md").write_text(markdown(info, results))
    print(json.dumps({"machine": info, "results": results}, indent=2))
    return 0 if not any("error" in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
