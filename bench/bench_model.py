"""Training throughput of our Decoder vs transformers' LlamaForCausalLM, side by side (JSON on stdout).

One training step = forward + cross-entropy + backward + AdamW, same config,
same weights, same batch, same precision (fp32 on CPU, bf16 autocast on
CUDA), the same AdamW as the training loop's (`train.fused_adamw: auto`),
timed in alternating rounds so machine noise hits both equally.
MFU = (our FLOP accounting per token × tokens/s) / peak, the peak measured
with a large matmul in the same precision inside every timed round, beside
the steps: each round's MFU divides that round's step by that round's peak,
and the median over rounds is reported. (This machine's speed drifts by 30%
within seconds; a peak measured once, before the steps, made MFU drift with it.)

"ours" is the decoder as the training loop runs it by default: eager on CPU
(hand-fused head + loss), and also compiled
(`ours_compiled`, the CUDA default). The transformers model is run as its
users run it: labels passed to forward, SDPA attention, eager or compiled.
Top-level `ratio` = ours ÷ transformers eager and `ratio_vs_hf_compiled` =
ours ÷ transformers compiled, each the smaller over the presets run (ours =
the loop's default for the device: eager on CPU, compiled on CUDA).

    python bench/bench_model.py [--device auto|cpu|cuda] [--steps N] [--presets micro,tiny] [--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from statistics import median_high

import torch

from metapretrain.device import resolve_device, use_fused
from metapretrain.model import PRESETS, ModelConfig
from metapretrain.model.decoder import Decoder

# (batch, seq_len) per preset: the CPU presets at the demo's shapes, the paper presets at their context.
SHAPES = {"micro": (8, 128), "mini": (8, 256), "tiny": (4, 512), "small": (8, 2048), "medium": (4, 2048),
          "large": (2, 2048)}


def model_config(preset: str) -> ModelConfig:
    values = dict(PRESETS[preset])
    values["vocab_size"] = values["vocab_size"] or 8192  # the demo tokenizer's size
    return ModelConfig(**values)


class Peak:
    """The device's matmul peak in one precision: one large square matmul per `time()` call."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.n = 4096 if device.type == "cuda" else 1024
        self.reps = 10 if device.type == "cuda" else 1
        self.device = device
        self.a = torch.randn(self.n, self.n, device=device, dtype=dtype)
        self.b = torch.randn(self.n, self.n, device=device, dtype=dtype)
        for _ in range(2):
            self.time()

    def time(self) -> float:
        """Seconds per matmul."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(self.reps):
            self.a @ self.b
        _sync(self.device)
        return (time.perf_counter() - t0) / self.reps

    def flops(self, seconds: float) -> float:
        return 2 * self.n**3 / seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model's training step; `loss(batch)` hides the API difference."""

    def __init__(self, name, model, loss, device, autocast):
        self.name, self.model, self.loss, self.device, self.autocast = name, model, loss, device, autocast
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=use_fused("auto", device) or None)

    def step(self, batch: torch.Tensor) -> float:
        with self.autocast():
            loss = self.loss(batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


def ours_loss(model):
    """How the training loop computes it (`model.loss.next_token_loss`): the fused head + loss."""
    return lambda b: model(b[:, :-1], output="loss", targets=b[:, 1:])


def hf_loss(model):
    """How transformers users compute it: labels passed to the model (already shifted here, so
    both models predict the same B·T tokens), the loss computed inside forward."""
    return lambda b: model(input_ids=b[:, :-1], labels=b[:, 1:], shift_labels=b[:, 1:].contiguous(), use_cache=False).loss


def bench_preset(preset: str, device: torch.device, steps: int, compile_too: bool, peak: Peak) -> dict:
    from metapretrain.model.hf import to_llama

    cfg = model_config(preset)
    B, T = SHAPES[preset]
    T = min(T, cfg.max_seq_len)
    torch.manual_seed(0)
    ours = Decoder(cfg)
    hf = to_llama(ours)  # identical weights
    hf.config._attn_implementation = "sdpa"
    hf.config.use_cache = False
    ours.to(device).train()
    hf.to(device).train()
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    runners = [Runner("ours", ours, ours_loss(ours), device, autocast),
               Runner("hf", hf, hf_loss(hf), device, autocast)]
    if compile_too:
        ours_c = copy.deepcopy(ours)
        ours_c.compile_blocks()  # as the training loop compiles (train.compile): blocks, not the fused loss
        runners += [Runner("ours_compiled", ours_c, ours_loss(ours_c), device, autocast),
                    Runner("hf_compiled", hf, hf_loss(torch.compile(hf)), device, autocast)]
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=gen).to(device)
    out: dict = {"batch": B, "seq_len": T, "params": ours.num_parameters()}
    compile_s = {}
    for r in runners:  # warm-up (and compilation) outside the timed rounds
        t0 = time.perf_counter()
        for _ in range(2):
            r.step(batch)
        _sync(device)
        compile_s[r.name] = time.perf_counter() - t0
    times = {r.name: [] for r in runners}
    peak_times = []
    for _ in range(steps):
        peak_times.append(peak.time())
        for r in runners:
            _sync(device)
            t0 = time.perf_counter()
            r.step(batch)
            _sync(device)
            times[r.name].append(time.perf_counter() - t0)
    flops_per_step = ours.flops_per_token(T) * B * T
    out["peak_flops"] = round(peak.flops(median_high(peak_times)))
    for name, ts in times.items():
        out[f"{name}_tok_s"] = round(B * T / median_high(ts), 1)
        # Each round's step against the same round's peak, then the median round.
        out[f"{name}_mfu"] = round(median_high([flops_per_step / t / peak.flops(tp) for t, tp in zip(ts, peak_times, strict=True)]), 4)
    # "default" = how the training loop runs our model on this device (train.compile: auto).
    default = "ours_compiled" if compile_too and device.type == "cuda" else "ours"
    out["default"] = default
    out["ratio_vs_hf_eager"] = round(out[f"{default}_tok_s"] / out["hf_tok_s"], 3)
    if compile_too:
        out["compile_warmup_s"] = {k: round(v, 1) for k, v in compile_s.items() if "compiled" in k}
        out["ratio_vs_hf_compiled"] = round(out[f"{default}_tok_s"] / out["hf_compiled_tok_s"], 3)
        out["ours_compiled_vs_ours_eager"] = round(out["ours_compiled_tok_s"] / out["ours_tok_s"], 3)
        out["ours_compiled_vs_hf_compiled"] = round(out["ours_compiled_tok_s"] / out["hf_compiled_tok_s"], 3)
    out["default_mfu"] = out[f"{default}_mfu"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 10 CPU, 20 CUDA)")
    parser.add_argument("--presets", default=None,
                        help="comma-separated (default micro,tiny; micro,tiny,small,medium on CUDA)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile runs (they cost minutes of compilation on a cold cache)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device, "--device")
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    presets = (args.presets.split(",") if args.presets else
               ["micro", "tiny"] + (["small", "medium"] if cuda else []))
    steps = args.steps or (20 if cuda else 10)
    compile_too = args.compile
    peak = Peak(device, torch.bfloat16 if cuda else torch.float32)
    result = {"device": torch.cuda.get_device_name(device) if cuda else "cpu",
              "precision": "bf16-autocast" if cuda else "fp32", "threads": torch.get_num_threads(),
              "torch": torch.__version__, "steps": steps, "presets": {}}
    for p in presets:
        result["presets"][p] = bench_preset(p, device, steps, compile_too, peak)
        print(f"{p}: {result['presets'][p]}", file=sys.stderr, flush=True)
    runs = result["presets"].values()
    result["peak_flops"] = round(median_high([v["peak_flops"] for v in runs]))
    result["ratio"] = min(v["ratio_vs_hf_eager"] for v in runs)
    if compile_too:
        result["ratio_vs_hf_compiled"] = min(v["ratio_vs_hf_compiled"] for v in runs)
    if "micro" in result["presets"]:
        result["mfu_micro"] = result["presets"]["micro"]["default_mfu"]
        if compile_too:
            result["mfu_micro_compiled"] = result["presets"]["micro"]["ours_compiled_mfu"]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
