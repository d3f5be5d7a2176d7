"""The job side of a launch: what runs inside the submitit job.

Time limits and preemption. SLURM sends SIGUSR2 `signal_delay_s` before the
limit; submitit's handler then calls `checkpoint()`, requeues the job and
exits, all inside the signal handler, i.e. at whatever bytecode the training
loop happened to be executing. Saving there is unsafe, and the loop cannot
reach a safe point while a handler runs in its own thread. So while the
target runs, `_PreemptionGuard` swaps submitit's handler for one that only
calls `preemption.request()`: the loop checkpoints at its next optimizer-step
boundary and raises `Preempted`, and `StageJob` then hands over to
submitit's handler, which requeues with this (picklable, stateless) job; the
requeued job calls the resumable target again. A target that does not answer
within `grace_s` (it does not poll, or a step is too long) is handed over
all the same and resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import os
import signal
import socket
import sys
import threading

from submitit.helpers import Checkpointable

from metapretrain.launch import preemption


def _global_rank() -> int:
    """This task's rank in a multi-task submitit job (0 outside one)."""
    try:
        import submitit

        return int(submitit.JobEnvironment().global_rank)
    except Exception:  # not inside a submitit job, or no rank information
        return 0


class RequeueLimitReached(RuntimeError):
    """The job was asked to stop again after `launch.max_requeues` requeues."""


def resolve_target(target: str):
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


class StageJob(Checkpointable):
    def __init__(self, *, stage: str, run_dir: str, log: str, target: str, kwargs: dict, launcher: str,
                 max_requeues: int, grace_s: float, cwd: str, cuda_visible_devices: str | None,
                 threads: int | None = None):
        self.stage, self.run_dir, self.log, self.target, self.kwargs = stage, run_dir, log, target, kwargs
        self.launcher, self.max_requeues, self.grace_s, self.cwd = launcher, max_requeues, grace_s, cwd
        self.cuda_visible_devices = cuda_visible_devices
        self.threads = threads  # None: torch's default (every core of the machine)
        self.requeues = 0  # travels in the pickle that submitit dumps at each requeue

    def __call__(self):
        os.chdir(self.cwd)
        if self.launcher == "local":
            # submitit's local executor hides every GPU unless told how many; give the job the caller's view.
            if self.cuda_visible_devices is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        if self.launcher != "debug":
            _redirect_output(self.log)
        if self.threads:
            set_threads(self.threads)
        self._header()
        func = resolve_target(self.target)
        preemption.clear()
        guard = _PreemptionGuard(self.grace_s) if self.launcher != "debug" else None
        if guard is not None and not guard.install():
            guard = None
        try:
            return func(**self.kwargs)
        except preemption.Preempted:
            if guard is None:
                raise
            print(f"[launch] {self.stage}: state saved after the stop signal", flush=True)
            self._check_limit()
            if _global_rank() != 0:
                # In a multi-task job only rank 0's handler requeues (the whole job); the other
                # ranks' state is already on disk (rank 0 wrote the checkpoint), so they just end.
                return None
            guard.hand_over()  # submitit: checkpoint() -> requeue -> exit
            raise RuntimeError("submitit's signal handler returned without requeueing") from None
        finally:
            if guard is not None:
                guard.uninstall()

    def checkpoint(self, *args, **kwargs):
        """Called by submitit's handler: the state is on disk, so requeue this same job."""
        self._check_limit()
        self.requeues += 1
        print(f"[launch] {self.stage}: requeueing (requeue {self.requeues} of at most {self.max_requeues})",
              flush=True)
        return super().checkpoint(*args, **kwargs)

    def _check_limit(self) -> None:
        if self.requeues >= self.max_requeues:
            raise RequeueLimitReached(
                f"{self.stage} was stopped (time limit or preemption) after {self.requeues} requeues and is not "
                f"requeued again (launch.max_requeues={self.max_requeues}); its last checkpoint is kept: rerun to "
                f"continue, or raise launch.slurm.time_min / launch.max_requeues")

    def _header(self) -> None:
        env = os.environ
        if env.get("SLURM_JOB_ID"):
            where = f"SLURM job {env['SLURM_JOB_ID']} (restart count {env.get('SLURM_RESTART_COUNT', '0')})"
        elif env.get("SUBMITIT_LOCAL_JOB_ID"):
            where = f"local job {env['SUBMITIT_LOCAL_JOB_ID']}"
        else:
            where = f"in-process (pid {os.getpid()})"
        now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        line = (f"===== {self.stage} attempt {self.requeues + 1} | {where} | host {socket.gethostname()} | "
                f"threads {_threads_text()} | {now} =====")
        print(line, flush=True)
        if self.launcher == "debug" and not _is_same_file(sys.stdout, self.log):
            with open(self.log, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")


def set_threads(n: int) -> None:
    """Compute with `n` CPU threads: torch's intra-op pool, its inter-op pool while it can still be set,
    and OMP_NUM_THREADS for what reads it later (child processes, OpenBLAS at import)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # settable once, before the process's first inter-op parallel work
        torch.set_num_interop_threads(n)


def _threads_text() -> str:
    torch = sys.modules.get("torch")
    if torch is None:
        return "torch default"
    return f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op"


def _is_same_file(stream, path: str) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _redirect_output(path: str) -> None:
    """Send this process's stdout and stderr (file descriptors, so child processes too) to `path`, appending."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask decides, as for any file
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class _PreemptionGuard:
    """Turns submitit's stop signal into `preemption.request()`, with submitit's own handler as fallback."""

    def __init__(self, grace_s: float):
        import submitit

        self.grace_s = grace_s
        self.signum = submitit.JobEnvironment._usr_sig()
        self.submitit_handler = None
        self.fallback = False
        self.finished = False
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        handler = signal.getsignal(self.signum)
        if not callable(handler):  # not inside a submitit job: nothing to hand over to
            return False
        self.submitit_handler = handler
        signal.signal(self.signum, self._on_signal)
        return True

    def uninstall(self) -> None:
        with self.lock:
            self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        if self.submitit_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self.submitit_handler)

    def _on_signal(self, signum, frame) -> None:
        if self.fallback:
            self.submitit_handler(signum, frame)
            return
        if preemption.requested():
            return
        name = signal.Signals(signum).name
        print(f"[launch] caught {name} (time limit or preemption): checkpointing at the next safe point "
              f"(at most {self.grace_s:.0f}s)", flush=True)
        preemption.request()
        self.timer = threading.Timer(self.grace_s, self._give_up_waiting)
        self.timer.daemon = True
        self.timer.start()

    def _give_up_waiting(self) -> None:
        # Runs in the timer thread; Python handlers run in the main thread, so re-raise the signal there.
        with self.lock:
            if self.finished:
                return
            self.fallback = True
        print(f"[launch] no checkpoint within {self.grace_s:.0f}s of the stop signal: requeueing from the last "
              f"saved checkpoint", flush=True)
        os.kill(os.getpid(), self.signum)

    def hand_over(self) -> None:
        with self.lock:
            self.finished = True
        if self.timer is not None:
            self.timer.cancel()
        self.submitit_handler(self.signum, None)
