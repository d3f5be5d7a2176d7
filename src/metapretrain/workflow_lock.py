"""Snakemake's lock on a working directory, and whether a live driver still holds it.

A running driver writes `.snakemake/locks/<n>.input.lock` and `<n>.output.lock` (the files it reads
and writes) and deletes them when it ends. A driver killed hard (kill -9, the OOM killer, a lost
login node) leaves them behind, and every later driver there stops with "Directory cannot be locked"
until `snakemake --unlock`. The lock files name no process, but a running driver keeps its log
`.snakemake/log/<start time>.snakemake.log` open from start to end (dry runs neither lock nor log):
a process holding such a file open (seen in /proc/<pid>/fd) is a live driver of this directory, and
the log's name is the time it started (to the microsecond). A lock set is stale when no live driver
of the directory had started by the time it was written: a driver opens its log before it locks, and
a second driver may run at once on other targets.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROC = Path("/proc")
# A start time from /proc (ticks after a boot time of 1 s resolution) can be late by up to a second.
PROC_CLOCK_SLACK_S = 2.0


@dataclass
class Driver:
    pid: int
    started: float | None  # epoch seconds
    log: str
    slack_s: float = 0.0  # how late `started` may be


def _log_start(log: str) -> float | None:
    """Snakemake names its log by the local time it started: `2026-12-04T224825.690149.snakemake.log`."""
    import datetime as dt

    try:
        return dt.datetime.strptime(Path(log).name.removesuffix(".snakemake.log"), "%Y-%m-%dT%H%M%S.%f").timestamp()
    except ValueError:
        return None


@dataclass
class LockSet:
    number: int
    files: list[str]
    written: float  # epoch seconds (the lock files' mtime)
    paths: int  # files it locks
    stale: bool


@dataclass
class WorkflowLock:
    workdir: str
    sets: list[LockSet]
    drivers: list[Driver] = field(default_factory=list)
    processes_visible: bool = True  # False without /proc: whether a driver runs cannot be told

    @property
    def stale(self) -> bool:
        return any(s.stale for s in self.sets)

    def advice(self) -> str:
        where = f"{self.workdir}/.snakemake/locks"
        unlock = ("run `snakemake --unlock` there (with the same --profile, --configfile and -d), then the same "
                  "command again: SLURM jobs that are still live are reattached, not submitted twice, finished "
                  "stages are kept and the others resume from their checkpoints")
        if not self.processes_visible:
            return (f"Snakemake lock in {where} (cannot tell whether its driver still runs: no /proc). If no "
                    f"snakemake runs in {self.workdir}, {unlock}.")
        if self.stale:
            held = "" if not self.drivers else (
                f" (driver{'s' if len(self.drivers) > 1 else ''} "
                f"{', '.join(str(d.pid) for d in self.drivers)} started later and hold{'' if len(self.drivers) > 1 else 's'}"
                " their own)")
            return (f"stale Snakemake lock in {where}: the driver that wrote it is gone (killed?){held}, and the next "
                    f"snakemake there stops with 'Directory cannot be locked'. To continue, {unlock}.")
        pids = ", ".join(f"{d.pid} (since {time.strftime('%Y-%m-%d %H:%M', time.localtime(d.started))})"
                         if d.started else str(d.pid) for d in self.drivers)
        return (f"Snakemake is running in {self.workdir} (pid {pids}); a second driver there is refused by its lock. "
                f"Ctrl-C on it, or kill {self.drivers[0].pid}, leaves SLURM jobs running; rerunning reattaches to them.")

    def to_dict(self) -> dict:
        return asdict(self) | {"stale": self.stale, "advice": self.advice()}


def lock_sets(workdir: Path) -> list[tuple[int, list[Path]]]:
    locks = workdir / ".snakemake" / "locks"
    groups: dict[int, list[Path]] = {}
    for f in sorted(locks.glob("*.lock")) if locks.is_dir() else []:
        number, _, kind = f.name.partition(".")
        if number.isdigit() and kind in ("input.lock", "output.lock"):
            groups.setdefault(int(number), []).append(f)
    return sorted(groups.items())


def _boot_time() -> float | None:
    try:
        for line in (PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _start_time(pid: int, boot: float | None) -> float | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK") if boot is not None else None


def live_drivers(workdir: Path) -> list[Driver] | None:
    """Processes that hold a Snakemake log of `workdir` open; None when processes cannot be seen."""
    if not (PROC / "self" / "fd").is_dir():
        return None
    logs = (workdir / ".snakemake" / "log").resolve()
    boot = _boot_time()
    found = []
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"{entry.path}/fd")
        except OSError:  # another user's process, or it just ended
            continue
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.endswith(".snakemake.log") and Path(target).parent == logs:
                    pid, started = int(entry.name), _log_start(target)
                    driver = Driver(pid=pid, started=started, log=target) if started is not None else \
                        Driver(pid=pid, started=_start_time(pid, boot), log=target, slack_s=PROC_CLOCK_SLACK_S)
                    found.append(driver)
                    break
    return found


def inspect(workdir: str | Path = ".") -> WorkflowLock | None:
    """The lock Snakemake left in `workdir` and who holds it; None when there is no lock."""
    workdir = Path(workdir).resolve()
    groups = lock_sets(workdir)
    if not groups:
        return None
    drivers = live_drivers(workdir)
    sets = []
    for number, files in groups:
        try:
            written = max(f.stat().st_mtime for f in files)
            n = sum(1 for f in files if f.name.endswith(".output.lock") for line in f.read_text().splitlines() if line)
        except OSError:  # removed while we looked: the driver just ended
            continue
        held = drivers is None or any(d.started is None or d.started <= written + d.slack_s for d in drivers)
        sets.append(LockSet(number=number, files=[str(f) for f in files], written=written, paths=n, stale=not held))
    if not sets:
        return None
    return WorkflowLock(workdir=str(workdir), sets=sets, drivers=drivers or [], processes_visible=drivers is not None)
