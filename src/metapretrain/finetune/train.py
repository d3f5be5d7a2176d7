"""Fine-tuning loop: AdamW, length-bucketed batches, early stopping on dev micro-F1, per-epoch resume.

Regimes: `head` freezes the backbone, so its word features are computed once
under no_grad and the head trains on the cached features (same result as
recomputing them, far cheaper); `full` trains every parameter. After each epoch
the whole loop state is written atomically to `state_path`, so a killed or
requeued job continues from its last finished epoch; the best dev state is
restored at the end.

With `log_every` = N (`finetune.log_every`), every N optimizer steps (counted over the whole fit,
across epochs) a point of the fine-tuning curve is recorded: the train loss averaged over the
batches of the interval and the dev micro-F1 at that step; a last, shorter interval is recorded
when the fit ends. The curve (`FitResult.curve`; the stage writes it to `curve.csv`) resumes with
the rest of the state.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from metapretrain.device import use_fused
from metapretrain.finetune.data import Encoded, collate, length_batches
from metapretrain.finetune.evaluate import score
from metapretrain.finetune.model import TokenClassifier


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, dev_micro_f1, dev_loss
    best_epoch: int = 0
    best_dev_f1: float | None = None
    best_dev_loss: float | None = None
    curve: list[dict] = field(default_factory=list)  # every log_every steps: step, epoch, train_loss, dev_micro_f1


def _pad_features(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    W = max(1, max(f.shape[0] for f in feats))
    out = feats[0].new_zeros((len(feats), W, feats[0].shape[1]))
    for b, f in enumerate(feats):
        out[b, :f.shape[0]] = f
    return out


class FeatureSource:
    """Word features for batches of `items`: from a cache (head regime) or from the backbone (full regime)."""

    def __init__(self, clf: TokenClassifier, items: Sequence[Encoded], *, pad_id: int, device, batch_size: int,
                 cache: bool) -> None:
        self.clf, self.items, self.device, self.pad_id = clf, list(items), device, pad_id
        self.cached: list[torch.Tensor] | None = None
        if cache:
            self.cached = [torch.empty(0)] * len(self.items)
            with torch.no_grad():
                for idx in length_batches(self.items, batch_size * 4):
                    b = collate([self.items[i] for i in idx], self.pad_id).to(device)
                    feats = clf.word_features(b.input_ids, b.starts)
                    for row, i in enumerate(idx):
                        self.cached[i] = feats[row, :len(self.items[i].starts)].detach()

    def batch(self, idx: Sequence[int]):
        """(features [B, W, d], labels [B, W], mask [B, W]) on the device."""
        b = collate([self.items[i] for i in idx], self.pad_id).to(self.device)
        if self.cached is not None:
            feats = _pad_features([self.cached[i] for i in idx])
        else:
            feats = self.clf.word_features(b.input_ids, b.starts)
        return feats, b.labels, b.mask


@torch.no_grad()
def predict(clf: TokenClassifier, source: FeatureSource, id2label: Sequence[str], batch_size: int) -> list[list[str]]:
    """Tags for every word of every sentence; words cut off by truncation are `O`."""
    out: list[list[str]] = [[] for _ in source.items]
    for idx in length_batches(source.items, batch_size):
        feats, _, mask = source.batch(idx)
        for i, ids in zip(idx, clf.predict(clf.emissions(feats), mask), strict=True):
            tags = [id2label[j] for j in ids]
            out[i] = tags + ["O"] * (source.items[i].n_words - len(tags))
    return out


def dev_f1(clf, source: FeatureSource, id2label, batch_size: int) -> float:
    pred = predict(clf, source, id2label, batch_size)
    return score([list(x.gold) for x in source.items], pred)["micro_f1"]


@torch.no_grad()
def dev_loss(clf: TokenClassifier, source: FeatureSource, batch_size: int) -> float:
    """The training loss on the dev set, averaged over words."""
    total, words = 0.0, 0
    kept = [i for i, x in enumerate(source.items) if x.starts]  # sentences whose words were all truncated away
    for idx in length_batches([source.items[i] for i in kept], batch_size):
        feats, labels, mask = source.batch([kept[i] for i in idx])
        n = int(mask.sum())
        total += float(clf.loss(clf.emissions(feats), labels, mask)) * n
        words += n
    return total / max(words, 1)


def improved(f1: float, loss: float, best_f1: float | None, best_loss: float | None) -> bool:
    """Early stopping's notion of a better epoch: a higher dev micro-F1, or the same F1 at a lower dev loss.

    The tie-break matters early and for weak models: F1 stays at exactly 0 (or any value) for several
    epochs while the head is still learning, and a strict F1 rule would stop such a run.
    """
    if best_f1 is None:
        return True
    return f1 > best_f1 or (f1 == best_f1 and (best_loss is None or loss < best_loss))


def _optimizer(clf: TokenClassifier, regime: str, lr: float, head_lr: float | None, weight_decay: float):
    head = clf.head_parameters()
    head_ids = {id(p) for p in head}
    groups = []
    head_lr = head_lr or lr
    for params, group_lr in ((head, head_lr),
                             ([p for p in clf.parameters() if id(p) not in head_ids] if regime == "full" else [], lr)):
        decay = [p for p in params if p.dim() >= 2]  # no weight decay on norms, biases and CRF scores
        keep = [p for p in params if p.dim() < 2]
        groups += [{"params": decay, "lr": group_lr, "weight_decay": weight_decay},
                   {"params": keep, "lr": group_lr, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    params = [p for g in groups for p in g["params"]]
    # torch's fused kernel where the device has one (as pretraining's train.fused_adamw: auto).
    return torch.optim.AdamW(groups, fused=use_fused("auto", params[0].device, params) or None)


def _trainable_state(clf: TokenClassifier, regime: str) -> dict:
    sd = clf.state_dict()
    if regime == "head":
        sd = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    return {k: v.detach().clone().cpu() for k, v in sd.items()}


def fit(clf: TokenClassifier, train: FeatureSource, dev: FeatureSource | None, id2label: Sequence[str], *,
        regime: str, epochs: int, batch_size: int, lr: float, head_lr: float | None, weight_decay: float,
        patience: int | None, seed: int, state_path: str | Path | None = None, progress=None,
        log_every: int | None = None) -> FitResult:
    """Train `clf` in place; returns the history (and with `log_every`, the curve: module docstring).
    The best dev state (if any dev set) is loaded at the end."""
    from metapretrain.launch import preemption

    if regime not in ("head", "full"):
        raise ValueError(f"regime must be 'head' or 'full', got {regime!r}")
    if log_every is not None and log_every < 1:
        raise ValueError(f"log_every must be a positive number of optimizer steps or None, got {log_every!r}")
    clf.backbone.requires_grad_(regime == "full")
    opt = _optimizer(clf, regime, lr, head_lr, weight_decay)
    result = FitResult()
    best_state, bad, start = None, 0, 0
    pending = [0.0, 0]  # train-loss sum and batch count since the last curve point
    state_path = Path(state_path) if state_path else None
    if state_path is not None and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        clf.load_state_dict(st["model"], strict=False)
        opt.load_state_dict(st["optimizer"])
        best_state, bad, start = st["best_state"], st["bad_epochs"], st["epoch"]
        result = FitResult(st["history"], st["best_epoch"], st["best_dev_f1"], st.get("best_dev_loss"),
                           list(st.get("curve", [])))
        pending = list(st.get("curve_pending", pending))
    trainable = [i for i, x in enumerate(train.items) if x.starts]  # a sentence with no kept word teaches nothing
    n_batches = (len(trainable) + batch_size - 1) // batch_size
    stopped = start > 0 and patience is not None and bad >= patience

    def curve_point(step: int, epoch: int) -> None:
        row = {"step": step, "epoch": epoch, "train_loss": pending[0] / pending[1], "dev_micro_f1": ""}
        if dev is not None and dev.items:
            row["dev_micro_f1"] = dev_f1(clf, dev, id2label, batch_size)
        result.curve.append(row)
        pending[:] = [0.0, 0]

    step = start * n_batches
    for epoch in range(start, 0 if stopped else epochs):
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)  # per-epoch order: identical after a resume
        total, count = 0.0, 0
        for k, idx in enumerate(length_batches([train.items[i] for i in trainable], batch_size, gen)):
            if preemption.requested():
                raise preemption.Preempted(f"fine-tuning stopped in epoch {epoch + 1}; resumes from epoch {epoch}")
            feats, labels, mask = train.batch([trainable[i] for i in idx])
            loss = clf.loss(clf.emissions(feats), labels, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item(), count + 1
            step = epoch * n_batches + k + 1
            if log_every is not None:
                pending[0], pending[1] = pending[0] + loss.item(), pending[1] + 1
                if step % log_every == 0:
                    curve_point(step, epoch + 1)
            if progress is not None:
                progress.update(epoch * n_batches + k + 1, epoch=epoch + 1, loss=f"{total / count:.4f}")
        row = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if dev is not None and dev.items:
            f1, loss_dev = dev_f1(clf, dev, id2label, batch_size), dev_loss(clf, dev, batch_size)
            row["dev_micro_f1"], row["dev_loss"] = f1, loss_dev
            if improved(f1, loss_dev, result.best_dev_f1, result.best_dev_loss):
                result.best_dev_f1, result.best_dev_loss, result.best_epoch, bad = f1, loss_dev, epoch + 1, 0
                best_state = _trainable_state(clf, regime)
            else:
                bad += 1
            if progress is not None:
                progress.update((epoch + 1) * n_batches, dev_f1=f"{f1:.4f}")
        else:
            result.best_epoch = epoch + 1
        result.history.append(row)
        if state_path is not None:
            _save_state(state_path, clf, regime, opt, epoch + 1, best_state, bad, result, pending)
        if patience is not None and bad >= patience:
            break
    if log_every is not None and pending[1]:  # the last, shorter interval (the model before the best is restored)
        curve_point(step, len(result.history))
    if best_state is not None:
        clf.load_state_dict(best_state, strict=False)
    return result


def _save_state(path: Path, clf, regime, opt, epoch, best_state, bad, result: FitResult, pending=(0.0, 0)) -> None:
    from metapretrain.io import atomic_path

    state = {"model": _trainable_state(clf, regime), "optimizer": copy.deepcopy(opt.state_dict()), "epoch": epoch,
             "best_state": best_state, "bad_epochs": bad, "history": result.history,
             "best_epoch": result.best_epoch, "best_dev_f1": result.best_dev_f1,
             "best_dev_loss": result.best_dev_loss, "curve": result.curve, "curve_pending": list(pending)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
