"""Every data file a grid reads, checked before compute starts, and fetched into the download cache.

`experiment_plan(exp)` lists what the stages will read: the corpus files the
`corpus.sources` globs name, a pretrained `tokenizer.path`, and for fine-tuning
the UNER files of every `finetune.train_sets` entry (train, dev, test) plus every
test set it evaluates on (`finetune.extra_train` files too). A file missing from
the download cache that the catalogue can fetch is fine (it will be fetched); a
file missing from a mirror or a configured root is a `DataError` naming the key,
the value and, through `key_line`, the experiment file's line.

`fetch(plan)` downloads what is missing into the cache (resumable, checksummed,
atomic; one line per file saying what, from where and how large; a progress bar)
and derives the UD corpus files from the UNER files. It holds a lock on the cache,
so parallel jobs never write the same file. Only the DAG's first rule (local, see
workflow/rules/data.smk) and `metapretrain data fetch` call it; compute jobs never
download, as SLURM nodes may have no internet.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from metapretrain.data import catalogue
from metapretrain.data.catalogue import Derived, Entry, Remote
from metapretrain.data.errors import DataError
from metapretrain.data.identity import derived_record, file_sha256, source_files
from metapretrain.data.location import DATA_ENV, DataLocation, download_base, locate_data, resolve

LOCK_FILE = ".fetch.lock"


@dataclass(frozen=True)
class Item:
    path: Path  # where a stage reads it
    root: Path  # the data root it was resolved under
    entry: Entry | None  # what fetches it, when the root is the download cache
    key: str  # the config key that asks for it
    value: str | None = None  # the entry of that key naming it (pattern, train set, treebank)


def intact(path: Path, entry: Entry | None) -> bool:
    """Present, and matching the catalogue's checksum where it pins one."""
    if not path.is_file():
        return False
    if isinstance(entry, Remote):
        if entry.sha256:
            return file_sha256(path) == entry.sha256
        from metapretrain.data.download import git_blob_id

        return git_blob_id(path) == entry.git_blob
    if isinstance(entry, Derived) and entry.sha256:
        return file_sha256(path) == entry.sha256
    return True


@dataclass
class Plan:
    items: dict[Path, Item] = field(default_factory=dict)
    locations: dict[Path, DataLocation] = field(default_factory=dict)
    problems: list[DataError] = field(default_factory=list)
    base_url: str | None = None

    def add(self, location: DataLocation, items: list[Item], problems: list[DataError]) -> None:
        self.locations.setdefault(location.root, location)
        for item in items:
            self.items.setdefault(item.path, item)
        for p in problems:
            if str(p) not in {str(q) for q in self.problems}:
                self.problems.append(p)

    def to_make(self) -> list[Item]:
        """Catalogue items of the download cache that are absent or fail their checksum."""
        return [i for i in self.items.values() if i.entry is not None and not intact(i.path, i.entry)]

    def downloads(self) -> list[tuple[Remote, Path]]:
        """The remote files the items to make are made from, and where each goes; each once."""
        out: dict[Path, Remote] = {}
        for item in self.to_make():
            for remote in catalogue.downloads_for(item.entry):
                dest = item.root / remote.rel
                if dest not in out and not intact(dest, remote):
                    out[dest] = remote
        return [(r, d) for d, r in sorted(out.items())]

    def summary(self) -> str:
        """One line per data root: what is there and what will be fetched (for `grid validate`, `data check`)."""
        lines = []
        todo = self.downloads()
        for root, loc in sorted(self.locations.items()):
            items = [i for i in self.items.values() if i.root == root]
            present = sum(i.path.is_file() for i in items)
            line = f"data: {present} of {len(items)} files present under {root} ({loc.source})"
            mine = [(r, d) for r, d in todo if d.is_relative_to(root)]
            if mine:
                known = sum(r.size or 0 for r, _ in mine)
                unknown = sum(r.size is None for r, _ in mine)
                size = _mb(known) + (f" + {unknown} of unknown size" if unknown else "")
                derived = sum(isinstance(i.entry, Derived) for i in self.to_make() if i.root == root)
                line += (f"; `metapretrain data fetch` (or the DAG's first rule) will download {len(mine)} files "
                         f"({size}) from {self.base_url or catalogue.GITHUB_RAW}"
                         + (f" and derive {derived} corpus files from UNER train files" if derived else ""))
            lines.append(line)
        return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------- what a run reads


def corpus_items(config: dict) -> tuple[DataLocation, list[Item], list[DataError]]:
    """The corpus files (and pretrained tokenizer) a tokenize config reads."""
    location = locate_data(config)
    root = location.root
    items, problems = [], []
    for source in config["corpus"]["sources"]:
        if source["type"] != "files":
            continue  # a Hugging Face dataset is checked when it is streamed
        for pattern in source["paths"]:
            try:
                found = source_files(pattern, location)
            except DataError as exc:
                problems.append(exc)
                continue
            items += [Item(path, root, entry, "corpus.sources", pattern) for path, entry in found]
    tok = config["tokenizer"]
    if tok["kind"] == "pretrained" and tok.get("path"):
        path = resolve(tok["path"], root)
        if path.is_file():
            items.append(Item(path, root, None, "tokenizer.path", tok["path"]))
        else:
            problems.append(DataError(f"pretrained tokenizer {path} not found (a relative path is under the data "
                                      f"root {root}, {location.source})", key="tokenizer.path", value=tok["path"]))
    return location, items, problems


