"""The pretraining loop: orchestration only.

Per optimizer update: each of `grad_accum` micro-batches asks the run's
`StepMix` (train/steps.py) for its step kind, drawn from (seed, step, micro),
and runs it; then clip, AdamW, schedule. At update
boundaries: metrics, evaluation, checkpoints, budget and preemption checks.
What a step computes lives in the step kinds (train/steps.py, metapretrain.meta).

Resume: the newest verified checkpoint restores model, optimizer, step-kind
states and modules, data position, every RNG and the counters; metrics.jsonl
is cut back to that step. On CPU the continued run is bit-identical to an
uninterrupted one.

Several processes (torchrun, multi-task SLURM jobs): `Distributed`
(train/distributed.py) wraps the model (DDP or FSDP2), splits each global
batch over the ranks, synchronises gradients once per update and averages the
logged values; rank 0 alone writes metrics and checkpoints.
"""

from __future__ import annotations

import io
import math
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from metapretrain import checkpoint as ckpt
from metapretrain import paths
from metapretrain.cost import update_cost
from metapretrain.data.shards import domain_names, open_domain, open_split, read_manifest
from metapretrain.device import resolve_device
from metapretrain.launch import preemption
from metapretrain.model.loss import next_token_loss
from metapretrain.progress import Progress
from metapretrain.train import distributed, runtime, schedule
from metapretrain.train.batches import TokenBatches, domain_batches, fixed_batches
from metapretrain.train.metrics import MetricsWriter, WandbLogger
from metapretrain.train.optim import build_optimizer, set_lr
from metapretrain.train.steps import StepContext, StepMix, TrainingData

STATE_FORMAT = 1


class NonFiniteError(RuntimeError):
    """A NaN/inf loss or gradient with `train.on_nonfinite: stop`, or a non-finite state about to be saved."""


@dataclass
class Counters:
    step: int = 0  # optimizer updates done (skipped non-finite updates included)
    tokens: int = 0  # every step kind's (a meta step's episode windows included)
    tokens_ntp: int | None = 0  # next-token steps' only; None: resumed from a checkpoint that did not count them
    flops: float = 0.0
    wall: float = 0.0  # seconds inside the loop, summed over attempts

    def get(self, unit: str) -> float:
        return {"steps": self.step, "tokens": self.tokens, "flops": self.flops}[unit]


def checkpoint_steps(train, final_step: int | None = None) -> set[int]:
    """Scheduled checkpoint steps up to `final_step`: init (0), log-spaced 1, 2, 4, ..., every N."""
    limit = final_step if final_step is not None else 0
    steps = {0} | {2 ** i for i in range(train.checkpoint.log_spaced)}
    steps |= set(range(train.checkpoint.every, limit + 1, train.checkpoint.every))
    return {s for s in steps if final_step is None or s <= final_step}


