"""Cost of per-domain evaluation (corpus.domains) per evaluation, against one training step (JSON on stdout).

A real `Trainer` on a synthetic tokenize output with `--domains` source files (the demo corpus has 12),
at each preset's demo shape: one training step (`Trainer.update`, next-token only), one evaluation with
its domains and one without (`train.eval_batches` = 8, `train.domain_eval_batches` = its default, or
`--domain-batches`), timed in
alternating rounds so machine noise hits all three alike; medians over rounds. Reported per preset:
seconds of the plain evaluation, of the domain part of one evaluation and per domain, and those as
fractions of one training step, plus the overhead per update at the demo's `train.eval_every` (50).

    python bench/bench_eval.py [--device auto|cpu|cuda] [--rounds N] [--presets micro,tiny] [--domains 12]
                              [--domain-batches N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import numpy as np

# (batch, seq_len) per preset, as bench_model.py: the demo's micro shape, the paper's tiny at 512.
SHAPES = {"micro": (8, 128), "mini": (8, 256), "tiny": (4, 512), "small": (8, 2048)}
WORDS = [f"w{i}" for i in range(300)]
EVAL_EVERY = 50


def corpus(root: Path, n_domains: int, lines: int) -> Path:
    from metapretrain.config.load import run_config_from_dict
    from metapretrain.data.tokenize_stage import tokenize

    (root / "corpus").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for d in range(n_domains):
        words = rng.choice(WORDS, size=60, replace=False)
        text = [" ".join(rng.choice(words, size=rng.integers(8, 30))) for _ in range(lines)]
        (root / "corpus" / f"domain{d:02d}.txt").write_text("\n".join(text) + "\n")
    cfg = run_config_from_dict({"data": {"root": str(root)},
                                "corpus": {"name": "bench", "sources": [{"type": "files", "paths": ["corpus/*.txt"]}]},
                                "tokenizer": {"vocab_size": 1024}}).to_dict()
    tokenize({k: cfg[k] for k in ("data", "corpus", "tokenizer", "seed")}, root / "tok")
    return root / "tok"


def trainer(root: Path, tok: Path, preset: str, device: str, domain_batches: int | None):
    from metapretrain import paths
    from metapretrain.config.load import run_config_from_dict
    from metapretrain.train.loop import Trainer

    batch, seq = SHAPES[preset]
    cfg = run_config_from_dict({"model": {"preset": preset},
                                "train": {"batch_size": batch, "seq_len": seq, "eval_batches": 8,
                                          **({} if domain_batches is None else
                                             {"domain_eval_batches": domain_batches}),
                                          "device": device, "compile": "off", "budget": {"value": 10_000}},
                                "wandb": {"mode": "disabled"}})
    run = root / f"run-{preset}"
    paths.pretrain_dir(run).mkdir(parents=True)
    shutil.copyfile(paths.tokenizer_file(tok), paths.tokenizer_file(paths.pretrain_dir(run)))
    return Trainer(run, tok, cfg, run_id=preset, experiment=None)


def timed(fn, device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def bench(root: Path, tok: Path, preset: str, device: str, rounds: int, domain_batches: int | None) -> dict:
    t = trainer(root, tok, preset, device, domain_batches)
    domains = dict(t.domain_batches)

    def plain():
        t.domain_batches = {}
        t.evaluate()
        t.domain_batches = domains

    for _ in range(2):  # warm-up
        t.update()
        t.evaluate()
        plain()
    step, full, base = [], [], []
    for _ in range(rounds):
        step.append(timed(t.update, t.device))
        full.append(timed(t.evaluate, t.device))
        base.append(timed(plain, t.device))
    s, f, b = median(step), median(full), median(base)
    extra = max(f - b, 0.0)
    n = len(domains)
    tokens = sum(int(x.shape[0]) * (int(x.shape[1]) - 1) for bs in domains.values() for x in bs)
    t.metrics.close()
    return {"preset": preset, "batch_size": SHAPES[preset][0], "seq_len": SHAPES[preset][1], "domains": n,
            "domain_eval_batches": t.cfg.train.domain_eval_batches,
            "domain_batches": sum(len(bs) for bs in domains.values()), "domain_tokens": tokens,
            "train_step_s": s, "eval_s": b, "eval_with_domains_s": f,
            "domains_s_per_eval": extra, "per_domain_s_per_eval": extra / n if n else 0.0,
            "domains_fraction_of_step": extra / s, "per_domain_fraction_of_step": extra / s / n if n else 0.0,
            "overhead_per_update_at_eval_every_50": extra / (EVAL_EVERY * s), "rounds": rounds}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--presets", default="micro,tiny")
    parser.add_argument("--domains", type=int, default=12)
    parser.add_argument("--lines", type=int, default=3000, help="lines per synthetic domain file")
    parser.add_argument("--domain-batches", type=int, default=None,
                        help="train.domain_eval_batches (default: the schema default)")
    args = parser.parse_args(argv)
    import torch

    from metapretrain.device import resolve_device

    device = resolve_device(args.device, "--device")
    torch.manual_seed(0)
    out = {"benchmark": "eval", "device": str(device), "threads": torch.get_num_threads(), "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON alone
            tok = corpus(root, args.domains, args.lines)
        for preset in args.presets.split(","):
            out["results"].append(bench(root, tok, preset.strip(), str(device.type), args.rounds,
                                        args.domain_batches))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
