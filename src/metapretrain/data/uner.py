"""Universal NER v1 (UNER) IOB2 files: a strict reader and treebank discovery.

Format (Universal NER v1, github.com/UniversalNER): per sentence, `#` comment lines, then one
line per token with 5 tab-separated columns (id, form, NER tag, extra tag,
annotator), then one blank line. Ids run 1, 2, 3, ... within a sentence. The
reader raises `UnerFormatError` naming `file:line` on a wrong column count, an
id that does not follow the previous one, a tag that is not `O`/`B-X`/`I-X`, a
comment inside a sentence, or a file that does not end with a blank line.

Two config rules shape the tags (`finetune.labels`, `finetune.invalid_transition`):

* types outside `labels` (e.g. Croatian/Serbian `OTH`) become `O`; how many
  entities were mapped is reported per type;
* an `I-X` not preceded by `B-X`/`I-X` (the README lists 12 in the shared
  files, five of them created by mapping OTH to O) is turned into `B-X` as
  conlleval does (`to_B`, each repair counted with its line) or raises (`error`).

Layout: `<data_dir>/<Language-Treebank>/<code>-ud-<split>.iob2`. `discover`
finds every treebank and split present, so a test-only treebank (PUD,
Tagalog, Cebuano) dropped into the directory is picked up with no config change.

The English-EWT train split is missing from the offline mirror. Its unofficial
stand-in (`uner_unofficial/English-EWT/`, see its NOTE.md) is never picked up by
discovery: it is used only when passed explicitly, as
`discover(data_dir, extra_train={"English-EWT": path})`, which reads it with its
3-column `O` lines allowed (its `B-O` and `OTH` tags fall outside the labels and
map to `O`). Results trained on it are not comparable with published UNER numbers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from metapretrain.io import InputError, read_text

SPLITS = ("train", "dev", "test")
_SPLIT_RE = re.compile(r"-(train|dev|test)\.iob2$")
_TAG_RE = re.compile(r"^(?:O|([BI])-([A-Za-z]+))$")
DEFAULT_LABELS = ("PER", "ORG", "LOC")


class UnerFormatError(ValueError):
    """A malformed UNER file; the message starts with `file:line:`."""


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]  # IOB2 after label mapping and repairs
    sent_id: str | None
    line: int  # line number of the first token


@dataclass
class FileReport:
    """What reading one file found: counts after mapping/repair, and what was changed."""

    path: Path
    sentences: int = 0
    tokens: int = 0
    entities: Counter = field(default_factory=Counter)  # type -> entities (after mapping and repairs)
    mapped_to_o: Counter = field(default_factory=Counter)  # raw type -> entities turned into O
    repairs: list[tuple[int, str, str]] = field(default_factory=list)  # (line, tag, previous tag) made B-X

    def to_dict(self) -> dict:
        return {"sentences": self.sentences, "tokens": self.tokens, "entities": dict(sorted(self.entities.items())),
                "mapped_to_O": dict(sorted(self.mapped_to_o.items())), "repairs": len(self.repairs),
                "repaired_lines": [{"line": ln, "tag": t, "previous": p} for ln, t, p in self.repairs]}


@dataclass(frozen=True)
class UnerFile:
    treebank: str
    split: str
    path: Path
    official: bool = True


def split_of(path: str | Path) -> str:
    """`train`, `dev` or `test` from a UNER file name (`xx_tb-ud-test.iob2`)."""
    m = _SPLIT_RE.search(Path(path).name)
    if not m:
        raise UnerFormatError(f"{path}: cannot tell the split from the file name (expected *-train|dev|test.iob2)")
    return m.group(1)


def read_iob2(path: str | Path, labels: Iterable[str] = DEFAULT_LABELS, invalid_transition: str = "to_B",
              allow_short_o: bool = False) -> tuple[list[Sentence], FileReport]:
    """Read one IOB2 file strictly; returns its sentences and a report.

    `allow_short_o` accepts 3-column lines tagged `O` (only the unofficial
    English stand-in has them); every other line must have 5 columns.
    """
    if invalid_transition not in ("to_B", "error"):
        raise ValueError(f"invalid_transition must be 'to_B' or 'error', got {invalid_transition!r}")
    path = Path(path)
    keep = set(labels)
    report = FileReport(path)
    sentences: list[Sentence] = []
    try:
        text = read_text(path)
    except InputError as exc:
        raise UnerFormatError(str(exc)) from None
    lines = text.split("\n")
    if text and not text.endswith("\n"):
        raise UnerFormatError(f"{path}:{len(lines)}: no newline at the end of the file")
    if text.endswith("\n"):
        lines.pop()  # the empty string after the final newline
    words: list[str] = []
    tags: list[str] = []
    sent_id: str | None = None
    first_line = 0
    prev = "O"
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        if line == "":
            if words:
                sentences.append(Sentence(tuple(words), tuple(tags), sent_id, first_line))
                report.sentences += 1
                words, tags, sent_id, prev = [], [], None, "O"
            continue
        if line.startswith("#"):
            if words:
                raise UnerFormatError(f"{path}:{lineno}: comment line inside a sentence (missing blank line before it?)")
            key, _, value = line[1:].partition("=")
            if key.strip() == "sent_id":
                sent_id = value.strip()
            continue
        cols = line.split("\t")
        short = allow_short_o and len(cols) == 3 and cols[2] == "O"
        if len(cols) != 5 and not short:
            raise UnerFormatError(f"{path}:{lineno}: expected 5 tab-separated columns, found {len(cols)}: {line!r}")
        tok_id, form, tag = cols[0], cols[1], cols[2]
        if tok_id != str(len(words) + 1):
            raise UnerFormatError(f"{path}:{lineno}: token id {tok_id!r} does not follow the previous id "
                                  f"(expected {len(words) + 1})")
        m = _TAG_RE.match(tag)
        if not m:
            raise UnerFormatError(f"{path}:{lineno}: unknown tag {tag!r} (expected O, B-TYPE or I-TYPE)")
        if m.group(1) and m.group(2) not in keep:
            if m.group(1) == "B":
                report.mapped_to_o[m.group(2)] += 1
            tag = "O"
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            if invalid_transition == "error":
                raise UnerFormatError(f"{path}:{lineno}: {tag} after {prev} breaks IOB2 "
                                      f"(finetune.invalid_transition: error)")
            report.repairs.append((lineno, tag, prev))
            tag = "B-" + tag[2:]
        if tag.startswith("B-"):
            report.entities[tag[2:]] += 1
        if not words:
            first_line = lineno
        words.append(form)
        tags.append(tag)
        report.tokens += 1
        prev = tag
    if words:
        raise UnerFormatError(f"{path}:{len(lines)}: the last sentence is not followed by a blank line")
    return sentences, report


def discover(data_dir: str | Path, extra_train: Mapping[str, str | Path] | None = None) -> dict[str, dict[str, UnerFile]]:
    """{treebank: {split: UnerFile}} for every `<data_dir>/<treebank>/*-<split>.iob2`, sorted by name.

    `extra_train` adds explicitly configured train files (the unofficial
    English-EWT stand-in); they never override an official train split.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: UNER directory not found (finetune.data_dir, relative to data.root)")
    found: dict[str, dict[str, UnerFile]] = {}
    for path in sorted(data_dir.glob("*/*.iob2")):
        treebank, split = path.parent.name, split_of(path)
        if split in found.get(treebank, {}):
            raise UnerFormatError(f"{path}: second {split} file for {treebank} "
                                  f"(first: {found[treebank][split].path.name})")
        found.setdefault(treebank, {})[split] = UnerFile(treebank, split, path)
    for treebank, path in (extra_train or {}).items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: configured extra train file for {treebank} not found")
        if "train" in found.get(treebank, {}):
            raise UnerFormatError(f"{path}: {treebank} already has an official train split "
                                  f"({found[treebank]['train'].path}); drop the extra one")
        found.setdefault(treebank, {})["train"] = UnerFile(treebank, "train", path, official=False)
    if not found:
        raise FileNotFoundError(f"{data_dir}: no <treebank>/*.iob2 files found")
    return dict(sorted(found.items()))


