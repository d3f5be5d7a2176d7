"""What a run will cost: training FLOPs, GPU-hours at a stated MFU, and the disk its checkpoints and exports take.

Everything follows from the resolved run config, without building a model or reading data:

* FLOPs: each micro-batch is a meta step with probability `meta.hybrid_ratio`, else a next-token step;
  what one costs is the step kind's own `expected_cost` (train/steps.py, metapretrain.meta), the same
  numbers its `run` reports. The next-token batch is global; every process samples its own episode, so
  a meta micro-batch costs one episode per process (`launch.slurm` nodes × tasks_per_node).
* updates: the step budget, or a token / FLOP budget over the expected cost of one update (the loop
  stops at the first update that reaches it).
* disk: the checkpoints `train.checkpoint` leaves at the end (`train/loop.py:checkpoint_steps`, `keep`),
  each fp32 weights + AdamW's two fp32 moments of every trained parameter (model and step-kind modules
  such as the episode head; the step-0 checkpoint has no moments yet) + a small state; FSDP on several
  processes writes the same again as `dcp/` shards. A Hugging Face export (`train.checkpoint.export_hf`) is fp32 weights + tokenizer files.

Only pretraining is counted: evaluation passes, fine-tuning and dynamics come on top.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metapretrain.train.steps import StepCost

DEFAULT_MFU = 0.4
DEFAULT_PEAK_TFLOPS = 989.0  # one H100 SXM, dense BF16
FP32 = 4
# A checkpoint's files besides the tensors (config.resolved.yaml, manifest, safetensors headers, RNG and data
# states in state.pt): 46 KB on the demo's micro runs; the tokenizer files of an HF export, per vocabulary entry
# (537 KB for the demo's 8,192-entry BPE tokenizer.json).
CHECKPOINT_OVERHEAD_BYTES = 64 * 1024
TOKENIZER_BYTES_PER_ENTRY = 66


@dataclass(frozen=True)
class RunCost:
    parameters: int  # the decoder's
    extra_parameters: int  # trained by step kinds (the episode head)
    processes: int  # ranks of the pretrain job
    meta_fraction: float  # expected share of meta micro-batches
    micro_batch_flops: float  # expected training FLOPs of one micro-batch (all processes)
    updates: int
    tokens: float
    flops: float
    gpu_hours: float
    checkpoints: int
    checkpoint_bytes: int  # each, but the initial one (step 0: no optimizer moments yet)
    init_checkpoint_bytes: int
    hf_exports: int
    hf_export_bytes: int  # each
    disk_bytes: int  # checkpoints + exports

    def to_dict(self) -> dict:
        return asdict(self)


def processes(cfg) -> int:
    """Ranks of the pretrain job: the SLURM allocation's tasks; one process with the local launchers."""
    if cfg.launch.launcher != "slurm":
        return 1
    s = cfg.launch.slurm.for_stage("pretrain")
    return s.nodes * s.tasks_per_node


def micro_batch_cost(cfg, model_cfg, world: int) -> StepCost:
    """The expected tokens and training FLOPs of one micro-batch over `world` processes: each step kind's
    `expected_cost` weighted by its slot's probability (a per-process episode counted once per process)."""
    from metapretrain.train.steps import StepCost, config_slots

    tokens, flops = 0.0, 0.0
    for slot in (s for s in config_slots(cfg) if s.kind is not None):
        step = slot.kind.expected_cost(cfg, model_cfg)
        copies = world if slot.kind.samples_per_rank else 1
        tokens += slot.probability * copies * step.tokens
        flops += slot.probability * copies * step.flops
    return StepCost(tokens=tokens, flops=flops)


def update_cost(cfg, model_cfg, world: int) -> StepCost:
    """The expected tokens and training FLOPs of one optimizer update (`train.grad_accum` micro-batches)."""
    from metapretrain.train.steps import StepCost

    micro = micro_batch_cost(cfg, model_cfg, world)
    return StepCost(tokens=cfg.train.grad_accum * micro.tokens, flops=cfg.train.grad_accum * micro.flops)


def run_cost(cfg, *, mfu: float = DEFAULT_MFU, peak_tflops: float = DEFAULT_PEAK_TFLOPS) -> RunCost:
    """The cost of pretraining one run with RunConfig `cfg` (a vocabulary the preset leaves open is
    `tokenizer.vocab_size`)."""
    from metapretrain.meta.episode_learner import EpisodicLearner
    from metapretrain.meta.head import EpisodeHead
    from metapretrain.train.loop import checkpoint_steps
    from metapretrain.train.schedule import planned_updates
    from metapretrain.train.steps import config_slots

    t = cfg.train
    model_cfg = cfg.model.resolved(tokenizer_vocab=cfg.tokenizer.vocab_size)
    world = processes(cfg)
    slots = config_slots(cfg)
    rho = sum(s.probability for s in slots[1:])  # the base slot (next-token steps) takes the rest
    extra = 0
    if any(s.kind is not None and issubclass(s.kind, EpisodicLearner) for s in slots):
        h = cfg.meta.head
        extra = EpisodeHead.shape_params(model_cfg.d_model, cfg.meta.episode.n_way, h.layers, h.width)[1]
    micro = micro_batch_cost(cfg, model_cfg, world)
    updates = planned_updates(t, update_cost(cfg, model_cfg, world))
    flops = updates * t.grad_accum * micro.flops

    params = model_cfg.num_parameters()
    kept = sorted(checkpoint_steps(t, updates) | {updates})
    n_ckpt = len(kept) if t.checkpoint.keep == "all" else min(2, len(kept))
    trained = params + extra
    copies = 2 if cfg.train.distributed.strategy == "fsdp" and world > 1 else 1  # + dcp/: the same as shards
    init = copies * FP32 * trained + CHECKPOINT_OVERHEAD_BYTES
    ckpt = copies * 3 * FP32 * trained + CHECKPOINT_OVERHEAD_BYTES  # weights + AdamW's two moments
    n_init = 1 if 0 in kept[-n_ckpt:] else 0
    n_hf = {"none": 0, "final": 1, "all": 1 + n_ckpt}[t.checkpoint.export_hf]  # `all`: hf/ and hf/step_*/
    hf = FP32 * params + TOKENIZER_BYTES_PER_ENTRY * model_cfg.vocab_size
    return RunCost(parameters=params, extra_parameters=extra, processes=world, meta_fraction=rho,
                   micro_batch_flops=micro.flops, updates=updates, tokens=updates * t.grad_accum * micro.tokens,
                   flops=flops, gpu_hours=flops / (mfu * peak_tflops * 1e12) / 3600, checkpoints=n_ckpt,
                   checkpoint_bytes=ckpt, init_checkpoint_bytes=init, hf_exports=n_hf, hf_export_bytes=hf,
                   disk_bytes=n_init * init + (n_ckpt - n_init) * ckpt + n_hf * hf)


def total(costs: list[RunCost]) -> dict:
    return {"runs": len(costs), "flops": sum(c.flops for c in costs), "gpu_hours": sum(c.gpu_hours for c in costs),
            "disk_bytes": sum(c.disk_bytes for c in costs), "tokens": sum(c.tokens for c in costs)}


def format_bytes(n: float) -> str:
    """Decimal units, as disks are sold: 558 GB, 1.2 TB."""
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    i = 0
    while abs(n) >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} {units[i]}" if i == 0 or abs(n) >= 100 else f"{n:.1f} {units[i]}"


def format_hours(h: float) -> str:
    return f"{h:.3g}" if h < 1000 else f"{h:,.0f}"
