"""The dynamics stage: learning-dynamics metrics over a run's checkpoints, resumable.

    metapretrain dynamics --run-dir RUN --data TOKDIR

For every complete checkpoint, one probe pass (metapretrain.dynamics.probe_pass)
feeds the metrics named in `dynamics.metrics`; their rows are appended to
`RUN/dynamics/dynamics.csv` per checkpoint (metapretrain.dynamics.store), so
a killed stage resumes at the first uncommitted checkpoint. The final
checkpoint (metapretrain.checkpoint.final_checkpoint) is processed first: CKA
compares every checkpoint with it. Then `peaks.csv`
(metapretrain.dynamics.phases) and `done.json`, last.

`dynamics_run` goes through its steps in order: `read_inputs`, `compute`, `write_outputs`.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metapretrain import paths
from metapretrain.io import atomic_path, done_is_valid, read_json, write_done

if TYPE_CHECKING:
    import torch

    from metapretrain.checkpoint import CheckpointInfo

STAGE = "dynamics"
OUTPUTS = ("dynamics.csv", "peaks.csv")


def _tensor_digest(t) -> str:
    import hashlib

    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _write_peaks(path: Path, peaks: list[dict]) -> None:
    from metapretrain.dynamics.phases import PEAK_COLUMNS

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PEAK_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(peaks)


@dataclass
class DynamicsInputs:
    """What one dynamics job computes from, and the identity its tables are kept under."""

    run_id: str
    out_dir: Path
    metrics: list  # dynamics.registry entries
    needs: set[str]
    ckpts: list[CheckpointInfo]
    final: CheckpointInfo  # verified; CKA's reference
    batch: torch.Tensor
    identity: dict  # what dynamics.csv was computed with
    settings: dict  # identity + what only peaks.csv depends on


def dynamics_run(run_dir: str, data_dir: str) -> dict:
    """Compute (or finish computing) the run's dynamics tables; returns the done.json record."""
    from metapretrain.config import load_run_config
    from metapretrain.device import resolve_device
    from metapretrain.dynamics.episodic import read_train_log
    from metapretrain.dynamics.store import DynamicsTable

    run_dir_p = Path(run_dir)
    cfg = load_run_config(paths.resolved_config(run_dir_p))
    job = read_inputs(run_dir_p, data_dir, cfg)
    done = paths.done_file(job.out_dir)
    if done_is_valid(job.out_dir, STAGE) and read_json(done).get("settings") == job.settings:
        print(f"dynamics: {done} exists, its outputs verify and its settings match; nothing to do", flush=True)
        return read_json(done)
    # A stale marker must not outlive the outputs it vouches for while they are recomputed.
    done.unlink(missing_ok=True)
    table = DynamicsTable(job.out_dir / "dynamics.csv", job.identity)
    if table.restarted:
        print(f"dynamics: {job.out_dir / 'dynamics.csv'} was computed with other metrics, probe batch or final "
              "checkpoint; starting it over", flush=True)
    todo = [c for c in job.ckpts if c.step not in table.steps]
    todo = sorted(todo, key=lambda c: (c.step != job.final.step, c.step))  # final first: CKA's reference
    device = resolve_device(cfg.dynamics.device, "dynamics.device")
    train_log = read_train_log(paths.metrics_file(run_dir_p)) if "train_log" in job.needs else []
    started = time.monotonic()
    print(f"dynamics: run {job.run_id}: {len(todo)} of {len(job.ckpts)} checkpoints to do, metrics "
          f"{', '.join(m.name for m in job.metrics)}, probe {tuple(job.batch.shape)} on {device}", flush=True)
    compute(job, todo, table, device, train_log)
    return write_outputs(job, table, cfg.dynamics, len(todo), device, time.monotonic() - started)