class Trainer:
    def __init__(self, run_dir: str | Path, data_dir: str | Path, cfg, *, run_id: str, experiment: str | None,
                 dist: distributed.Distributed | None = None):
        self.run_dir, self.data_dir, self.cfg = Path(run_dir), Path(data_dir), cfg
        self.run_id, self.experiment = run_id, experiment
        t = cfg.train
        # One process unless train_run joined a process group (train/distributed.py).
        self.dist = dist or distributed.Distributed()
        self.device = distributed.init_device(self.dist.env, resolve_device(t.device, "train.device"))
        self.precision = runtime.resolve_precision(t.precision, self.device)
        runtime.configure_backends(self.device, t.tf32)
        manifest = read_manifest(data_dir)
        self.model_cfg = cfg.model.resolved(tokenizer_vocab=int(manifest["vocab_size"]))
        if t.seq_len > self.model_cfg.max_seq_len:
            raise ValueError(f"train.seq_len={t.seq_len} exceeds model.max_seq_len={self.model_cfg.max_seq_len} "
                             f"(preset {cfg.model.preset!r})")

        # Everything random at build time (init, head init) follows from the seed, so a resumed
        # attempt builds the same objects before their checkpointed states are loaded.
        runtime.seed_everything(cfg.seed)
        from metapretrain.model.decoder import Decoder

        self.model = Decoder(self.model_cfg).to(self.device)
        self.model.activation_checkpointing = t.activation_checkpointing
        # A token or FLOP budget sizes the schedule and compile policy on the expected cost of an update
        # under the step-kind mix (a meta micro-batch costs what its kind says, not a next-token batch's);
        # a steps budget needs no cost, so a kind without `expected_cost` still trains under one.
        self.update_cost = None if t.budget.unit == "steps" else update_cost(cfg, self.model_cfg, self.dist.world)
        planned = schedule.planned_updates(t, self.update_cost) * t.grad_accum
        self.compile = runtime.use_compile(t.compile, self.device, planned)
        if self.compile:
            self.model.compile_blocks()
        # DDP wraps the model; FSDP shards it in place (so the optimizer below sees the sharded parameters).
        self.wrapped = self.dist.wrap(self.model, self.device)
        train_tokens = open_split(data_dir, "train")
        self.batches = TokenBatches(train_tokens, t.batch_size, t.seq_len, cfg.seed,
                                    rank=self.dist.rank, world=self.dist.world)
        self.val_batches = fixed_batches(open_split(data_dir, "val"), t.batch_size, t.seq_len, t.eval_batches)
        # Evaluation domains (corpus.domains): a fixed set of at most train.domain_eval_batches batches each.
        self.domain_batches = {name: b for name in domain_names(manifest)
                               if (b := domain_batches(open_domain(data_dir, name, manifest), t.batch_size,
                                                       t.seq_len, t.domain_eval_batches))}
        self.autocast = runtime.autocast_factory(self.precision, self.device)
        tokenizer = paths.tokenizer_file(paths.pretrain_dir(run_dir))
        data = TrainingData(train_tokens, dict(manifest.get("special_tokens", {})), str(tokenizer))
        self.ctx = StepContext(model=self.wrapped, cfg=cfg, device=self.device, batches=self.batches, data=data,
                               autocast=self.autocast, raw_model=self.model)
        self.mix = StepMix.from_config(cfg, self.ctx)
        for kind in self.mix.kinds.values():
            for module in kind.modules().values():
                module.to(self.device)
        extra = [p for kind in self.mix.kinds.values() for p in kind.parameters()]
        self.extra_params = extra
        self.model_params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, extra, t, self.device)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.schedule = schedule.from_config(t, self.update_cost)
        self.counters = Counters()
        self.metrics = MetricsWriter(paths.metrics_file(run_dir))
        self.wandb: WandbLogger | None = None
        self.last_checkpoint: int | None = None
        self.final_step: int | None = None
        self._window = {"tokens": 0, "seconds": 0.0}
        # Next-token losses since the last train record (its `loss_interval`); checkpointed, so a resumed
        # run logs the same interval means as an uninterrupted one.
        self._losses = {"sum": 0.0, "count": 0}
        # Micro-batches of each slot since the last train record (its `n_<slot>`), checkpointed likewise.
        self._mix_counts = dict.fromkeys(self.mix.names, 0)

    # ----------------------------------------------------------------- state
    def modules(self) -> dict[str, torch.nn.Module]:
        return {name: m for kind in self.mix.kinds.values() for name, m in kind.modules().items()}

    def state(self) -> dict:
        return {"format": STATE_FORMAT, "optimizer": self.dist.optimizer_state(self.model, self.optimizer),
                "schedule": self.schedule.state_dict(),
                "kinds": {name: kind.state_dict() for name, kind in self.mix.kinds.items()},
                "batches": self.batches.state_dict(), "rng": runtime.rng_state(), "counters": asdict(self.counters),
                "losses": dict(self._losses), "mix_counts": dict(self._mix_counts)}

    def resume(self) -> ckpt.CheckpointInfo | None:
        """Load the newest verified checkpoint, if any; cut metrics.jsonl back to it."""
        info = ckpt.latest_checkpoint(self.run_dir)
        if info is None:
            if self.dist.is_main:
                self.metrics.truncate_to(None)
            return None
        # FSDP on several processes reads its shards (written at any world size); otherwise the full weights.
        sharded = self.dist.sharded_checkpoints and ckpt.has_sharded(info.path)
        weights = ckpt.load_shapes(info.path) if sharded else ckpt.load_tensors(info.path)
        # A config or tokenizer changed after the run started must stop here, naming the checkpoint.
        ckpt.check_tokenizer(info.path, weights)
        ckpt.check_shapes(info.path / ckpt.MODEL_FILE, self.model_cfg, weights)
        if sharded:
            missing = [k for k in self.model.state_dict() if k not in weights]
            unexpected = [k for k in weights if k not in self.model.state_dict()]
        else:
            missing, unexpected = self.dist.load_model_state(self.model, weights)
        if missing or unexpected:
            raise ckpt.CheckpointError(f"{info.path}: weights do not match the model (missing {missing[:5]}, "
                                       f"unexpected {unexpected[:5]})")
        saved_modules = ckpt.load_modules(info.path)
        for name, module in self.modules().items():
            if name not in saved_modules:
                raise ckpt.CheckpointError(f"{info.path}: no weights for step-kind module {name!r}")
            module.load_state_dict(saved_modules[name])
        state = ckpt.load_state(info.path)
        if sharded:
            self.dist.load_sharded(self.model, self.optimizer, self.modules(), info.path / ckpt.DCP_DIR)
        else:
            self.dist.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.schedule = schedule.from_config(self.cfg.train, self.update_cost, state["schedule"]["decay_steps"])
        for name, kind in self.mix.kinds.items():
            kind.load_state_dict(state["kinds"].get(name, {}))
        self.batches.load_state_dict(state["batches"])
        runtime.set_rng_state(state["rng"])
        self.counters = Counters(**_counters(state["counters"], self.mix))
        self._losses = dict(state.get("losses", {"sum": 0.0, "count": 0}))  # older checkpoints: from here on
        self._mix_counts = {n: int(state.get("mix_counts", {}).get(n, 0)) for n in self.mix.names}
        self.last_checkpoint = self.counters.step
        if self.dist.is_main:
            kept = self.metrics.truncate_to(info.step)
            # A kill between the checkpoint's rename and its metrics record leaves the checkpoint without a
            # record: write it now (the counters are the checkpoint's), so the log reads as an unbroken run's.
            if not any(r.get("kind") == "checkpoint" and r.get("step") == info.step for r in kept):
                self.record("checkpoint", path=str(info.path.relative_to(self.run_dir)))
        source = f", shards of {ckpt.DCP_DIR}/" if sharded else ""
        print(f"pretrain: resuming from {info.path.name} (step {info.step}, {info.tokens:,} tokens{source})",
              flush=True)
        return info

    def save(self) -> ckpt.CheckpointInfo:
        # Collective under FSDP (every rank gathers), so every rank calls it; only rank 0 writes.
        weights, state = self.dist.model_state(self.model), self.state()
        bad = [n for n, w in weights.items() if not torch.isfinite(w).all()]
        tmp = None
        if self.dist.sharded_checkpoints and not bad:
            # Rank 0 makes the temporary directory; every rank writes its shards into it before rank 0 renames it.
            step = self.counters.step
            tmp = self.dist.share(self.dist.on_main(lambda: ckpt.begin_checkpoint(self.run_dir, step),
                                                    f"create checkpoint step {step}"))
            try:
                self.dist.save_sharded(self.model, self.optimizer, self.modules(), tmp / ckpt.DCP_DIR)
            except BaseException:
                if self.dist.is_main:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise

        def write() -> ckpt.CheckpointInfo:
            if bad:
                raise NonFiniteError(f"refusing to checkpoint step {self.counters.step}: non-finite weights in "
                                     f"{', '.join(bad[:5])}")
            info = ckpt.save_checkpoint(self.run_dir, self.counters.step, model=_Weights(weights), state=state,
                                        config=self.cfg.to_dict(), tokens=self.counters.tokens,
                                        flops=self.counters.flops, modules=self.modules() or None, tmp=tmp,
                                        tokens_ntp=self.counters.tokens_ntp)
            self.record("checkpoint", path=str(info.path.relative_to(self.run_dir)))
            self._prune()
            return info

        info = self.dist.on_main(write, f"write checkpoint step {self.counters.step}")
        self.last_checkpoint = self.counters.step
        if info is None:  # not rank 0
            path = paths.checkpoints_dir(self.run_dir) / paths.checkpoint_name(self.counters.step)
            info = ckpt.CheckpointInfo(self.counters.step, self.counters.tokens, self.counters.flops, path)
        return info

    def _prune(self) -> None:
        keep = self.cfg.train.checkpoint.keep
        if keep == "all":
            ckpt.prune(self.run_dir, checkpoint_steps(self.cfg.train, self.counters.step), keep_last=2)
        else:
            ckpt.prune(self.run_dir, set(), keep_last=2)

    # --------------------------------------------------------------- records
    def record(self, kind: str, **fields) -> dict:
        c = self.counters
        rec = {"kind": kind, "step": c.step, "tokens": c.tokens, "flops": c.flops, "wall": round(c.wall, 3), **fields}
        if c.tokens_ntp is not None:
            rec["tokens_ntp"] = c.tokens_ntp
        if not self.dist.is_main:  # every rank holds the same (all-reduced) values; one writes them
            return rec
        self.metrics.write(rec)
        if self.wandb is not None and kind in ("train", "eval"):
            self.wandb.log(rec)
        return rec

    @torch.no_grad()
    def evaluate(self) -> float:
        """Validation loss on the fixed val batches, and `val_loss/<domain>` on each evaluation domain's: the
        mean next-token loss over the domain's target tokens (its batches weighted by their token counts)."""
        self.model.eval()
        losses = []
        for batch in self.val_batches:
            with self.autocast():
                losses.append(next_token_loss(self.wrapped, runtime.to_device(batch, self.device)).item())
        domains = {}
        for name, batches in self.domain_batches.items():
            total, count = 0.0, 0
            for batch in batches:
                n = batch.shape[0] * (batch.shape[1] - 1)
                with self.autocast():
                    total += next_token_loss(self.wrapped, runtime.to_device(batch, self.device)).item() * n
                count += n
            domains[f"val_loss/{name}"] = total / count
        self.model.train()
        loss = sum(losses) / len(losses)
        self.record("eval", val_loss=loss, val_ppl=math.exp(loss) if loss < 700 else math.inf, **domains)
        return loss

    # ------------------------------------------------------------------ loop
    def reached(self) -> bool:
        budget = self.cfg.train.budget
        return self.counters.get(budget.unit) >= budget.value

    def update(self) -> dict:
        """One optimizer update over `grad_accum` micro-batches; returns its train-record fields."""
        t, c = self.cfg.train, self.counters
        started = time.perf_counter()
        lr = self.schedule.lr_at(c.step)
        set_lr(self.optimizer, lr)
        self.model.train()
        # The base slot's losses make the record's `loss`; the others' metrics are logged as `<slot>/<metric>`.
        base_losses, other_losses, slot_metrics = [], [], defaultdict(list)
        counts = dict.fromkeys(self.mix.names, 0)
        tokens, tokens_ntp, flops = 0, 0, 0.0
        for micro in range(t.grad_accum):
            u, gen_seed = runtime.micro_seeds(self.cfg.seed, c.step, micro)
            name, kind = self.mix.draw(u)
            # Every rank draws the same kind; each samples its own episode (distributed.episode_seed).
            gen = torch.Generator().manual_seed(distributed.episode_seed(gen_seed, self.dist.rank))
            with self.dist.micro_step(final=micro == t.grad_accum - 1, kind=kind):
                out = kind.run(scale=1.0 / t.grad_accum, gen=gen)
            counts[name] += 1
            tokens += int(out.tokens)
            if name == self.mix.base:
                tokens_ntp += int(out.tokens)
            flops += float(out.flops)
            (base_losses if name == self.mix.base else other_losses).append(float(out.loss))
            for key, value in out.metrics.items():
                slot_metrics[key if key.startswith(f"{name}/") else f"{name}/{key}"].append(float(value))
        self.dist.sync_grads(self.model_params, self.extra_params, last_kind=kind)
        if self.dist.active:  # global tokens and FLOPs, rank-averaged losses and metrics: one all-reduce
            keys = sorted(slot_metrics)
            flat = base_losses + other_losses + [v for k in keys for v in slot_metrics[k]]
            (tokens, tokens_ntp, flops), flat = self.dist.reduce_scalars([tokens, tokens_ntp, flops], flat)
            tokens, tokens_ntp = int(round(tokens)), int(round(tokens_ntp))
            base_losses, flat = flat[:len(base_losses)], flat[len(base_losses):]
            other_losses, flat = flat[:len(other_losses)], flat[len(other_losses):]
            for k in keys:
                n = len(slot_metrics[k])
                slot_metrics[k], flat = flat[:n], flat[n:]
        grad_norm = self.dist.clip_grad_norm(self.params, t.grad_clip or math.inf)
        finite = math.isfinite(grad_norm) and all(math.isfinite(x) for x in base_losses + other_losses)
        if finite:
            self.optimizer.step()
            self._losses["sum"] += sum(base_losses)
            self._losses["count"] += len(base_losses)
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        c.step += 1
        c.tokens += tokens
        if c.tokens_ntp is not None:
            c.tokens_ntp += tokens_ntp
        c.flops += flops
        self._window["tokens"] += tokens
        self._window["seconds"] += seconds
        fields = {"lr": lr, "grad_norm": grad_norm, **{f"n_{n}": counts[n] for n in self.mix.names}}
        if base_losses:
            fields["loss"] = sum(base_losses) / len(base_losses)
        fields.update({k: sum(v) / len(v) for k, v in sorted(slot_metrics.items())})
        if not finite:
            self._nonfinite(fields, base_losses + other_losses)
        return fields

    def _head_weight_stats(self) -> dict:
        """`<slot>/head_weight_{mean,std}` of each step kind's `episode_head`: over its weight matrices
        (biases left out), after the update; read-only, so it changes no run."""
        out = {}
        for name, kind in self.mix.kinds.items():
            head = kind.modules().get("episode_head")
            weights = ([] if head is None else
                       [p.detach().float().reshape(-1) for p in head.parameters() if p.dim() >= 2])
            if weights:
                w = torch.cat(weights)
                out[f"{name}/head_weight_mean"] = float(w.mean())
                out[f"{name}/head_weight_std"] = float(w.std()) if w.numel() > 1 else 0.0
        return out

    def _nonfinite(self, fields: dict, losses: list[float]) -> None:
        action = self.cfg.train.on_nonfinite
        self.record("nonfinite", action=action, losses=[x if math.isfinite(x) else str(x) for x in losses],
                    grad_norm=fields["grad_norm"] if math.isfinite(fields["grad_norm"]) else str(fields["grad_norm"]))
        if action == "stop":
            raise NonFiniteError(f"non-finite loss or gradient at update {self.counters.step} (losses {losses}, "
                                 f"grad norm {fields['grad_norm']}); set train.on_nonfinite: skip to drop such "
                                 f"updates, or lower train.lr; training resumes from the last checkpoint")
        print(f"WARNING: update {self.counters.step} skipped: non-finite loss or gradient", flush=True)

    def run(self) -> dict:
        """Train until the budget is reached; returns the summary counters and final validation loss."""
        t = self.cfg.train
        session_start = time.perf_counter()
        wall0 = self.counters.wall
        last_eval = None
        self.dist.barrier()  # no rank may still be reading checkpoints (resume) while rank 0 writes one
        if self.last_checkpoint is None:  # fresh start: the init state is a checkpoint for the dynamics stage
            last_eval = self.evaluate()
            self.save()
        # The progress line keeps the last next-token loss, lr, validation loss and speed: an update of meta
        # steps only has no next-token loss, and speed and validation are measured only every few updates.
        shown = {"val": last_eval if last_eval is not None else _last_eval(self.metrics.path)}
        scheduled = checkpoint_steps(t)
        progress = Progress("pretrain", total=t.budget.value, unit=t.budget.unit, every_s=t.progress_every_s,
                            formatter=_progress_line,
                            **({} if self.dist.is_main else {"stream": io.StringIO(), "plain": True}))
        with progress:
            progress.update(self.counters.get(t.budget.unit), **shown)
            while not self.reached():
                if self.dist.any(preemption.requested()):  # all ranks stop at the same update
                    self.counters.wall = wall0 + time.perf_counter() - session_start
                    if self.last_checkpoint != self.counters.step:
                        self.save()
                    self.metrics.close()
                    raise preemption.Preempted(f"pretrain stopped at step {self.counters.step} on request; "
                                               "state saved")
                fields = self.update()
                for n in self.mix.names:
                    self._mix_counts[n] += fields[f"n_{n}"]
                self.counters.wall = wall0 + time.perf_counter() - session_start
                step, done = self.counters.step, self.reached()
                if step % t.log_every == 0 or step == 1 or done:
                    w = self._window
                    fields["tokens_per_s"] = w["tokens"] / w["seconds"] if w["seconds"] > 0 else 0.0
                    self._window = {"tokens": 0, "seconds": 0.0}
                    if self._losses["count"]:
                        fields["loss_interval"] = self._losses["sum"] / self._losses["count"]
                    self._losses = {"sum": 0.0, "count": 0}
                    fields.update({f"n_{n}": c for n, c in self._mix_counts.items()})
                    self._mix_counts = dict.fromkeys(self.mix.names, 0)
                    fields.update(self._head_weight_stats())
                    self.record("train", **fields)
                if step % t.eval_every == 0 or done:
                    last_eval = self.evaluate()
                if step in scheduled or step % t.checkpoint.every == 0 or done:
                    self.save()
                shown.update({k: v for k, v in (("step", step if t.budget.unit != "steps" else None),
                                                ("loss", fields.get("loss")), ("lr", fields["lr"]),
                                                ("val", last_eval), ("tok_s", fields.get("tokens_per_s")))
                              if v is not None})
                progress.update(self.counters.get(t.budget.unit), **shown)
        if self.last_checkpoint != self.counters.step:  # resumed at the final step without its checkpoint
            self.save()
        if last_eval is None:
            last_eval = _last_eval(self.metrics.path)
        self.metrics.close()
        c = self.counters
        return {"final_step": c.step, "tokens": c.tokens, "flops": c.flops, "wall": round(c.wall, 3),
                "final_val_loss": last_eval}