def uner_items(config: dict, train_set: str) -> tuple[DataLocation, list[Item], list[DataError]]:
    """The UNER files a finetune job on `train_set` reads: its train/dev/test and every test set."""
    from metapretrain.data.uner import UnerFormatError, discover

    location = locate_data(config)
    root = location.root
    ft = config["finetune"]
    uner_dir = resolve(ft["data_dir"], root)
    extra = {tb: resolve(p, root) for tb, p in (ft.get("extra_train") or {}).items()}
    items, problems = [], []
    for tb, path in extra.items():
        if path.is_file():
            items.append(Item(path, root, None, "finetune.extra_train", tb))
        else:
            problems.append(DataError(f"the extra train file of {tb}, {path}, not found", key="finetune.extra_train",
                                      value=tb))
    local: dict[str, set[str]] = {}
    if uner_dir.is_dir():
        with contextlib.suppress(FileNotFoundError, UnerFormatError):  # empty yet, or reported by the stage itself
            for tb, splits in discover(uner_dir).items():
                local[tb] = set(splits)
                items += [Item(f.path, root, None, "finetune.train_sets", train_set) for split, f in splits.items()
                          if split == "test" or train_set in (tb, "all")]
    # The catalogue fills the download cache's uner/ directory, not a directory of the user's own.
    fetchable = location.fetchable and uner_dir == root / "uner"
    with_train = {tb for tb, splits in local.items() if "train" in splits} | set(extra)
    if fetchable:
        for f in catalogue.UNER:
            _, tb, name = f.rel.split("/")
            official_train = name.endswith("-train.iob2")
            if official_train:
                with_train.add(tb)
            if (not official_train and not name.endswith("-dev.iob2")) or (train_set in (tb, "all")
                                                                           and not (official_train and tb in extra)):
                items.append(Item(root / f.rel, root, f, "finetune.train_sets", train_set))
    if not uner_dir.is_dir() and not fetchable:
        problems.append(DataError(f"UNER directory {uner_dir} not found (finetune.data_dir is relative to the data "
                                  f"root {root}, {location.source})", key="finetune.data_dir", value=ft["data_dir"]))
    elif train_set == "all" and not with_train:
        problems.append(DataError(f"'all' needs a treebank with a train split in {uner_dir}; there is none",
                                  key="finetune.train_sets", value=train_set))
    elif train_set != "all" and train_set not in with_train:
        what = (f"{train_set} has only {', '.join(sorted(local[train_set]))}" if train_set in local
                else f"there is no {uner_dir / train_set}")
        hint = ""
        if train_set in catalogue.UNER_COMMITS and not fetchable:
            hint = (f"; the download catalogue has it: set data.root (or ${DATA_ENV}) to the download cache, "
                    f"{location.cache}, to have it downloaded, or set finetune.extra_train")
        problems.append(DataError(f"train set '{train_set}' has no train split in {uner_dir} ({what}); sets with one: "
                                  f"{', '.join(sorted(with_train)) or 'none'}, or 'all'{hint}",
                                  key="finetune.train_sets", value=train_set))
    return location, items, problems


def experiment_plan(exp, *, tokenize: str | None = None, train_set: str | None = None) -> Plan:
    """The data plan of an experiment; `tokenize` / `train_set` narrow it to one DAG job's needs."""
    from metapretrain.grid import canonical_json

    plan = Plan()
    everything = tokenize is None and train_set is None
    seen: set[str] = set()
    for run in exp.runs:
        cfg = run.config
        plan.base_url = plan.base_url or download_base(cfg)
        if everything or run.tok_id == tokenize:
            key = canonical_json(["corpus", cfg["data"], cfg["corpus"], cfg["tokenizer"]])
            if key not in seen:
                seen.add(key)
                plan.add(*corpus_items(cfg))
        if not cfg["finetune"]["enabled"] or not (everything or train_set is not None):
            continue
        for ts in cfg["finetune"]["train_sets"]:
            if train_set is not None and ts != train_set:
                continue
            key = canonical_json(["uner", ts, cfg["data"], cfg["finetune"]["data_dir"], cfg["finetune"]["extra_train"]])
            if key not in seen:
                seen.add(key)
                plan.add(*uner_items(cfg, ts))
    if tokenize is not None and not any(r.tok_id == tokenize for r in exp.runs):
        raise DataError(f"no run of experiment '{exp.name}' has tokenize id {tokenize}", key="corpus")
    if train_set is not None and not any(train_set in r.config["finetune"]["train_sets"] for r in exp.runs):
        raise DataError(f"no run of experiment '{exp.name}' fine-tunes on '{train_set}'", key="finetune.train_sets")
    plan.problems = [placed(p, exp.file) for p in plan.problems]
    return plan


