"""Dynamics stage speed: seconds per checkpoint with all default metrics, per preset (JSON on stdout).

For each preset a synthetic run is built in a temporary directory (the
preset's model with perturbed weights saved as checkpoints, a random
validation shard of the preset's vocabulary, a metrics.jsonl with episodic
accuracy), then `dynamics_run` is timed end to end: checkpoint loading and
verification, the probe pass (forward + backward of the real loss with
hooks), every metric, the CSV append, peaks and done.json. A breakdown of
one checkpoint (probe pass and each metric) follows. The probe batch is the
default: dynamics.probe_batch_size=8 sequences of train.seq_len=128.

    python bench/bench_dynamics.py [--presets micro,tiny] [--checkpoints 4] [--device cpu]

Target: the `tiny` preset's 61 checkpoints (the paper's MAML cadence) in minutes on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from metapretrain.checkpoint import save_checkpoint
from metapretrain.config.load import run_config_from_dict, write_run_config
from metapretrain.model import Decoder

TOKENIZER_VOCAB = 8192  # for presets whose vocabulary is the tokenizer's (micro, mini)


def build_run(root: Path, preset: str, n_checkpoints: int, device: str) -> tuple[Path, Path, int]:
    cfg = run_config_from_dict({"model": {"preset": preset}, "dynamics": {"device": device},
                                "launch": {"launcher": "debug"}})
    mcfg = cfg.model.resolved(tokenizer_vocab=TOKENIZER_VOCAB)
    run_dir, tok = root / "run", root / "tok"
    run_dir.mkdir(parents=True)
    tok.mkdir()
    write_run_config(run_dir / "config.resolved.yaml", cfg)
    n_val = 20 * (cfg.train.seq_len + 1) * cfg.dynamics.probe_batch_size
    dtype = np.uint16 if mcfg.vocab_size <= 2**16 else np.uint32
    np.random.default_rng(0).integers(0, mcfg.vocab_size, n_val).astype(dtype).tofile(tok / "val.bin")
    (tok / "manifest.json").write_text(json.dumps({"dtype": np.dtype(dtype).name, "vocab_size": mcfg.vocab_size,
                                                   "splits": {"val": {"file": "val.bin", "tokens": n_val}}}))
    torch.manual_seed(0)
    model = Decoder(mcfg)
    for i in range(n_checkpoints):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        save_checkpoint(run_dir, 100 * i, model=model, state={}, config=cfg.to_dict(), tokens=i * 1000, flops=i * 1e9)
    records = [{"kind": "train", "step": s, "tokens": s, "flops": s, "wall": s, "meta/query_acc": 0.5}
               for s in range(1, 100 * n_checkpoints, 10)]
    (run_dir / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir, tok, model.num_parameters()


def breakdown(run_dir: Path, tok: Path) -> dict:
    """Seconds of each part of one checkpoint's work (the final checkpoint, CKA against itself)."""
    from metapretrain.checkpoint import final_checkpoint, load_model
    from metapretrain.config import load_run_config
    from metapretrain.device import resolve_device
    from metapretrain.dynamics.episodic import read_train_log
    from metapretrain.dynamics.probe_pass import RESIDUAL, probe_batch, run_probe
    from metapretrain.dynamics.registry import get_metrics

    cfg = load_run_config(run_dir / "config.resolved.yaml")
    device = resolve_device(cfg.dynamics.device, "dynamics.device")
    batch = probe_batch(tok, cfg.dynamics.probe_batch_size, cfg.train.seq_len, cfg.seed)
    info = final_checkpoint(run_dir)
    out = {}
    t = time.perf_counter()
    model = load_model(info, device=device)
    out["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    data = run_probe(model, batch, step=info.step, activations=True, attention=True, gradients=True)
    out["probe_pass_s"] = time.perf_counter() - t
    data.reference = {i: data.acts[(i, RESIDUAL)] for i in range(data.n_layers)}
    data.train_log = read_train_log(run_dir / "pretrain" / "metrics.jsonl")
    for metric in get_metrics(cfg.dynamics.metrics):
        t = time.perf_counter()
        metric.fn(data)
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"{metric.name}_s"] = time.perf_counter() - t
    return {k: round(v, 4) for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="micro,tiny")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()
    from metapretrain.dynamics.stage import dynamics_run

    results = {}
    for preset in args.presets.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir, tok, n_params = build_run(Path(tmp), preset, args.checkpoints, args.device)
            t = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # the stage's progress lines; stdout is the JSON
                done = dynamics_run(str(run_dir), str(tok))
            total = time.perf_counter() - t
            rows = (run_dir / "dynamics" / "dynamics.csv").read_text().count("\n") - 1
            results[preset] = {
                "seconds_per_checkpoint": round(total / args.checkpoints, 3), "checkpoints": args.checkpoints,
                "total_s": round(total, 2), "rows_per_checkpoint": rows // args.checkpoints, "parameters": n_params,
                "probe_shape": done["probe_shape"], "device": done["device"],
                "projected_61_checkpoints_s": round(61 * total / args.checkpoints, 1),
                "breakdown": breakdown(run_dir, tok),
            }
    print(json.dumps({"bench": "dynamics", "threads": torch.get_num_threads(), "cores": os.cpu_count(),
                      "metrics": "all defaults", "presets": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
