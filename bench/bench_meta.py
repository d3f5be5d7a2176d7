"""One FOMAML meta step vs one vanilla next-token step on the same tokens: time, peak memory, FLOPs (JSON).

The FOMAML step is the paper's episode: 32-way 4-shot (4 queries per class),
10 head-only inner steps, window 64 — 256 windows × 64 = 16,384 tokens. The
vanilla step runs next-token prediction on a [256, 64] batch of the same
size. Targets (issue 5): time ≤ 1.3×, memory ≤ 1.2× of vanilla; the top-level
`time_ratio` / `memory_ratio` are the worst over the measured presets.

Each (preset, step) is measured in a fresh subprocess so peak memory is its
own: on CUDA the allocator's peak over the step, on CPU the growth of the
process's peak RSS over its state after setup. Wall time is the headline;
`cpu_time_ratio` (process CPU time) is the same comparison robust to other
load on shared cores. The shard is synthetic
(Zipf-distributed ids), which is all timing needs. fp32 on CPU, bf16
autocast on CUDA.

    python bench/bench_meta.py                 # CUDA when available, else CPU
    python bench/bench_meta.py --device cpu    # micro, mini (< 2 min on 2 idle cores)
    python bench/bench_meta.py --device cuda   # micro, mini, tiny, small
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

EPISODE = {"n_way": 32, "k_shot": 4, "q_query": 4, "window": 64}
INNER_STEPS = 10
VOCAB = 8192  # the default BPE vocabulary (CPU presets take the tokenizer's size)
SHARD_TOKENS = 400_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(preset: str, kind: str, device_name: str, repeats: int) -> dict:
    """Seconds, peak memory, tokens and FLOPs of one micro-step of `kind` (vanilla | fomaml)."""
    import numpy as np
    import torch

    from metapretrain.config.load import run_config_from_dict
    from metapretrain.model import Decoder, ModelConfig
    from metapretrain.model.presets import PRESETS
    from metapretrain.train.steps import StepContext, TrainingData, step_kind

    torch.manual_seed(0)
    device = torch.device(device_name)
    fields = {k: v for k, v in PRESETS[preset].items()}
    fields["vocab_size"] = fields["vocab_size"] or VOCAB
    model = Decoder(ModelConfig(**fields)).to(device)
    n_windows = EPISODE["n_way"] * (EPISODE["k_shot"] + EPISODE["q_query"])
    W = EPISODE["window"]
    cfg = run_config_from_dict({
        "train": {"batch_size": n_windows, "seq_len": W},
        "meta": {"learner": "fomaml", "episode": EPISODE, "inner": {"steps": INNER_STEPS}},
    })
    rng = np.random.default_rng(0)
    shard = np.minimum(rng.zipf(1.2, SHARD_TOKENS) + 1, fields["vocab_size"] - 1).astype(np.uint16)
    batch = torch.from_numpy(shard[: n_windows * (W + 1)].astype(np.int64).reshape(n_windows, W + 1))

    class FixedBatches:
        def next(self):
            return batch

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    ctx = StepContext(model=model, cfg=cfg, device=device, batches=FixedBatches(),
                      data=TrainingData(shard, {"eos": 0, "mask": 1}), autocast=autocast)
    step = step_kind("next_token" if kind == "vanilla" else "fomaml")(ctx)
    params = list(model.parameters()) + step.parameters()

    def once(i: int):
        for p in params:
            p.grad = None
        return step.run(1.0, torch.Generator().manual_seed(i))

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # Warm-up: kernels, thread pools, allocator pools and lazy inits are not the step's cost.
    once(0)
    for p in params:
        p.grad = None
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_mb()
    times, cpu_times = [], []
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = once(i + 1)
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = peak_rss_mb() - base
    seconds = min(times)
    # cpu_seconds (all threads) is robust to other processes sharing the cores; seconds is wall time.
    return {"seconds": seconds, "cpu_seconds": min(cpu_times), "peak_mb": peak, "tokens": out.tokens, "flops": out.flops,
            "tokens_per_s": out.tokens / seconds, "loss": out.loss}


def child(args) -> int:
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    print(json.dumps(measure(args.child[0], args.child[1], args.device, args.repeats)))
    return 0


def run_child(preset: str, kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", preset, kind, "--device", args.device, "--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {preset}/{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda when available")
    ap.add_argument("--presets", nargs="+", default=None, help="default: micro mini (+ tiny small on cuda)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps after one warm-up (best is kept)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--child", nargs=2, metavar=("PRESET", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    from metapretrain.device import resolve_device

    args.device = resolve_device(args.device, "--device").type
    if args.repeats is None:
        args.repeats = 5 if args.device == "cuda" else 1
    if args.child:
        return child(args)
    presets = args.presets or (["micro", "mini", "tiny", "small"] if args.device == "cuda" else ["micro", "mini"])
    t0 = time.perf_counter()
    results = {}
    for preset in presets:
        van, meta = run_child(preset, "vanilla", args), run_child(preset, "fomaml", args)
        results[preset] = {
            "vanilla": van, "fomaml": meta,
            "time_ratio": meta["seconds"] / van["seconds"],
            "cpu_time_ratio": meta["cpu_seconds"] / van["cpu_seconds"],
            "memory_ratio": meta["peak_mb"] / van["peak_mb"],
            "flops_ratio": meta["flops"] / van["flops"],
        }
    worst_time = max(results, key=lambda p: results[p]["time_ratio"])
    worst_mem = max(results, key=lambda p: results[p]["memory_ratio"])
    report = {
        "bench": "meta_step",
        "device": args.device,
        "host": platform.node(),
        "episode": {**EPISODE, "inner_steps": INNER_STEPS, "tokens": n_tokens()},
        "vanilla_batch": [n_tokens() // EPISODE["window"], EPISODE["window"]],
        "time_ratio": results[worst_time]["time_ratio"],
        "memory_ratio": results[worst_mem]["memory_ratio"],
        "worst_time_preset": worst_time,
        "worst_memory_preset": worst_mem,
        "targets": {"time_ratio": 1.3, "memory_ratio": 1.2},
        "presets": results,
        "bench_seconds": time.perf_counter() - t0,
    }
    print(json.dumps(report, indent=2))
    return 0


def n_tokens() -> int:
    return EPISODE["n_way"] * (EPISODE["k_shot"] + EPISODE["q_query"]) * EPISODE["window"]


if __name__ == "__main__":
    sys.exit(main())
