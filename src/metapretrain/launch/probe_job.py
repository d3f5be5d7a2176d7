"""A tiny resumable job for checking a launcher end to end (the SLURM tests use it).

`count(state_file, steps)` counts to `steps`, one step every `step_s`
seconds, saving its state atomically after every step. It polls
`preemption.requested()` like a training loop and raises `Preempted` after
saving, so a requeued or rerun job continues where it stopped; the result
(a digest chained over every step) is the same however often it was
interrupted. It also records what the job saw of the machine (SLURM job id,
restart count, visible GPUs, torch's threads), so a test can check the allocation.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from metapretrain.io import read_json, write_json
from metapretrain.launch import preemption


def count(state_file: str, steps: int, step_s: float = 0.5) -> dict:
    path = Path(state_file)
    state = read_json(path) if path.exists() else {"step": 0, "digest": "", "attempts": []}
    torch = sys.modules.get("torch")  # imported by the job when it was given a thread count
    state["attempts"].append({
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "start_step": state["step"],
        "threads": [torch.get_num_threads(), torch.get_num_interop_threads()] if torch else None,
    })
    write_json(path, state)
    print(f"[probe] attempt {len(state['attempts'])} starts at step {state['step']} of {steps}", flush=True)
    while state["step"] < steps:
        if preemption.requested():
            print(f"[probe] stop requested: saved at step {state['step']}", flush=True)
            raise preemption.Preempted()
        time.sleep(step_s)
        state["step"] += 1
        state["digest"] = hashlib.sha256(f"{state['digest']}:{state['step']}".encode()).hexdigest()
        write_json(path, state)
    print(f"[probe] done at step {state['step']}", flush=True)
    return {"step": state["step"], "digest": state["digest"], "attempts": len(state["attempts"])}


def expected_digest(steps: int) -> str:
    """The digest an uninterrupted `count(..., steps)` ends with."""
    digest = ""
    for step in range(1, steps + 1):
        digest = hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()
    return digest