def placed(problem: DataError, file: str | None) -> DataError:
    """The problem with the experiment file and the line that sets its key."""
    if problem.file or not file or not os.path.exists(file):
        return problem
    from metapretrain.config.errors import ConfigError
    from metapretrain.config.yamlpos import PositionedYAML

    try:
        line = key_line(PositionedYAML.from_file(file), problem.key, problem.value)
    except ConfigError:  # the file loaded a moment ago; a line is a nicety
        line = None
    return DataError(problem.problem, key=problem.key, value=problem.value, file=file, line=line)


def key_line(doc, key: str | None, value: str | None = None) -> int | None:
    """The line of an experiment file that sets `key` (in defaults, an axis, a zip group or an include),
    preferring the line of the item equal to `value`; None when the file does not set it."""
    if not key:
        return None
    want = key.split(".")
    candidates = []
    for path in doc.lines:
        if path and isinstance(path[-1], str):
            names = [part for p in path if isinstance(p, str) for part in p.split(".")]
            if names[-len(want):] == want:
                candidates.append(path)
    if not candidates:
        return None
    if value is not None:
        hits = [line for path, line in doc.lines.items() for c in candidates
                if path[:len(c)] == c and (path[-1] == value or _value_at(doc.data, path) == value)]
        if hits:
            return min(hits)
    return min(doc.lines[c] for c in candidates)


def _value_at(data, path):
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


# --------------------------------------------------------------------------- fetching


@contextlib.contextmanager
def _locked(root: Path, out: TextIO) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another fetch into {root} to finish", file=out, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(plan: Plan, *, out: TextIO | None = None, backoff_s: float = 1.0) -> dict[str, str]:
    """Make every item of the plan present and intact; returns {path: sha256} of all of them.

    Raises the plan's first problem before touching anything, and `DownloadError`
    when a download fails (a partial file is kept for the next call to resume).
    """
    from metapretrain.data.download import download
    from metapretrain.progress import Progress

    out = out or sys.stdout
    if plan.problems:
        raise plan.problems[0]
    with contextlib.ExitStack() as stack:
        for root in sorted({i.root for i in plan.to_make()}):
            stack.enter_context(_locked(root, out))
        todo = plan.downloads()  # after the lock: another job may have fetched them meanwhile
        if todo:
            total = sum(r.size or 0 for r, _ in todo)
            print(f"fetching {len(todo)} files ({_mb(total)}) into {sorted({i.root for i in plan.to_make()})[0]}:",
                  file=out, flush=True)
            for remote, _ in todo:
                size = _mb(remote.size) if remote.size else "size unknown"
                print(f"  {remote.rel} ({size}) from {remote.url(plan.base_url)}", file=out, flush=True)
            done = 0
            with Progress("fetch", total=round(total / 1e6, 1), unit="MB", every_s=5, stream=out) as bar:
                for remote, dest in todo:
                    download(remote.url(plan.base_url), dest, sha256=remote.sha256, git_blob=remote.git_blob,
                             backoff_s=backoff_s, progress=lambda n, done=done: bar.update(round((done + n) / 1e6, 1)))
                    done += dest.stat().st_size
                    bar.update(round(done / 1e6, 1))
        for item in plan.to_make():
            if isinstance(item.entry, Derived):
                _derive(item.entry, item.root, out)
    bad = [str(i.path) for i in plan.items.values() if not intact(i.path, i.entry)]
    if bad:  # only a concurrent deletion gets here
        raise DataError(f"still missing after the fetch: {', '.join(bad)}", key="data")
    return {str(p): file_sha256(p) for p in sorted(plan.items)}


def _derive(entry: Derived, root: Path, out: TextIO) -> None:
    from metapretrain.data.derive import derive_text
    from metapretrain.data.download import DownloadError
    from metapretrain.io import atomic_write_bytes, write_json

    dest = root / entry.rel
    data, dropped = derive_text(root / entry.source, [root / r for r in entry.exclude])
    sha = hashlib.sha256(data).hexdigest()
    if entry.sha256 and sha != entry.sha256:
        raise DownloadError(f"{dest}: derived text has sha256 {sha}, expected {entry.sha256}; nothing was written")
    atomic_write_bytes(dest, data)
    if entry.sha256 is None:
        write_json(derived_record(dest), {"content_id": entry.content_id, "sha256": sha, "source": entry.source})
    print(f"derived {entry.rel} ({_mb(len(data))}) from {entry.source}: its `# text` lines, minus {dropped} equal to "
          f"a sentence of the {len(entry.exclude)} UNER dev/test files", file=out, flush=True)


def record(path: str | Path, plan: Plan, files: dict[str, str], need: str) -> None:
    """The marker the DAG's first rule leaves: what it checked or fetched, with checksums."""
    from metapretrain.io import write_json

    write_json(path, {"need": need, "roots": {str(r): loc.source for r, loc in plan.locations.items()},
                      "files": files})