def _counters(saved: dict, mix: StepMix) -> dict:
    """A checkpoint's counters; one written before `tokens_ntp` was counted has it only when every
    token was a next-token one (no other step kind on), else None (not known)."""
    if "tokens_ntp" in saved:
        return saved
    only_next_token = all(s.kind is None for s in mix.slots[1:])
    return saved | {"tokens_ntp": saved["tokens"] if only_next_token else None}


class _Weights:
    """A state dict gathered for saving, in the shape `ckpt.save_checkpoint` expects of a model."""

    def __init__(self, weights: dict):
        self.weights = weights

    def state_dict(self) -> dict:
        return self.weights


def _progress_line(fields: dict) -> str:
    """`step 40  loss 4.1234  lr 3.0e-03  val 4.2345  12,345 tok/s` (step only for token and FLOP budgets)."""
    parts = []
    if fields.get("step") is not None:
        parts.append(f"step {fields['step']}")
    if fields.get("loss") is not None:
        parts.append(f"loss {fields['loss']:.4f}")
    if fields.get("lr") is not None:
        parts.append(f"lr {fields['lr']:.1e}")
    if fields.get("val") is not None:
        parts.append(f"val {fields['val']:.4f}")
    if fields.get("tok_s"):
        parts.append(f"{fields['tok_s']:,.0f} tok/s")
    return "  ".join(parts)


def _last_eval(metrics_path: Path) -> float | None:
    from metapretrain.metrics_log import read_records

    evals = [r for r in read_records(metrics_path) if r["kind"] == "eval"]
    return evals[-1]["val_loss"] if evals else None
