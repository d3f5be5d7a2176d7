"""The dynamics stage: learning-dynamics metrics over a run's checkpoints, resumable.

    metapretrain dynamics --run-dir RUN --data TOKDIR

For every complete checkpoint, one probe pass (metapretrain.dynamics.probe)
feeds the metrics named in `dynamics.metrics`; their rows are appended to
`RUN/dynamics/dynamics.csv` per checkpoint (metapretrain.dynamics.store), so
a killed stage resumes at the first uncommitted checkpoint. The final
checkpoint is processed first: CKA compares every checkpoint with it. Then
`peaks.csv` (metapretrain.dynamics.phases) and `done.json`, last.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from metapretrain import paths
from metapretrain.io import atomic_path, done_is_valid, read_json, write_done

STAGE = "dynamics"
OUTPUTS = ("dynamics.csv", "peaks.csv")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("dynamics.device is cuda but no CUDA device is available; set dynamics.device: auto or cpu")
    return name


def _tensor_digest(t) -> str:
    import hashlib

    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _write_peaks(path: Path, peaks: list[dict]) -> None:
    from metapretrain.dynamics.phases import PEAK_COLUMNS

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PEAK_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(peaks)


def dynamics_run(run_dir: str, data_dir: str) -> dict:
    """Compute (or finish computing) the run's dynamics tables; returns the done.json record."""
    import torch

    from metapretrain.config import load_run_config
    from metapretrain.dynamics.episodic import read_train_log
    from metapretrain.dynamics.phases import peaks_table
    from metapretrain.dynamics.probe import RESIDUAL, CheckpointData, probe_batch, run_probe
    from metapretrain.dynamics.registry import get_metrics
    from metapretrain.dynamics.store import DynamicsTable
    from metapretrain.launch import preemption
    from metapretrain.progress import Progress
    from metapretrain.run_record import run_identity
    from metapretrain.train.checkpoint import list_checkpoints, load_model

    run_dir_p = Path(run_dir)
    out_dir = paths.dynamics_dir(run_dir_p)
    cfg = load_run_config(paths.resolved_config(run_dir_p))
    dyn = cfg.dynamics
    metrics = get_metrics(dyn.metrics)
    needs = set().union(*(m.needs for m in metrics)) if metrics else set()
    _, run_id = run_identity(run_dir_p)
    ckpts = list_checkpoints(run_dir_p)
    if not ckpts:
        raise FileNotFoundError(f"{paths.checkpoints_dir(run_dir_p)}: no complete checkpoint; run the pretrain stage first")
    final = ckpts[-1]
    seq_len = dyn.probe_seq_len or cfg.train.seq_len
    batch = probe_batch(data_dir, dyn.probe_batch_size, seq_len, cfg.seed)
    identity = {"run_id": run_id, "metrics": [m.name for m in metrics], "probe_sha256": _tensor_digest(batch),
                "reference_step": final.step}
    settings = identity | {"smoothing": dyn.smoothing, "min_prominence": dyn.min_prominence}
    if done_is_valid(out_dir, STAGE) and read_json(out_dir / "done.json").get("settings") == settings:
        print(f"dynamics: {out_dir / 'done.json'} exists, its outputs verify and its settings match; nothing to do",
              flush=True)
        return read_json(out_dir / "done.json")
    # A stale marker must not outlive the outputs it vouches for while they are recomputed.
    (out_dir / "done.json").unlink(missing_ok=True)
    table = DynamicsTable(out_dir / "dynamics.csv", identity)
    if table.restarted:
        print(f"dynamics: {out_dir / 'dynamics.csv'} was computed with other metrics, probe batch or final "
              "checkpoint; starting it over", flush=True)
    todo = [c for c in ckpts if c.step not in table.steps]
    todo = sorted(todo, key=lambda c: (c.step != final.step, c.step))  # final first: CKA's reference
    device = resolve_device(dyn.device)
    train_log = read_train_log(paths.metrics_file(run_dir_p)) if "train_log" in needs else []
    wants = {"activations": bool(needs & {"activations", "reference"}), "attention": "attention" in needs,
             "gradients": "gradients" in needs}
    started = time.monotonic()
    print(f"dynamics: run {run_id}: {len(todo)} of {len(ckpts)} checkpoints to do, metrics "
          f"{', '.join(m.name for m in metrics)}, probe {tuple(batch.shape)} on {device}", flush=True)

    reference = None
    if "reference" in needs and todo and todo[0].step != final.step:
        # Resumed after the final checkpoint was committed: recompute its activations only.
        model, _ = load_model(final.path, device=device)
        ref = run_probe(model, batch, step=final.step, activations=True, attention=False, gradients=False)
        reference = {i: ref.acts[(i, RESIDUAL)] for i in range(ref.n_layers)}
        del model, ref

    with Progress("dynamics", total=len(todo), unit="ckpt", every_s=30) as bar:
        for n, info in enumerate(todo, 1):
            model, _ = load_model(info.path, device=device)
            # Weight-only metrics (norms, episodic accuracy) need no pass over the probe batch.
            data = (run_probe(model, batch, step=info.step, **wants) if any(wants.values())
                    else CheckpointData(step=info.step, model=model))
            if "reference" in needs and info.step == final.step:
                reference = {i: data.acts[(i, RESIDUAL)] for i in range(data.n_layers)}
            data.reference, data.train_log = reference, train_log
            rows = []
            for metric in metrics:
                for r in metric.fn(data):
                    rows.append((run_id, info.step, info.tokens, info.flops, r.layer, r.component, r.head, r.metric,
                                 float(r.value)))
            table.append(info.step, rows)
            data.release()
            del model, data
            bar.update(n, step=info.step, rows=len(rows))
            if preemption.requested() and n < len(todo):
                raise preemption.Preempted(f"dynamics preempted after step {info.step}; rerun to resume")
    if device == "cuda":
        torch.cuda.empty_cache()

    peaks = peaks_table(table.rows(), dyn.smoothing, dyn.min_prominence)
    _write_peaks(out_dir / "peaks.csv", peaks)
    seconds = time.monotonic() - started
    write_done(out_dir, STAGE, run_id, list(OUTPUTS),
               extra={"checkpoints": len(ckpts), "computed": len(todo), "seconds": round(seconds, 2),
                      "metrics": [m.name for m in metrics], "device": device, "probe_shape": list(batch.shape),
                      "settings": settings})
    print(f"dynamics: {len(todo)} checkpoints in {seconds:.1f}s"
          f"{f' ({seconds / len(todo):.2f}s each)' if todo else ''} -> {out_dir}", flush=True)
    return read_json(out_dir / "done.json")


def main(argv: list[str] | None = None) -> int:
    from metapretrain.launch.run import run_dir_data_main

    return run_dir_data_main(STAGE, "metapretrain.dynamics.stage:dynamics_run", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
