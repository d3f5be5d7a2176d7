"""Cooperative preemption: the launcher asks, the training loop checkpoints at a safe point.

The loop calls `requested()` at every optimizer-step boundary; when it is
true, the loop writes a checkpoint and raises `Preempted`. How the request
arrives (SIGUSR2 from SLURM before a time limit, SIGTERM on preemption) is
the launcher's business (metapretrain.launch).
"""

from __future__ import annotations

import threading

_requested = threading.Event()


class Preempted(Exception):
    """Raised by a stage after it saved its state because preemption was requested."""


def request() -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def clear() -> None:
    _requested.clear()
