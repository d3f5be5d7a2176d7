"""Fault injection on real pretraining: SIGKILLs at random points, damaged checkpoints, a full disk,
NaN/inf losses and an unreachable W&B. Each test checks that nothing already trained is lost.

Runs go through the real `metapretrain pretrain` CLI in a subprocess (launcher `debug`, so the
job runs inside that process) with the tests' tiny run (helpers.tiny_run, changed by FAULTS below)
and a checkpoint after every update.
The child wrapper `_CHILD` adds test-only hooks, switched on by environment variables:

* `FAULTS_CKPT_SLOW_S`: every `torch.save` (the optimizer state of a checkpoint) prints
  `CKPT-WRITE` and sleeps this long before and after writing, so that kills land inside
  checkpoint writes often (a real write of this tiny model takes milliseconds);
* `FAULTS_FILL_AT` / `FAULTS_FILL_FILE`: after that update, fill the file system holding
  `FAULTS_FILL_FILE` up to `FAULTS_FILL_LEAVE` bytes;
* every update prints `STEP <n>`.

The kill points come from `random.Random(FAULTS_SEED)` (default 1234); the machine's timing
varies them further from run to run, and every invariant must hold wherever a kill lands.
"""

from __future__ import annotations

import errno
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import helpers
from helpers import child_env, comparable, records
from metapretrain import checkpoint as ckpt
from metapretrain import paths
from metapretrain.config.overrides import deep_merge
from metapretrain.io import done_is_valid
from metapretrain.metrics_log import read_records
from metapretrain.train import loop as loop_mod
from metapretrain.train import steps as steps_mod
from metapretrain.train.stage import train_run

BUDGET = 40
FAULTS = {"train": {"budget": {"value": BUDGET}, "eval_every": 5, "eval_batches": 1,
                    "checkpoint": {"every": 1, "log_spaced": 0}}}

_CHILD = r"""
import os, shutil, sys, time
import torch

slow = float(os.environ.get("FAULTS_CKPT_SLOW_S", "0"))
if slow:
    _save = torch.save

    def save(*args, **kwargs):
        print("CKPT-WRITE", flush=True)
        time.sleep(slow)
        _save(*args, **kwargs)
        time.sleep(slow)

    torch.save = save

from metapretrain.train import loop

_update = loop.Trainer.update


def update(self):
    out = _update(self)
    print(f"STEP {self.counters.step}", flush=True)
    if os.environ.get("FAULTS_FILL_AT") == str(self.counters.step):
        filler = os.environ["FAULTS_FILL_FILE"]
        free = shutil.disk_usage(os.path.dirname(filler)).free - int(os.environ["FAULTS_FILL_LEAVE"])
        with open(filler, "wb") as fh:
            fh.write(b"\0" * max(free, 0))
        print(f"FILLED {shutil.disk_usage(os.path.dirname(filler)).free}", flush=True)
    return out


loop.Trainer.update = update
from metapretrain.cli import main

sys.exit(main(["pretrain", "--run-dir", sys.argv[1], "--data", sys.argv[2]]))
"""


def make_run(root: Path, name: str, **over) -> Path:
    return helpers.make_run(root, name, "faults", **deep_merge(FAULTS, over))


def faults_env(**extra) -> dict:
    return child_env(**{"WANDB_MODE": "disabled", **extra})


def run_child(run: Path, tok_dir: Path, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CHILD, str(run), str(tok_dir)], env=faults_env(**env),
                          capture_output=True, text=True, timeout=timeout)


class Child:
    """A pretrain subprocess whose output lines are read by a thread, so waiting never blocks."""

    def __init__(self, run: Path, tok_dir: Path, **env):
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(run), str(tok_dir)], env=faults_env(**env),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix: str, count: int, timeout: float = 120) -> bool:
        """Wait for the `count`-th output line starting with `prefix`; False if the process ended first."""
        seen, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return False
            self.output.append(line)
            if line.startswith(prefix):
                seen += 1
                if seen == count:
                    return True
        raise TimeoutError(f"no {count}x {prefix!r} within {timeout}s; output:\n" + "\n".join(self.output[-30:]))

    def kill(self) -> bool:
        """SIGKILL; True if the process was still running (a kill, not a finished run)."""
        alive = self.proc.poll() is None
        if alive:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        return alive and self.proc.returncode == -signal.SIGKILL


