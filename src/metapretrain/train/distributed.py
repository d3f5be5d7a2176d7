"""Multi-process training with torch.distributed: DDP or FSDP2, meta steps included.

Processes. Rank and world size come from the torchrun variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or, inside a multi-task
SLURM/submitit job, from `submitit.helpers.TorchDistributedEnvironment`. A
world of one builds no process group and trains exactly as before. NCCL on
CUDA (one GPU per process, `cuda:LOCAL_RANK`), gloo on CPU. Locally, N
processes are started with `torchrun --nproc_per_node N -m metapretrain.cli
pretrain ...` and `launch.launcher: debug`; under SLURM every task of the job
runs the same stage and they find each other through submitit.

Strategy (`train.distributed.strategy`): `auto` = DDP when the world has more
than one process; `ddp` replicates the model; `fsdp` shards every decoder
block and the root with `fully_shard` (FSDP2).

Data. `train.batch_size` is the GLOBAL micro-batch: rank r takes rows
r, r + W, ... of each global batch (W = world size), so the ranks read disjoint
windows and together exactly the rows a single process would. The data
position is global and identical on every rank, so one checkpoint restores
every rank, at any world size dividing the batch.

Step kinds. The kind of each micro-step is drawn from (seed, step, micro) on
every rank alike (`runtime.micro_seeds`), so all ranks run the same kind at
the same time. A meta step's episode comes from a generator seeded by
(micro seed, rank) (`episode_seed`; rank 0 keeps the single-process seed), so
each rank samples its own episode, independently, from the same episode
distribution. The synchronised gradient is the mean of W independent unbiased
estimates of the meta-gradient: still unbiased, with 1/W the variance, i.e. a
meta-batch of W episodes per meta step. Inner loops are functional (fast
weights), so no rank ever writes shared parameters before the update.

Gradient synchronisation happens once per optimizer update; what a step kind
needs is its own declaration (`StepKind.grad_sync`, `supports_fsdp`,
train/steps.py), never its name. DDP: every micro-step but the last runs under
`no_sync()`; when the last one's kind syncs through the wrapper (`grad_sync =
"wrapper"`: next-token steps), DDP all-reduces in its backward the gradients
accumulated by all micro-steps (meta steps write into the same parameters,
outside DDP's forward). Otherwise (`explicit`), and always for step-kind
parameters (the episode head, not part of the DDP module), one explicit
coalesced all-reduce (mean) at the update boundary does it. FSDP:
`set_requires_gradient_sync(False)` on every micro-step but the last, whose
backward reduce-scatters; meta learners call the root module
(`model(x, output="hidden")`) so FSDP's hooks gather the shards. Kinds that run
the backbone at full-size fast weights (reptile, maml_ntp: `supports_fsdp =
False`) cannot work on shards and are refused under FSDP. Step-kind parameters are
all-reduced explicitly as with DDP. (A final meta micro-step with two
backwards, `meta.inner.backbone_grad_from_support`, reduce-scatters twice:
FSDP2 adds the reduced parts, so the result is still exact.) Which parameters
hold a gradient depends only on the step kinds drawn, hence is the same on
every rank. Besides the gradients, an update costs two scalar all-reduces: the
logged values and the stop-signal flag.

Metrics: tokens and FLOPs are summed over ranks, losses and meta metrics
averaged, in one all-reduce per update; only rank 0 writes metrics, W&B,
checkpoints, exports and done.json, and the others wait for it (`on_main`:
a failure on rank 0 is raised on every rank instead of leaving them waiting).
A stop signal is or-reduced, so all ranks checkpoint at the same update.

Checkpoints keep the consolidated format (docs/architecture.md) for every
strategy: finetune, dynamics and the HF export read it, and any world size
resumes from it (the data position is global, the optimizer state is saved
unsharded and re-sharded on load). Under FSDP the model and optimizer states
are gathered to CPU on rank 0 at each checkpoint. FSDP on several processes
also writes a distributed checkpoint, `dcp/` (`torch.distributed.checkpoint`:
every rank writes its own shards, keyed by parameter name), inside the same
atomic protocol: rank 0 creates the temporary directory and shares its path,
all ranks write, a barrier, then rank 0 writes the consolidated files and the
manifest (which lists the shards) and renames. A resume under FSDP at any
world size > 1 loads model and optimizer from `dcp/` when present; a single
process, or DDP, loads the consolidated files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

STRATEGIES = ("auto", "none", "ddp", "fsdp")


class DistributedConfigError(ValueError):
    """A config that cannot train with the detected world size or strategy."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"  # torchrun | submitit | single

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_env(environ: dict | None = None) -> DistEnv:
    """The process's place in the job: torchrun variables first, then a multi-task submitit job, else single."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    # Only inside a submitit job: a plain process in a multi-task allocation (SLURM_NTASKS > 1) is one process.
    if environ is None and env.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            from submitit.helpers import TorchDistributedEnvironment

            # Sets MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK for init_process_group's env:// method.
            d = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            return DistEnv(d.rank, d.world_size, d.local_rank, "submitit")
    return DistEnv()


def resolve_strategy(setting: str, world_size: int) -> str:
    if setting not in STRATEGIES:
        raise DistributedConfigError(f"train.distributed.strategy={setting!r}; expected one of {', '.join(STRATEGIES)}")
    if world_size == 1:
        return "none"
    if setting == "none":
        raise DistributedConfigError(f"train.distributed.strategy=none, but {world_size} processes were started "
                                     f"(WORLD_SIZE); use auto, ddp or fsdp, or start one process")
    return "ddp" if setting == "auto" else setting


def check_config(cfg, env: DistEnv, strategy: str) -> None:
    """Refuse settings that cannot train at this world size, naming the keys."""
    t = cfg.train
    if t.batch_size % env.world_size:
        raise DistributedConfigError(f"train.batch_size={t.batch_size} is the global micro-batch and must be "
                                     f"divisible by the world size {env.world_size}")
    if strategy != "fsdp":
        return
    from metapretrain.train.steps import config_slots

    for slot in config_slots(cfg):
        if slot.kind is not None and not slot.kind.supports_fsdp:
            raise DistributedConfigError(f"train.distributed.strategy=fsdp cannot run {slot.label}: it needs the "
                                         f"full-size parameters (fast weights over the backbone), which FSDP keeps "
                                         f"sharded; use train.distributed.strategy: ddp, or another "
                                         f"{slot.setting or 'step kind'}")


def episode_seed(gen_seed: int, rank: int) -> int:
    """The seed of a micro-step's generator on `rank`; rank 0 keeps the single-process seed."""
    if rank == 0:
        return gen_seed
    words = np.random.SeedSequence([gen_seed, rank]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def init_device(env: DistEnv, device: torch.device) -> torch.device:
    """One GPU per process: cuda:LOCAL_RANK when distributed on CUDA."""
    if env.world_size > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device


class Distributed:
    """The loop's view of the process group: wrapping, micro-step sync, reductions, rank-0 decisions."""

    def __init__(self, env: DistEnv | None = None, strategy: str = "none"):
        self.env = env or DistEnv()
        self.strategy = strategy
        self.owns_group = False
        self.wrapped = None  # the DDP wrapper or the fully_shard'ed root

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def active(self) -> bool:
        return self.env.world_size > 1

    def init_group(self, device: torch.device) -> None:
        import torch.distributed as dist

        if not self.active or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world,
                                timeout=dt.timedelta(minutes=30), device_id=device if device.type == "cuda" else None)
        self.owns_group = True

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    # ------------------------------------------------------------ wrapping
    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module next-token steps call: DDP(model), or `model` itself sharded in place by FSDP2."""
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            # The decoder's only buffers are RoPE tables derived from the config: nothing to sync per forward.
            newer = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
            no_buffer_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
            self.wrapped = DDP(model, device_ids=ids, **no_buffer_sync)
            return self.wrapped
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in model.layers:
                fully_shard(block)
            fully_shard(model)
            self.wrapped = model
            return model
        return model

    @contextlib.contextmanager
    def micro_step(self, final: bool, kind):
        """Gradient sync for one micro-step of step kind `kind`: only in the backward of the update's last one."""
        if self.strategy == "ddp":
            if final and kind.grad_sync == "wrapper":
                yield
            else:
                with self.wrapped.no_sync():
                    yield
        elif self.strategy == "fsdp":
            self.wrapped.set_requires_gradient_sync(final)
            yield
        else:
            yield

    def sync_grads(self, model_params: list, extra_params: list, last_kind) -> None:
        """At the update boundary: average the gradients no backward hook has averaged yet (`last_kind`: the
        step kind of the update's last micro-step)."""
        if not self.active:
            return
        todo = list(extra_params)
        if self.strategy == "ddp" and last_kind.grad_sync != "wrapper":
            todo = list(model_params) + todo
        grads = [p.grad for p in todo if p.grad is not None]
        if grads:
            self.all_reduce_mean_(grads)

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(tensors)
        dist.all_reduce(flat)
        flat /= self.world
        for t, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors), strict=True):
            t.copy_(synced)

    def clip_grad_norm(self, params: list, max_norm: float) -> float:
        """Total gradient norm over all ranks' (synchronised) gradients, clipped to `max_norm`; the same on every rank."""
        if self.strategy != "fsdp":
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None]
        sharded = [g for g in grads if isinstance(g, DTensor)]
        plain = [g for g in grads if not isinstance(g, DTensor)]
        device = sharded[0].to_local().device if sharded else (plain[0].device if plain else torch.device("cpu"))
        local = torch.zeros((), dtype=torch.float64, device=device)
        for g in sharded:  # Shard(0): the ranks hold disjoint pieces, so squares add up over ranks
            local += g.to_local().double().pow(2).sum()
        dist.all_reduce(local)
        for g in plain:  # replicated (already averaged): count once
            local += g.double().pow(2).sum().to(device)
        total = float(local.sqrt())
        if math.isfinite(total) and total > max_norm:
            coef = max_norm / (total + 1e-6)
            for g in grads:
                g.mul_(coef)
        return total

    # --------------------------------------------------------------- state
    # Checkpoints hold full (consolidated) tensors whatever the strategy, so any world size can load them.
    # Under FSDP, gathering and scattering are collectives: every rank calls these, in the same order.

    def model_state(self, model: torch.nn.Module) -> dict:
        sd = model.state_dict()
        return {k: _full(v) for k, v in sd.items()} if self.strategy == "fsdp" else sd

    def load_model_state(self, model: torch.nn.Module, weights: dict):
        if self.strategy == "fsdp":
            own = model.state_dict()
            weights = {k: _like(own[k], v) if k in own else v for k, v in weights.items()}
        return model.load_state_dict(weights, strict=False)

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        sd = optimizer.state_dict()
        if self.strategy != "fsdp":
            return sd
        return {"state": {i: {k: _full(v) for k, v in s.items()} for i, s in sd["state"].items()},
                "param_groups": sd["param_groups"]}

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if self.strategy == "fsdp":
            params = [p for g in optimizer.param_groups for p in g["params"]]
            state = {"state": {i: {k: _like(params[int(i)], v) if torch.is_tensor(v) and v.dim() > 0 else v
                                   for k, v in s.items()} for i, s in state["state"].items()},
                     "param_groups": state["param_groups"]}
        optimizer.load_state_dict(state)

    # ------------------------------------------------- sharded checkpoints
    # Under FSDP on several processes a checkpoint also holds `dcp/`: every rank writes its own shards of the
    # model and optimizer states with torch.distributed.checkpoint, and resumes under FSDP read them back
    # resharded to the new world size. Keys are parameter names (get_state_dict), not optimizer indices.

    @property
    def sharded_checkpoints(self) -> bool:
        return self.active and self.strategy == "fsdp"

    def save_sharded(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, modules: dict,
                     directory) -> None:
        """Write this rank's shards of model, step-kind modules and optimizer under `directory` (collective)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        root = _stateful(model, modules)
        content = {"model": get_model_state_dict(root)}
        # Before the first update the optimizer has no state; get_optimizer_state_dict would create it with a
        # zero-gradient step (advancing Adam's step count), so the init checkpoint holds the model only.
        if optimizer.state:
            content["optimizer"] = get_optimizer_state_dict(root, optimizer)
        dcp.save(content, checkpoint_id=str(directory))
        self.barrier()  # every rank's files are complete before rank 0 lists them in the manifest

    def load_sharded(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, modules: dict,
                     directory) -> None:
        """Load model, step-kind modules and optimizer from shards written at any world size (collective)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        root = _stateful(model, modules)
        saved = dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata
        # Templates laid out (sharded) like this world; DCP fills them from the shards of the saving world.
        target = {"model": get_model_state_dict(root)}
        if any(key.startswith("optimizer.") for key in saved):
            target["optimizer"] = get_optimizer_state_dict(root, optimizer)
        dcp.load(target, checkpoint_id=str(directory))
        set_model_state_dict(root, target["model"])
        if "optimizer" in target:
            set_optimizer_state_dict(root, optimizer, target["optimizer"])

    def share(self, value):
        """Rank 0's `value` on every rank (a path, a small picklable object)."""
        if not self.active:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ---------------------------------------------------------- reductions
    def reduce_scalars(self, sums: list[float], means: list[float]) -> tuple[list[float], list[float]]:
        """(sums over ranks, means over ranks) in one all-reduce; every rank must pass the same lengths."""
        if not self.active:
            return list(sums), list(means)
        import torch.distributed as dist

        vec = torch.tensor([*sums, *means], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(vec)
        out = vec.cpu().tolist()
        return out[:len(sums)], [v / self.world for v in out[len(sums):]]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (e.g. a stop signal that reached one task first)."""
        if not self.active:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def on_main(self, fn, what: str):
        """fn() on rank 0 only; the others wait, and raise when it failed, rather than wait forever."""
        result = None
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:
                self.share(f"{type(exc).__name__}: {exc}")  # rank 0's error text; None below means success
                raise
        error = self.share(None)
        if error is not None:
            raise RuntimeError(f"rank 0 failed to {what}: {error}")
        return result

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def setup(cfg, device: torch.device, environ: dict | None = None) -> tuple[Distributed, torch.device]:
    """Detect the world, check the config against it, join the process group; (Distributed, this rank's device)."""
    env = detect_env(environ)
    strategy = resolve_strategy(cfg.train.distributed.strategy, env.world_size)
    check_config(cfg, env, strategy)
    device = init_device(env, device)
    d = Distributed(env, strategy)
    d.init_group(device)
    return d, device


def _stateful(model: torch.nn.Module, modules: dict) -> torch.nn.Module:
    """One module holding the decoder and the step-kind modules, so the optimizer's every parameter has a name."""
    return torch.nn.ModuleDict({"model": model, **modules})


def _full(t):
    """A DTensor's full value on CPU (a collective); plain tensors as they are."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor().cpu() if isinstance(t, DTensor) else t


def _like(ref, full: torch.Tensor):
    """`full` laid out like `ref`: sharded the same way when `ref` is a DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(ref, DTensor):
        return distribute_tensor(full.to(ref.device_mesh.device_type), ref.device_mesh, ref.placements)
    return full