def read_file(f: UnerFile, labels: Iterable[str] = DEFAULT_LABELS,
              invalid_transition: str = "to_B") -> tuple[list[Sentence], FileReport]:
    return read_iob2(f.path, labels, invalid_transition, allow_short_o=not f.official)


def evaluation_only(treebanks: Mapping[str, Mapping[str, UnerFile]]) -> list[str]:
    """Treebanks with only a test split: evaluation-only sets."""
    return [tb for tb, splits in treebanks.items() if set(splits) == {"test"}]


def stats(data_dir: str | Path, labels: Iterable[str] = DEFAULT_LABELS, invalid_transition: str = "to_B",
          extra_train: Mapping[str, str | Path] | None = None) -> list[dict]:
    """One record per file: treebank, split, file, counts, mapped entities and repairs."""
    out = []
    for treebank, splits in discover(data_dir, extra_train).items():
        for split in SPLITS:
            if split in splits:
                f = splits[split]
                _, report = read_file(f, labels, invalid_transition)
                out.append({"treebank": treebank, "split": split, "file": str(f.path), "official": f.official}
                           | report.to_dict())
    return out


# Evaluation groups (`finetune.eval_groups`): the paper's summary groups of the 18 UNER v1 test sets.
UNGROUPED = "ungrouped"
DEFAULT_EVAL_GROUPS: dict[str, list[str]] = {
    # the 9 treebanks with a train split: their own test splits
    "in_language": ["Chinese-GSD", "Chinese-GSDSIMP", "Croatian-SET", "Danish-DDT", "English-EWT",
                    "Portuguese-Bosque", "Serbian-SET", "Slovak-SNK", "Swedish-Talbanken"],
    # de_pud, en_pud, pt_pud, ru_pud, sv_pud, zh_pud (repositories UniversalNER/UNER_<Language>-PUD)
    "pud": ["German-PUD", "English-PUD", "Portuguese-PUD", "Russian-PUD", "Swedish-PUD", "Chinese-PUD"],
    # the low-resource sets: ceb_gja, tl_trg, tl_ugnayan
    "other": ["Cebuano-GJA", "Tagalog-TRG", "Tagalog-Ugnayan"],
}


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def eval_group(eval_set: str, groups: Mapping[str, Iterable[str]]) -> str:
    """The group of an eval set: the first group (in mapping order) with a member or glob pattern
    (fnmatch, case-sensitive) naming it; `ungrouped` when none does."""
    from fnmatch import fnmatchcase

    for name, members in groups.items():
        if any(m == eval_set or (_is_glob(m) and fnmatchcase(eval_set, m)) for m in members):
            return name
    return UNGROUPED


