"""Training throughput at world size 1 vs 2 (JSON): the real Trainer.update, DDP over gloo on CPU.

Both worlds (DDP and FSDP2 for 2 ranks) train the same global batch (`--batch`, rows split over the
ranks), so tokens per update are equal and `speedup` = 2-rank tokens/s over
1-rank tokens/s. On a machine with fewer idle cores than ranks the 2-rank run
cannot be faster; the number then measures the synchronisation overhead. On a
CUDA GPU the single-GPU (world 1) numbers are added under `cuda`. The token
shard is synthetic (Zipf ids), which is all timing needs.

    python bench/bench_distributed.py [--preset micro] [--updates 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VOCAB = 512


def synthetic_data(root: Path, tokens: int = 300_000) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", tokens), ("val", tokens // 10)):
        ids = np.minimum(rng.zipf(1.2, size=n), VOCAB - 1).astype(np.uint16)
        ids.tofile(root / f"{split}.bin")
    manifest = {"format": 1, "dtype": "uint16", "vocab_size": VOCAB, "special_tokens": {"eos": 0, "mask": 1},
                "splits": {"train": {"file": "train.bin", "tokens": tokens},
                           "val": {"file": "val.bin", "tokens": tokens // 10}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def make_cfg(args, device: str, strategy: str):
    from metapretrain.config.load import run_config_from_dict

    return run_config_from_dict({
        "model": {"preset": args.preset},
        "train": {"budget": {"unit": "steps", "value": args.updates + args.warmup}, "batch_size": args.batch,
                  "seq_len": args.seq_len, "device": device, "compile": "off",
                  "checkpoint": {"export_hf": "none"}, "distributed": {"strategy": strategy}},
        "wandb": {"mode": "disabled"},
    })


def measure(rank: int, world: int, port: int, args, data: str, device: str, strategy: str, out: str) -> None:
    """Tokens/s of `args.updates` timed updates (after `args.warmup`), written by rank 0 to `out`."""
    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads))
    from metapretrain.train import distributed
    from metapretrain.train.loop import Trainer

    cfg = make_cfg(args, device, strategy)
    dist, _ = distributed.setup(cfg, torch.device(device))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(run_dir, data, cfg, run_id="bench", experiment=None, dist=dist)
        for _ in range(args.warmup):
            trainer.update()
        dist.barrier()
        start, tokens = time.perf_counter(), 0
        for _ in range(args.updates):
            before = trainer.counters.tokens
            trainer.update()
            tokens += trainer.counters.tokens - before
        dist.barrier()
        seconds = time.perf_counter() - start
        if dist.is_main:
            Path(out).write_text(json.dumps({"world_size": world, "strategy": dist.strategy, "device": device,
                                             "seconds": round(seconds, 4), "tokens": tokens,
                                             "tokens_per_s": round(tokens / seconds, 1),
                                             "s_per_update": round(seconds / args.updates, 5)}))
    dist.close()


def run_world(world: int, args, data: Path, device: str, strategy: str = "auto") -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = data / f"result_{world}_{device}_{strategy}.json"
    if world == 1:
        measure(0, 1, port, args, str(data), device, strategy, str(out))
    else:
        mp.spawn(measure, args=(world, port, args, str(data), device, strategy, str(out)), nprocs=world)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="micro")
    parser.add_argument("--batch", type=int, default=8, help="global micro-batch (divisible by 2)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    import torch

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(Path(tmp))
        one, two = run_world(1, args, data, "cpu"), run_world(2, args, data, "cpu", "ddp")
        fsdp = run_world(2, args, data, "cpu", "fsdp")
        result = {"bench": "distributed", "preset": args.preset, "global_batch": args.batch, "seq_len": args.seq_len,
                  "updates": args.updates, "threads_per_process": args.threads, "cores": os.cpu_count(),
                  "cpu": {"world_1": one, "world_2_ddp_gloo": two, "world_2_fsdp_gloo": fsdp,
                          "speedup": round(two["tokens_per_s"] / one["tokens_per_s"], 3),
                          "fsdp_speedup": round(fsdp["tokens_per_s"] / one["tokens_per_s"], 3)}}
        if torch.cuda.is_available():
            result["cuda"] = {"device_name": torch.cuda.get_device_name(0),
                              "world_1": run_world(1, args, data, "cuda")}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
