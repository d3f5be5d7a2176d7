"""Entity-level scores equal to `seqeval`, in either of its two modes (`finetune.f1_mode`).

Written out here so the GPU machine, which has no seqeval, scores the same way;
tests check it against seqeval. A predicted entity counts only when type, start
and end all match a gold one.

* `strict` (seqeval `mode="strict", scheme=IOB2`, the default here): an entity is a
  `B-X` followed by any `I-X` of the same type; an `I-X` that does not continue an
  entity starts none, so a model's invalid `I-X` after `O` earns nothing.
* `default` (seqeval's default mode, conlleval-style chunks, which the paper's code
  reports): an `I-X` after `O` or after another type also starts an entity of type X.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Strict IOB2 entities as (type, first token, last token + 1)."""
    out = set()
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        if start is not None and tag != f"I-{kind}":
            out.add((kind, start, i))
            start, kind = None, None
        if tag.startswith("B-"):
            start, kind = i, tag[2:]
    return out


F1_MODES = ("strict", "default")
F1_MODE_TEXT = {"strict": "seqeval strict IOB2", "default": "seqeval default mode (conlleval chunks)"}


def entities_default(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entities as seqeval's default mode reads IOB2 (an `I-X` not continuing an X entity starts one)."""
    out = set()
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, typ = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if start is not None and (prefix in ("B", "O") or typ != kind):
            out.add((kind, start, i))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, typ
    return out


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def score(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], types: Iterable[str] = (),
          mode: str = "strict") -> dict[str, float]:
    """micro_precision/recall/f1 and <TYPE>_precision/recall/f1/support (types: gold ∪ predicted ∪ `types`);
    `mode` is `strict` or `default` (module docstring)."""
    if mode not in F1_MODES:
        raise ValueError(f"f1 mode must be one of {', '.join(F1_MODES)}, got {mode!r}")
    spans = entities if mode == "strict" else entities_default
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    tp, n_gold, n_pred = Counter(), Counter(), Counter()
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        ge, pe = spans(g), spans(p)
        for kind, *_ in ge:
            n_gold[kind] += 1
        for kind, *_ in pe:
            n_pred[kind] += 1
        for kind, *_ in ge & pe:
            tp[kind] += 1
    out: dict[str, float] = {}
    p, r, f = _prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    out.update(micro_precision=p, micro_recall=r, micro_f1=f)
    for kind in sorted(set(n_gold) | set(n_pred) | set(types)):
        p, r, f = _prf(tp[kind], n_pred[kind], n_gold[kind])
        out.update({f"{kind}_precision": p, f"{kind}_recall": r, f"{kind}_f1": f, f"{kind}_support": n_gold[kind]})
    return out