def absent_members(groups: Mapping[str, Iterable[str]], present: Iterable[str]) -> dict[str, list[str]]:
    """{group: its members (names, or patterns matching nothing) not among the `present` eval sets}."""
    from fnmatch import fnmatchcase

    present = list(present)
    out = {}
    for name, members in groups.items():
        missing = [m for m in members
                   if not (m in present or (_is_glob(m) and any(fnmatchcase(p, m) for p in present)))]
        if missing:
            out[name] = missing
    return out


def eval_group_problems(groups: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """(key, message) for each inconsistency in `finetune.eval_groups`: an empty group, a group listing the
    same set twice, a set listed by two groups, or a group named `ungrouped` (the name of no group)."""
    problems = []
    seen: dict[str, str] = {}
    for name, members in groups.items():
        key = f"finetune.eval_groups.{name}"
        members = list(members)
        if name == UNGROUPED:
            problems.append((key, f"'{UNGROUPED}' is what an eval set in no group is called; rename this group"))
        if not members:
            problems.append((key, f"eval group '{name}' is empty: list treebank names or glob patterns, "
                                  "or drop the group"))
        dup = sorted({m for m in members if members.count(m) > 1})
        if dup:
            problems.append((key, f"eval group '{name}' lists {', '.join(dup)} more than once"))
        for m in dict.fromkeys(members):
            if m in seen and seen[m] != name:
                problems.append((key, f"{m} is listed by eval groups '{seen[m]}' and '{name}'; "
                                      "an eval set belongs to one group"))
            seen.setdefault(m, name)
    return problems
