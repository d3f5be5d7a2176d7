"""The figures stage on a synthetic 48-run experiment: wall time and what it wrote (JSON on stdout).

2 methods × 3 model sizes × 8 seeds, each run with a metrics.jsonl (1,000 updates logged every 10, evaluated
every 100), NER results (2 train sets × 3 eval sets × 2 regimes × 3 metrics) and dynamics CSVs (PER of 4 layers ×
2 components, head entropy, at 6 checkpoints, with peaks), all written by this script into a temp dir.
Target: <= 30 s on a 2-core machine.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("vanilla", "fomaml")
SIZES = ("micro", "mini", "tiny")
SEEDS = tuple(range(1, 9))
STEPS, LOG_EVERY, EVAL_EVERY = 1000, 10, 100
CKPTS = (0, 200, 400, 600, 800, 1000)
TRAIN_SETS, EVAL_SETS = ("English-EWT", "Danish-DDT"), ("English-EWT", "Danish-DDT", "Tagalog-TRG")


def _loss(step: int, size: int, meta: bool, rng: random.Random, noise: float) -> float:
    floor = 4.0 - 0.3 * size + (0.05 if meta else 0.0)
    return floor + 5.0 * math.exp(-step / (180 if meta else 200)) + rng.gauss(0, noise)


def write_run(exp: Path, method: str, size: int, seed: int) -> dict:
    import yaml

    axes = {"method": method, "model.preset": SIZES[size], "seed": str(seed)}
    run_id = "/".join(f"{k}~{axes[k]}" for k in sorted(axes))
    rdir = exp / "runs" / run_id
    (rdir / "pretrain").mkdir(parents=True)
    (rdir / "dynamics").mkdir()
    meta = method != "vanilla"
    cfg = {"seed": seed, "meta": {"learner": "fomaml" if meta else "none"}, "model": {"preset": SIZES[size]}}
    (rdir / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
    rng = random.Random(f"{run_id}")
    flops_per_step = (1.4 if meta else 1.0) * 1e12 * (size + 1)
    lines = []
    for step in range(0, STEPS + 1):
        co = {"step": step, "tokens": step * 4096, "flops": step * flops_per_step, "wall": step * 0.2}
        if step % LOG_EVERY == 0 or step == 1:
            lines.append(json.dumps({"kind": "train", **co, "lr": 1e-3, "loss": _loss(step, size, meta, rng, 0.08),
                                     "n_next_token": 1, "n_meta": int(meta and rng.random() < 0.5)}))
        if step % EVAL_EVERY == 0:
            lines.append(json.dumps({"kind": "eval", **co, "val_loss": _loss(step, size, meta, rng, 0.01)}))
    (rdir / "pretrain" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (rdir / "pretrain" / "done.json").write_text("{}")
    dyn, peaks = ["run_id,step,tokens,flops,layer,component,head,metric,value"], [
        "run_id,layer,component,metric,peak_step,peak_value,rise,fall,is_rise_and_fall"]
    for layer in range(4):
        top = 200 + 150 * layer + rng.choice((-100, 0, 100))
        for comp in ("attn.v_proj.act", "resid.act"):
            for step in CKPTS:
                v = 0.5 + 0.3 * math.exp(-((step - top) / 250) ** 2) + rng.gauss(0, 0.01)
                dyn.append(f"{run_id},{step},{step * 4096},{step * flops_per_step},{layer},{comp},,per,{v}")
            peaks.append(f"{run_id},{layer},{comp},per,{top},0.8,0.3,0.2,{rng.random() < 0.7}")
        for head in range(2):
            for step in CKPTS:
                v = 2.0 + 0.5 * math.sin(step / 300 + layer) + 0.1 * head
                dyn.append(f"{run_id},{step},{step * 4096},{step * flops_per_step},{layer},attn,{head},head_entropy,{v}")
    (rdir / "dynamics" / "dynamics.csv").write_text("\n".join(dyn) + "\n")
    (rdir / "dynamics" / "peaks.csv").write_text("\n".join(peaks) + "\n")
    (rdir / "dynamics" / "done.json").write_text("{}")
    ner = []
    for regime in ("head", "full"):
        for tr in TRAIN_SETS:
            for ev in EVAL_SETS:
                kind = "in_language" if tr == ev else ("test_only" if ev == "Tagalog-TRG" else "cross_lingual")
                for metric in ("micro_f1", "PER_f1", "LOC_f1"):
                    v = 0.4 + 0.05 * size + (0.2 if regime == "full" else 0) + (0.01 if meta else 0) + rng.gauss(0, 0.02)
                    ner.append(f"{run_id},{tr},{regime},{ev},test,{kind},{metric},{v:.4f}")
    return {"run_id": run_id, "axes": axes, "hash": "0" * 10, "ner": ner}


def main() -> int:
    import yaml

    from metapretrain.figures.stage import build_figures

    work = Path(tempfile.mkdtemp(prefix="bench_figures."))
    try:
        exp = work / "results" / "bench48"
        runs = [write_run(exp, m, s, seed) for m in METHODS for s in range(len(SIZES)) for seed in SEEDS]
        (exp / "ner").mkdir()
        (exp / "ner" / "results.csv").write_text(
            "pretrain_run,train_set,regime,eval_set,eval_split,eval_kind,metric,value\n"
            + "\n".join(row for r in runs for row in r.pop("ner")) + "\n")
        (exp / "grid.yaml").write_text(yaml.safe_dump({"experiment": "bench48", "axes": ["method", "model.preset", "seed"],
                                                       "replicates": ["seed"], "runs": runs}, sort_keys=False))
        t0 = time.perf_counter()
        entries = build_figures(exp, formats=("png",), strict=True)
        wall = time.perf_counter() - t0
        result = {"bench": "figures", "runs": len(runs), "wall_s": round(wall, 3),
                  "figures": sum(e["kind"] == "figure" for e in entries),
                  "tables": len({e["file"].rsplit(".", 1)[0] for e in entries if e["kind"] == "table"}),
                  "target_wall_s": 30.0}
        print(json.dumps(result, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