def weight_files(run: Path) -> dict[str, bytes]:
    """model.safetensors of every checkpoint, by directory name."""
    return {p.name: (p / ckpt.MODEL_FILE).read_bytes() for p in sorted(paths.checkpoints_dir(run).glob("step_*"))}


def debris(run: Path) -> list[Path]:
    root = paths.checkpoints_dir(run)
    return sorted(p for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


def bytes_lost(reference: Path, run: Path) -> int:
    """Bytes of the reference run's weight files that `run` lacks or holds differently."""
    ref, got = weight_files(reference), weight_files(run)
    return sum(len(data) for name, data in ref.items() if got.get(name) != data)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tok_dir) -> Path:
    """The uninterrupted run every faulted run must reproduce, made by the same child process."""
    run = make_run(tmp_path_factory.mktemp("reference"), "ref")
    proc = run_child(run, tok_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run


def assert_same_run(run: Path, reference: Path) -> None:
    assert done_is_valid(paths.pretrain_dir(run), "pretrain")
    assert comparable(records(run)) == comparable(records(reference))
    assert [r["loss"] for r in records(run, "train")] == [r["loss"] for r in records(reference, "train")]
    assert bytes_lost(reference, run) == 0
    assert weight_files(run).keys() == weight_files(reference).keys()


# ------------------------------------------------------------------------------------------- SIGKILL
KILLS = 12


@pytest.mark.slow
def test_random_sigkills_lose_nothing(tmp_path, tok_dir, reference):
    """12 SIGKILLs at random points (start-up, mid-update, inside checkpoint writes), a restart after each:
    no half-written checkpoint is ever complete-looking, progress never goes back, and the finished run's
    metrics and every checkpoint's weights are bit-identical to the uninterrupted run's."""
    rng = random.Random(int(os.environ.get("FAULTS_SEED", "1234")))
    run = make_run(tmp_path, "ref")  # same run id as the reference, so metrics records match exactly
    kills = in_write = 0
    newest, earlier = -1, []
    while kills < KILLS:
        child = Child(run, tok_dir, FAULTS_CKPT_SLOW_S=0.03)
        mode = kills % 3
        if mode == 0:  # inside a checkpoint write: the state file is being written, the manifest is not yet
            reached = child.wait_for("CKPT-WRITE", rng.randint(1, 3))
            time.sleep(rng.uniform(0.0, 0.06))
        elif mode == 1:  # somewhere in the update loop
            reached = child.wait_for("STEP", rng.randint(1, 3))
            time.sleep(rng.uniform(0.0, 0.08))
        else:  # during start-up: imports, config, resume, the launcher's job record
            time.sleep(rng.uniform(0.2, 2.0))
            reached = child.proc.poll() is None
        assert reached, "the run finished before it could be killed:\n" + "\n".join(child.output[-20:])
        assert child.kill()
        kills += 1
        left = debris(run)
        in_write += any(p.name.endswith(".tmp") for p in set(left) - set(earlier))  # a new partial write
        earlier = left
        # Invariants after every kill: every step_* directory is a complete, verified checkpoint ...
        for p in paths.checkpoints_dir(run).glob("step_*") if paths.checkpoints_dir(run).is_dir() else []:
            ckpt.verify_checkpoint(p)
        # ... debris is never listed as a checkpoint, and the newest checkpoint never goes back.
        listed = ckpt.list_checkpoints(run, verify=True)
        assert not {c.path for c in listed} & set(left)
        latest = ckpt.latest_checkpoint(run)
        step = latest.step if latest else -1
        assert step >= newest, f"kill {kills}: newest checkpoint went back from {newest} to {step}"
        newest = step
        read_records(paths.metrics_file(run))  # parseable (a torn last line is tolerated)
        assert not (paths.pretrain_dir(run) / "done.json").exists()
    proc = run_child(run, tok_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_same_run(run, reference)
    assert debris(run) == []  # the restarted run removed what the killed writes left
    assert in_write >= 2, f"only {in_write} kills landed inside a checkpoint write"
    print(f"\nFAULTS kills survived: {kills}, inside a checkpoint write: {in_write}, "
          f"bytes lost: {bytes_lost(reference, run)}")


# -------------------------------------------------------------------------------- damaged checkpoints
def _truncate(f: Path, rng: random.Random) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: rng.randrange(0, len(data))])