def read_inputs(run_dir: Path, data_dir: str, cfg) -> DynamicsInputs:
    """The metrics, the run's checkpoints and its final one, the probe batch; FileNotFoundError without checkpoints."""
    from metapretrain.checkpoint import final_checkpoint, list_checkpoints
    from metapretrain.dynamics.phases import RULE as PHASE_RULE
    from metapretrain.dynamics.probe_pass import probe_batch
    from metapretrain.dynamics.registry import get_metrics
    from metapretrain.run_record import run_identity

    dyn = cfg.dynamics
    metrics = get_metrics(dyn.metrics)
    needs = set().union(*(m.needs for m in metrics)) if metrics else set()
    _, run_id = run_identity(run_dir)
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise FileNotFoundError(f"{paths.checkpoints_dir(run_dir)}: no complete checkpoint; run the pretrain stage first")
    final = final_checkpoint(run_dir)
    seq_len = dyn.probe_seq_len or cfg.train.seq_len
    batch = probe_batch(data_dir, dyn.probe_batch_size, seq_len, cfg.seed)
    identity = {"run_id": run_id, "metrics": [m.name for m in metrics], "probe_sha256": _tensor_digest(batch),
                "reference_step": final.step}
    # The phase rule too: a peaks.csv written by an older rule is rewritten (from dynamics.csv, no recompute).
    settings = identity | {"smoothing": dyn.smoothing, "min_prominence": dyn.min_prominence, "phases": PHASE_RULE}
    return DynamicsInputs(run_id, paths.dynamics_dir(run_dir), metrics, needs, ckpts, final, batch, identity,
                          settings)


def compute(job: DynamicsInputs, todo: list[CheckpointInfo], table, device: torch.device, train_log: list) -> None:
    """One probe pass per checkpoint of `todo` feeding every metric; each checkpoint's rows are committed to
    `table` before the next is loaded, and a preemption request stops between checkpoints."""
    import torch

    from metapretrain.checkpoint import load_model
    from metapretrain.dynamics.probe_pass import RESIDUAL, CheckpointData, run_probe
    from metapretrain.launch import preemption
    from metapretrain.progress import Progress

    wants = {"activations": bool(job.needs & {"activations", "reference"}), "attention": "attention" in job.needs,
             "gradients": "gradients" in job.needs}
    reference = None
    if "reference" in job.needs and todo and todo[0].step != job.final.step:
        # Resumed after the final checkpoint was committed: recompute its activations only.
        model = load_model(job.final, device=device)
        ref = run_probe(model, job.batch, step=job.final.step, activations=True, attention=False, gradients=False)
        reference = {i: ref.acts[(i, RESIDUAL)] for i in range(ref.n_layers)}
        del model, ref

    with Progress("dynamics", total=len(todo), unit="ckpt", every_s=30) as bar:
        for n, info in enumerate(todo, 1):
            # The final checkpoint was verified when it was looked up; the others are verified here.
            model = load_model(job.final if info.step == job.final.step else info, device=device)
            # Weight-only metrics (norms, episodic accuracy) need no pass over the probe batch.
            data = (run_probe(model, job.batch, step=info.step, **wants) if any(wants.values())
                    else CheckpointData(step=info.step, model=model))
            if "reference" in job.needs and info.step == job.final.step:
                reference = {i: data.acts[(i, RESIDUAL)] for i in range(data.n_layers)}
            data.reference, data.train_log = reference, train_log
            rows = []
            for metric in job.metrics:
                for r in metric.fn(data):
                    rows.append((job.run_id, info.step, info.tokens, info.flops, r.layer, r.component, r.head,
                                 r.metric, float(r.value)))
            table.append(info.step, rows)
            data.release()
            del model, data
            bar.update(n, step=info.step, rows=len(rows))
            if preemption.requested() and n < len(todo):
                raise preemption.Preempted(f"dynamics preempted after step {info.step}; rerun to resume")
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_outputs(job: DynamicsInputs, table, dyn, computed: int, device: torch.device, seconds: float) -> dict:
    """peaks.csv from the finished table, then done.json; returns the done.json record."""
    from metapretrain.dynamics.phases import peaks_table

    peaks = peaks_table(table.rows(), dyn.smoothing, dyn.min_prominence)
    _write_peaks(job.out_dir / "peaks.csv", peaks)
    write_done(job.out_dir, STAGE, job.run_id, list(OUTPUTS),
               extra={"checkpoints": len(job.ckpts), "computed": computed, "seconds": round(seconds, 2),
                      "metrics": [m.name for m in job.metrics], "device": str(device),
                      "probe_shape": list(job.batch.shape), "settings": job.settings})
    print(f"dynamics: {computed} checkpoints in {seconds:.1f}s"
          f"{f' ({seconds / computed:.2f}s each)' if computed else ''} -> {job.out_dir}", flush=True)
    return read_json(paths.done_file(job.out_dir))


def main(argv: list[str] | None = None) -> int:
    from metapretrain.launch.run import run_dir_data_main

    return run_dir_data_main(STAGE, "metapretrain.dynamics.stage:dynamics_run", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
