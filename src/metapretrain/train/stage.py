"""The pretrain stage: `metapretrain pretrain --run-dir RUN --data TOKDIR`.

`main` hands the work to the launcher (in-process, subprocess or SLURM);
`train_run` is the resumable job body: it continues from the newest verified
checkpoint, and returns at once when the run's done.json is already valid.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from metapretrain import paths
from metapretrain.io import atomic_path, done_is_valid, read_json, sha256_file, write_done

STAGE = "pretrain"


def copy_tokenizer(data_dir: Path, pretrain_dir: Path) -> Path:
    """pretrain/tokenizer.json: the run directory alone is enough for finetune and dynamics."""
    src, dst = paths.tokenizer_file(data_dir), paths.tokenizer_file(pretrain_dir)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no tokenizer; run the tokenize stage first")
    if not dst.is_file() or sha256_file(dst) != sha256_file(src):
        from metapretrain.checkpoint import CheckpointError, list_checkpoints

        if dst.is_file() and list_checkpoints(pretrain_dir.parent):  # never swap the tokenizer under checkpoints
            raise CheckpointError(f"{src}: not the tokenizer this run was trained with ({dst} differs and "
                                  f"checkpoints exist); pass the run's own tokenize output as --data, or "
                                  f"move {pretrain_dir} away to start the run over")
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return dst


# What a run's checkpoints depend on. Keys under these prefixes must not change between the
# attempts of one run; the exceptions say how a run executes or how long, not what it computes.
_TRAINING_SECTIONS = ("seed", "corpus", "tokenizer", "model", "train", "meta")
_MAY_CHANGE = ("train.budget", "train.eval_every", "train.eval_batches", "train.log_every", "train.progress_every_s",
               "train.checkpoint", "train.device", "train.precision", "train.compile", "train.fused_adamw",
               "train.tf32", "train.activation_checkpointing", "train.distributed", "train.on_nonfinite")


def changes_training(key: str) -> bool:
    """Whether a change of this dotted config key stops a run from resuming its checkpoints."""
    return key.split(".")[0] in _TRAINING_SECTIONS and not key.startswith(_MAY_CHANGE)


def check_config_unchanged(run_dir: Path, cfg) -> None:
    """Refuse to resume checkpoints trained under a different config (e.g. `train.lr` edited in the grid).

    Run ids come from the grid's axes, so editing a `defaults:` key keeps the run id; resuming the
    old checkpoints would silently splice two configs into one run.
    """
    import yaml

    from metapretrain import checkpoint as ckpt
    from metapretrain.config.errors import ConfigError
    from metapretrain.config.overrides import flatten
    from metapretrain.config.values import load_yaml
    from metapretrain.io import read_text

    old = None
    for info in reversed(ckpt.list_checkpoints(run_dir)):  # the checkpoint a resume would use
        try:
            ckpt.verify_checkpoint(info.path)
            old = load_yaml(read_text(info.path / ckpt.CONFIG_FILE)) or {}
            break
        except (ckpt.CheckpointError, OSError, ValueError, yaml.YAMLError):
            continue  # damaged: the resume reports it and falls back, and so does this check
    if old is None:
        return
    new = cfg.to_dict()
    before = flatten({k: old.get(k) for k in _TRAINING_SECTIONS if k in old})
    after = flatten({k: new[k] for k in _TRAINING_SECTIONS})
    changed = sorted(k for k in set(before) | set(after)
                     if before.get(k) != after.get(k) and changes_training(k))
    if changed:
        diffs = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"{run_dir}: its checkpoints were trained with a different config ({diffs}). "
                          f"Resuming would mix two configs in one run: delete {paths.pretrain_dir(run_dir)} to "
                          f"retrain it, restore the old values, or give the changed grid another experiment name",
                          file=str(paths.resolved_config(run_dir)), key=changed[0])


def train_run(run_dir: str, data_dir: str) -> dict:
    """Pretrain one run to its budget, resuming from its last checkpoint; returns the done.json record."""
    from metapretrain.config import load_run_config
    from metapretrain.device import resolve_device
    from metapretrain.train import distributed

    run_dir, data_dir = Path(run_dir), Path(data_dir)
    pre = paths.pretrain_dir(run_dir)
    if done_is_valid(pre, STAGE):
        print(f"pretrain: {paths.done_file(pre)} is valid; nothing to do", flush=True)
        return read_json(paths.done_file(pre))
    cfg = load_run_config(paths.resolved_config(run_dir))
    check_config_unchanged(run_dir, cfg)
    # One process, or one rank of a torchrun / multi-task SLURM job (train/distributed.py).
    dist, _ = distributed.setup(cfg, resolve_device(cfg.train.device, "train.device"))
    try:
        return _train(run_dir, data_dir, cfg, dist)
    finally:
        dist.close()


def _train(run_dir: Path, data_dir: Path, cfg, dist) -> dict:
    from metapretrain.run_record import run_identity
    from metapretrain.train import runtime
    from metapretrain.train.loop import Trainer
    from metapretrain.train.metrics import WandbLogger

    pre = paths.pretrain_dir(run_dir)
    experiment, run_id = run_identity(run_dir)
    pre.mkdir(parents=True, exist_ok=True)
    tokenizer = paths.tokenizer_file(pre)
    dist.on_main(lambda: copy_tokenizer(data_dir, pre), "copy the tokenizer")
    trainer = Trainer(run_dir, data_dir, cfg, run_id=run_id, experiment=experiment, dist=dist)
    if dist.active:
        print(f"pretrain {run_id}: rank {dist.rank} of {dist.world} ({dist.strategy}, {dist.env.source})", flush=True)
    if dist.is_main:
        print(f"pretrain {run_id}: {cfg.model.preset} model, {trainer.model.num_parameters():,} parameters, "
              f"device {trainer.device}, precision {trainer.precision}, compile {'on' if trainer.compile else 'off'}, budget {cfg.train.budget.value:g} "
              f"{cfg.train.budget.unit}", flush=True)
    trainer.resume()
    # W&B may draw from the global RNGs while it starts; training must not depend on whether it logs.
    rng = runtime.rng_state()
    trainer.wandb = WandbLogger(mode=cfg.wandb.mode if dist.is_main else "disabled", project=cfg.wandb.project, entity=cfg.wandb.entity,
                                run_dir=run_dir, run_id=run_id, experiment=experiment, config=cfg.to_dict())
    runtime.set_rng_state(rng)
    try:
        summary = trainer.run()
    finally:
        trainer.wandb.finish()

    def finish() -> None:  # rank 0 only: the others wait for it and then read its done.json
        outputs = [paths.metrics_file(run_dir), tokenizer]
        final = paths.checkpoints_dir(run_dir) / paths.checkpoint_name(summary["final_step"])
        outputs.append(final / "manifest.json")
        outputs += export_checkpoints(run_dir, cfg.train.checkpoint.export_hf, final)
        write_done(pre, STAGE, run_id, outputs, extra=summary)

    dist.on_main(finish, "write the exports and done.json")
    if dist.is_main:
        print(f"pretrain {run_id}: done: {summary['final_step']} steps, {summary['tokens']:,} tokens, "
              f"{summary['flops']:.3g} FLOPs, {summary['wall']:.1f}s, final val_loss "
              f"{summary['final_val_loss']:.4f} -> {pre}", flush=True)
    record = read_json(paths.done_file(pre))
    # Every rank has read done.json before any tears its process group down: a rank destroying gloo
    # while another still used it was seen to abort ("terminate called without an active exception").
    dist.barrier()
    return record


def export_checkpoints(run_dir: Path, mode: str, final: Path) -> list[Path]:
    """HF exports per `train.checkpoint.export_hf`; returns their config.json paths (done.json outputs)."""
    if mode == "none":
        return []
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("WARNING: transformers is not installed: skipping the Hugging Face export "
              "(run `metapretrain export` later)", file=sys.stderr, flush=True)
        return []
    from metapretrain.checkpoint import list_checkpoints
    from metapretrain.checkpoint.export import export_checkpoint

    hf = paths.hf_dir(run_dir)
    out = [export_checkpoint(final, hf) / "config.json"]
    if mode == "all":
        for info in list_checkpoints(run_dir):
            out.append(export_checkpoint(info.path, hf / info.path.name) / "config.json")
    return out


def main(argv: list[str] | None = None) -> int:
    from metapretrain.launch.run import run_dir_data_main

    return run_dir_data_main(STAGE, "metapretrain.train.stage:train_run", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