def _bitflip(f: Path, rng: random.Random) -> None:
    data = bytearray(f.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    f.write_bytes(bytes(data))


def _delete(f: Path, rng: random.Random) -> None:
    f.unlink()


DAMAGE = [
    ("truncate-weights", ckpt.MODEL_FILE, _truncate, 1),
    ("bitflip-weights", ckpt.MODEL_FILE, _bitflip, 1),
    ("truncate-state", ckpt.STATE_FILE, _truncate, 1),
    ("bitflip-state", ckpt.STATE_FILE, _bitflip, 1),
    ("bitflip-config", ckpt.CONFIG_FILE, _bitflip, 1),
    ("bitflip-manifest", ckpt.MANIFEST, _bitflip, 1),
    ("missing-manifest", ckpt.MANIFEST, _delete, 1),
    ("missing-state", ckpt.STATE_FILE, _delete, 1),
    ("two-newest-bitflipped", ckpt.MODEL_FILE, _bitflip, 2),
]
DETECTED: list[str] = []


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory, tok_dir) -> Path:
    run = make_run(tmp_path_factory.mktemp("short"), "short", train={"budget": {"value": 6}})
    train_run(str(run), str(tok_dir))
    return run


@pytest.mark.parametrize(("case", "name", "damage", "depth"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, tok_dir, short_reference, caplog,
                                                                  capsys, case, name, damage, depth):
    run = tmp_path / "short"
    shutil.copytree(short_reference, run)
    (paths.pretrain_dir(run) / "done.json").unlink()  # as if killed before the stage finished
    rng = random.Random(case)
    damaged = [paths.checkpoints_dir(run) / paths.checkpoint_name(6 - i) for i in range(depth)]
    for d in damaged:
        damage(d / name, rng)
        with pytest.raises(ckpt.CheckpointError, match=str(d)):
            ckpt.verify_checkpoint(d)
    caplog.set_level("WARNING", logger="metapretrain.checkpoint.reader")
    assert ckpt.latest_checkpoint(run).step == 6 - depth  # the previous complete one
    train_run(str(run), str(tok_dir))
    warned = caplog.text + capsys.readouterr().out
    for d in damaged:
        assert str(d) in warned, warned
    assert f"resuming from {paths.checkpoint_name(6 - depth)}" in warned
    assert comparable(records(run)) == comparable(records(short_reference))
    assert bytes_lost(short_reference, run) == 0  # the damaged steps were recomputed bit for bit
    for d in damaged:
        ckpt.verify_checkpoint(d)
    DETECTED.append(case)


def test_damaged_final_checkpoint_of_a_finished_run_is_refused(tmp_path, tok_dir, short_reference):
    """Fine-tuning must not quietly fall back to an older checkpoint of a finished run."""
    run = tmp_path / "short"
    shutil.copytree(short_reference, run)
    assert ckpt.final_checkpoint(run).step == 6
    final = paths.checkpoints_dir(run) / paths.checkpoint_name(6)
    _bitflip(final / ckpt.MODEL_FILE, random.Random(0))
    with pytest.raises(ckpt.CheckpointError, match=f"{final / ckpt.MODEL_FILE}: checksum mismatch.*done.json"):
        ckpt.final_checkpoint(run)
    (paths.pretrain_dir(run) / "done.json").unlink()  # what the message says to do
    train_run(str(run), str(tok_dir))
    assert ckpt.final_checkpoint(run).step == 6 and bytes_lost(short_reference, run) == 0


# ---------------------------------------------------------------------------------------- disk full
@pytest.fixture
def small_fs(tmp_path):
    """A 32 MiB tmpfs (room for the 41 checkpoints of a run; needs root and mount); skips where it cannot be mounted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_a_real_file_system(small_fs, tok_dir, reference):
    """The file system fills up during update 3: the run stops with an error naming checkpoint 3 and the
    full disk, checkpoint 2 stays complete and loadable, and once space is freed the run finishes exactly
    like the uninterrupted one."""
    run = make_run(small_fs, "ref")
    filler = small_fs / "filler"
    proc = run_child(run, tok_dir, FAULTS_FILL_AT=3, FAULTS_FILL_FILE=filler, FAULTS_FILL_LEAVE=64 * 1024)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "FILLED" in out
    step3 = paths.checkpoints_dir(run) / paths.checkpoint_name(3)
    assert f"{step3}: cannot write the checkpoint (disk full" in out, out[-3000:]
    assert "previous checkpoints are intact" in out
    assert not step3.exists() and debris(run) == []  # nothing half-written left behind
    last = ckpt.latest_checkpoint(run)
    assert last.step == 2
    model = ckpt.load_model(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert weight_files(run)["step_00000002"] == weight_files(reference)["step_00000002"]
    filler.unlink()
    proc = run_child(run, tok_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_same_run(run, reference)


def test_disk_full_injected_enospc(tmp_path, tok_dir, monkeypatch):
    """Where no file system can be mounted: an OSError(ENOSPC) from the state write has the same outcome."""
    run = make_run(tmp_path, "enospc", train={"budget": {"value": 5}})
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj["counters"]["step"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(ckpt.CheckpointError) as exc:
        train_run(str(run), str(tok_dir))
    step3 = paths.checkpoints_dir(run) / paths.checkpoint_name(3)
    assert str(exc.value).startswith(f"{step3}: cannot write the checkpoint (disk full")
    assert not step3.exists() and debris(run) == []
    assert ckpt.latest_checkpoint(run).step == 2
    ckpt.load_model(ckpt.latest_checkpoint(run))
    monkeypatch.setattr(torch, "save", real_save)
    train_run(str(run), str(tok_dir))
    assert [c.step for c in ckpt.list_checkpoints(run, verify=True)] == [0, 1, 2, 3, 4, 5]


def test_full_disk_under_metrics_names_the_file(tmp_path):
    """A metrics record that cannot be written (here: /dev/full, which answers every write with ENOSPC)
    stops the run with an error naming metrics.jsonl, not a bare "No space left on device"."""
    from metapretrain.train.metrics import MetricsWriter

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    writer = MetricsWriter("/dev/full")
    with pytest.raises(OSError, match="/dev/full: cannot append a metrics record") as exc:
        writer.write({"kind": "train", "step": 1})
    assert exc.value.errno == errno.ENOSPC


# ------------------------------------------------------------------------------------ NaN / inf loss
class _PoisonAt(steps_mod.NextTokenStep):
    """Next-token steps; the third update's loss is inf (transient) or its weights become NaN (persistent)."""

    persistent = False

    def run(self, scale, gen):
        third = self.ctx.batches.index // self.ctx.batches.batch_size == 2
        if third and self.persistent:
            with torch.no_grad():
                self.ctx.raw_model.norm.weight.fill_(float("nan"))
        out = super().run(scale, gen)
        if third and not self.persistent:
            for p in self.ctx.raw_model.parameters():
                p.grad.fill_(float("inf"))
            out = steps_mod.StepOutput(loss=float("inf"), tokens=out.tokens, flops=out.flops, metrics=out.metrics)
        return out


class _PersistentPoison(_PoisonAt):
    persistent = True


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        x = list(x.values())
    return [t for v in x for t in _tensors(v)] if isinstance(x, (list, tuple)) else []


def _all_finite(run: Path) -> int:
    """Check every tensor of every checkpoint (weights, modules, optimizer state); returns how many."""
    n = 0
    for info in ckpt.list_checkpoints(run, verify=True):
        tensors = list(ckpt.load_tensors(info.path).values())
        tensors += [v for sd in ckpt.load_modules(info.path).values() for v in sd.values()]
        tensors += _tensors(ckpt.load_state(info.path))
        bad = [t for t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]
        assert not bad, f"{info.path}: non-finite values in a checkpoint"
        n += len(tensors)
    return n


@pytest.mark.parametrize("action", ["skip", "stop"])
def test_inf_loss_skipped_or_stopped_never_checkpointed(tmp_path, tok_dir, monkeypatch, capsys, action):
    monkeypatch.setitem(steps_mod._STEP_KINDS, "next_token", _PoisonAt)
    run = make_run(tmp_path, action, train={"on_nonfinite": action, "budget": {"value": 5}})
    if action == "stop":
        with pytest.raises(loop_mod.NonFiniteError, match="non-finite loss or gradient at update 3.*on_nonfinite"):
            train_run(str(run), str(tok_dir))
        assert ckpt.latest_checkpoint(run).step == 2
    else:
        train_run(str(run), str(tok_dir))
        assert "WARNING: update 3 skipped" in capsys.readouterr().out
        w2, w3 = (ckpt.load_tensors(paths.checkpoints_dir(run) / paths.checkpoint_name(s)) for s in (2, 3))
        assert all(torch.equal(w2[k], w3[k]) for k in w2)  # the update was dropped
        assert ckpt.latest_checkpoint(run).step == 5
    bad = records(run, "nonfinite")
    assert [(r["step"], r["action"], r["losses"]) for r in bad] == [(3, action, ["inf"])]
    assert _all_finite(run) > 0


def test_nan_weights_are_never_checkpointed(tmp_path, tok_dir, monkeypatch):
    """Weights that turn NaN (skipping cannot help) stop the run at the next checkpoint, which is refused."""
    monkeypatch.setitem(steps_mod._STEP_KINDS, "next_token", _PersistentPoison)
    run = make_run(tmp_path, "nan", train={"on_nonfinite": "skip", "budget": {"value": 5}})
    with pytest.raises(loop_mod.NonFiniteError, match="refusing to checkpoint step 3: non-finite weights in norm.weight"):
        train_run(str(run), str(tok_dir))
    assert ckpt.latest_checkpoint(run).step == 2
    assert _all_finite(run) > 0


# -------------------------------------------------------------------------------------- W&B failing
@pytest.mark.slow
def test_unreachable_wandb_with_a_bad_key_never_stops_training(tmp_path, tok_dir, reference):
    pytest.importorskip("wandb")
    run = make_run(tmp_path, "ref", wandb={"mode": "online"})
    proc = run_child(run, tok_dir, WANDB_MODE="online", WANDB_API_KEY="bogus" + "0" * 35,
                     WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT=5, WANDB_DIR=tmp_path / "wandb")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "W&B init failed" in out and "continuing without W&B" in out
    assert_same_run(run, reference)


def test_wandb_log_failing_mid_run_never_stops_training(tmp_path, tok_dir, monkeypatch):
    """W&B starts, then every log call raises: one warning, and metrics.jsonl still has every record."""
    from metapretrain.train import metrics as metrics_mod

    calls = []

    class Broken:
        def log(self, data, step):
            calls.append(step)
            raise ConnectionError("W&B went away")

        def finish(self):
            raise ConnectionError("W&B went away")

    def init(self, **kwargs):
        self.run, self.mode, self._warned = Broken(), "online", False

    monkeypatch.setattr(metrics_mod.WandbLogger, "__init__", init)
    run = make_run(tmp_path, "wb", train={"budget": {"value": 5}})
    with pytest.warns(UserWarning, match="W&B log failed"):
        train_run(str(run), str(tok_dir))
    assert calls == [0]  # the first failure switches W&B off; training goes on
    assert [r["step"] for r in records(run, "train")] == [1, 2, 3, 4, 5]
    assert done_is_valid(paths.pretrain_dir(run), "pretrain")
