"""Phase detection: where each curve peaks and whether it rises then falls ("diversify then compress").

The rule, for one curve v_0..v_{n-1} over checkpoints sorted by step:

1. Smooth with a centred moving average of `smoothing` checkpoints
   (window [i - (w-1)//2, i + w//2], shrunk at the ends), giving s.
2. The peak is the first index k of max(s); peak_step and peak_value are its
   step and smoothed value; rise = s_k - s_0, fall = s_k - s_{n-1}.
3. It is a rise-and-fall when the peak is strictly inside the curve and both
   rise and fall are at least `min_prominence` × scale, where
   scale = max(|s_k|, max(s) - min(s)), and both are > 0.

The scale includes |peak| so that a flat curve with noise is not called a
rise-and-fall because its tiny range makes the noise look prominent; for the
non-negative curves measured here it is the peak value (rise and fall as a
fraction of the peak). Curves with fewer than 3 finite points have no
rise-and-fall. Head-resolved metrics are averaged over heads first, so every
peak is per layer, component and metric: per-layer peak steps say which
layers specialise first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PEAK_COLUMNS = ("run_id", "layer", "component", "metric", "peak_step", "peak_value", "rise", "fall", "is_rise_and_fall")


@dataclass(frozen=True)
class Peak:
    peak_step: int
    peak_value: float
    rise: float
    fall: float
    is_rise_and_fall: bool


def smooth(values, window: int) -> np.ndarray:
    """Centred moving average over `window` points, the window shrunk at both ends."""
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    before, after = (window - 1) // 2, window // 2
    csum = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(len(v))
    lo = np.maximum(idx - before, 0)
    hi = np.minimum(idx + after + 1, len(v))
    return (csum[hi] - csum[lo]) / (hi - lo)


def detect_peak(steps, values, smoothing: int, min_prominence: float) -> Peak | None:
    """The peak of one curve by the rule above; None when no point is finite."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    if len(values) == 0:
        return None
    s = smooth(values, smoothing)
    k = int(np.argmax(s))
    rise, fall = float(s[k] - s[0]), float(s[k] - s[-1])
    scale = max(abs(float(s[k])), float(s.max() - s.min()))
    threshold = min_prominence * scale
    is_rf = (len(s) >= 3 and 0 < k < len(s) - 1 and rise > 0 and fall > 0
             and rise >= threshold and fall >= threshold)
    return Peak(int(steps[k]), float(s[k]), rise, fall, bool(is_rf))


def _key_layer(layer: str) -> tuple[int, float]:
    return (0, float(layer)) if layer != "" else (1, math.inf)


def peaks_table(rows: Iterable[dict], smoothing: int, min_prominence: float) -> list[dict]:
    """Peak rows (PEAK_COLUMNS) for every (run_id, layer, component, metric) curve of dynamics.csv rows (strings)."""
    # (run, layer, component, metric) -> step -> values over heads
    curves: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        curves[(r["run_id"], r["layer"], r["component"], r["metric"])][int(r["step"])].append(float(r["value"]))
    out = []
    for (run_id, layer, component, metric), by_step in sorted(curves.items(),
                                                              key=lambda kv: (kv[0][0], _key_layer(kv[0][1]),
                                                                              kv[0][2], kv[0][3])):
        steps = sorted(by_step)
        with np.errstate(all="ignore"):
            values = [float(np.mean(by_step[s])) for s in steps]
        peak = detect_peak(steps, values, smoothing, min_prominence)
        if peak is None:
            continue
        out.append({"run_id": run_id, "layer": layer, "component": component, "metric": metric,
                    "peak_step": peak.peak_step, "peak_value": peak.peak_value, "rise": peak.rise,
                    "fall": peak.fall, "is_rise_and_fall": peak.is_rise_and_fall})
    return out
