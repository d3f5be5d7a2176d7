"""Phase detection: where each curve peaks and troughs, and which shape it has.

The paper's claim shape is a rise-and-fall ("diversify then compress"). On
small runs effective rank and head entropy are often highest at the random
init, fall to a trough and rise again: a fall-and-rise ("compress then
diversify"). Both are looked for, by the same rule, for one curve
v_0..v_{n-1} over checkpoints sorted by step:

1. Smooth with a centred moving average of `smoothing` checkpoints
   (window [i - (w-1)//2, i + w//2], shrunk at the ends), giving s.
2. The peak is the first index k of max(s); peak_step and peak_value are its
   step and smoothed value; rise = s_k - s_0, fall = s_k - s_{n-1}.
   The trough is the first index j of min(s); trough_step and trough_value
   are its step and smoothed value; trough_fall = s_0 - s_j (the fall from
   the init value into the trough), trough_rise = s_{n-1} - s_j (the rise
   after it to the last checkpoint).
3. The threshold is `min_prominence` × scale, where
   scale = max(|max(s)|, |min(s)|, max(s) - min(s)).
   It is a rise-and-fall (`is_rise_and_fall`) when the peak is strictly
   inside the curve and rise and fall are both > 0 and >= the threshold; a
   fall-and-rise (`is_fall_and_rise`) when the trough is strictly inside and
   trough_fall and trough_rise are both > 0 and >= the threshold.
4. `shape` is one of SHAPES: `rise_fall` or `fall_rise` when only that one
   holds; when both hold (rise-fall-rise, fall-rise-fall), the one whose
   smaller arm is larger (min(rise, fall) against min(trough_fall,
   trough_rise)), ties to the one whose extremum comes first. Otherwise
   `flat` when max(s) - min(s) is below the threshold, else `monotone_up`
   when s_{n-1} >= s_0 and `monotone_down` when not ("monotone" here: no
   interior extremum prominent on both sides, not strictly monotone).

Thresholds. `min_prominence` (config `dynamics.min_prominence`, default 0.05)
is the one relative threshold: each arm of a peak or trough must be at least
that fraction of the curve's scale, and a curve whose whole range is below it
is flat. `smoothing` (`dynamics.smoothing`, default 3) is the moving-average
window. MIN_POINTS is the fewest finite checkpoints with an interior point.
The schema's description of min_prominence speaks of peaks only; it applies to
troughs in the same way.

The scale includes |peak| and |trough| so that a flat curve with noise is not
called a rise-and-fall (or fall-and-rise) because its tiny range makes the
noise look prominent; for the non-negative curves measured here it is the
peak value (arms as a fraction of the peak), which is the rule the detector
used before troughs were added: `is_rise_and_fall` and the peak columns are
unchanged. Curves with fewer than 3 finite points have neither shape. Head-
resolved metrics are averaged over heads first, so every row is per layer,
component and metric: per-layer peak and trough steps say which layers
change phase first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

RISE_FALL, FALL_RISE = "rise_fall", "fall_rise"  # interior peak / interior trough (the rule above)
MONOTONE_UP, MONOTONE_DOWN, FLAT = "monotone_up", "monotone_down", "flat"
SHAPES = (RISE_FALL, FALL_RISE, MONOTONE_UP, MONOTONE_DOWN, FLAT)
# The rule's version, part of the dynamics stage's settings: a peaks.csv written by an older rule is rewritten.
RULE = "peak+trough/1"
MIN_POINTS = 3  # fewer finite checkpoints: no interior extremum, so neither rise-and-fall nor fall-and-rise

PEAK_COLUMNS = ("run_id", "layer", "component", "metric", "peak_step", "peak_value", "rise", "fall", "is_rise_and_fall",
                "shape", "trough_step", "trough_value", "trough_fall", "trough_rise", "is_fall_and_rise")


@dataclass(frozen=True)
class Peak:
    """One curve's phases (the module docstring's rule). The first five fields are the original peak record."""

    peak_step: int
    peak_value: float
    rise: float
    fall: float
    is_rise_and_fall: bool
    trough_step: int = 0
    trough_value: float = math.nan
    trough_fall: float = math.nan
    trough_rise: float = math.nan
    is_fall_and_rise: bool = False
    shape: str = FLAT


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


def classify(rise_fall: bool, fall_rise: bool, peak_arm: float, trough_arm: float, peak_first: bool,
             span: float, net: float, threshold: float) -> str:
    """The shape (SHAPES) from the two tests, their smaller arms, the range `span` and `net` = last - first."""
    if rise_fall and fall_rise:
        if peak_arm != trough_arm:
            return RISE_FALL if peak_arm > trough_arm else FALL_RISE
        return RISE_FALL if peak_first else FALL_RISE
    if rise_fall:
        return RISE_FALL
    if fall_rise:
        return FALL_RISE
    if span < threshold or span == 0:
        return FLAT
    return MONOTONE_UP if net >= 0 else MONOTONE_DOWN


def detect_peak(steps, values, smoothing: int, min_prominence: float) -> Peak | None:
    """Peak, trough and shape of one curve by the rule above; None when no point is finite."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    keep = np.isfinite(values)
    steps, values = steps[keep], values[keep]
    if len(values) == 0:
        return None
    s = smooth(values, smoothing)
    k, j = int(np.argmax(s)), int(np.argmin(s))
    rise, fall = float(s[k] - s[0]), float(s[k] - s[-1])
    t_fall, t_rise = float(s[0] - s[j]), float(s[-1] - s[j])
    span = float(s.max() - s.min())
    scale = max(abs(float(s[k])), abs(float(s[j])), span)
    threshold = min_prominence * scale
    enough = len(s) >= MIN_POINTS
    is_rf = bool(enough and 0 < k < len(s) - 1 and rise > 0 and fall > 0 and rise >= threshold and fall >= threshold)
    is_fr = bool(enough and 0 < j < len(s) - 1 and t_fall > 0 and t_rise > 0
                 and t_fall >= threshold and t_rise >= threshold)
    shape = classify(is_rf, is_fr, min(rise, fall), min(t_fall, t_rise), k < j, span, float(s[-1] - s[0]), threshold)
    return Peak(int(steps[k]), float(s[k]), rise, fall, is_rf, int(steps[j]), float(s[j]), t_fall, t_rise, is_fr,
                shape)


def _key_layer(layer: str) -> tuple[int, float]:
    return (0, float(layer)) if layer != "" else (1, math.inf)


def peaks_table(rows: Iterable[dict], smoothing: int, min_prominence: float) -> list[dict]:
    """Phase rows (PEAK_COLUMNS) for every (run_id, layer, component, metric) curve of dynamics.csv rows (strings)."""
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
                    "fall": peak.fall, "is_rise_and_fall": peak.is_rise_and_fall, "shape": peak.shape,
                    "trough_step": peak.trough_step, "trough_value": peak.trough_value,
                    "trough_fall": peak.trough_fall, "trough_rise": peak.trough_rise,
                    "is_fall_and_rise": peak.is_fall_and_rise})
    return out
