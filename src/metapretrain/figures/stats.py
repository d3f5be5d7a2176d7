"""Statistics over replicates (seeds): Student-t intervals, the paired t-test, a percentile bootstrap.

Every interval is 95% unless `level` says otherwise. With one value there is
no interval: `lo` and `hi` are NaN, and tables say `n = 1`. scipy is
imported inside the functions (the figures stage is the only user).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVEL = 0.95
N_BOOT = 10_000
T_INTERVAL = "95% CI: Student t over seeds"
PAIRED_TEST = "paired t-test over seeds, two-sided"
UNPAIRED_TEST = "Welch t-test (unpaired), two-sided"


@dataclass(frozen=True)
class Summary:
    mean: float
    lo: float  # NaN when n < 2
    hi: float
    n: int
    sd: float  # sample standard deviation (ddof 1); NaN when n < 2


@dataclass(frozen=True)
class Paired:
    """meta − vanilla over pairs (or, when `paired` is false, between two independent samples)."""

    mean_diff: float
    lo: float
    hi: float
    n: int  # pairs; for an unpaired comparison, the smaller sample
    p: float  # two-sided p-value; NaN when n < 2 or every difference is equal
    paired: bool = True

    @property
    def test(self) -> str:
        return PAIRED_TEST if self.paired else UNPAIRED_TEST


@dataclass(frozen=True)
class Bootstrap:
    estimate: float  # the statistic on the sample itself
    lo: float
    hi: float
    n: int
    method: str  # how the interval was made, for captions and tables


def _finite(values) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


def t_quantile(n: int, level: float = LEVEL) -> float:
    """The two-sided Student-t critical value for n values (n − 1 degrees of freedom)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def summary(values, level: float = LEVEL) -> Summary:
    """Mean and Student-t interval of the finite values (non-finite ones are left out)."""
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0, math.nan)
    mean = sum(xs) / n
    if n == 1:
        return Summary(mean, math.nan, math.nan, 1, math.nan)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n, level) * sd / math.sqrt(n)
    return Summary(mean, mean - half, mean + half, n, sd)


def paired(a, b, level: float = LEVEL) -> Paired:
    """Paired t-test of a − b over pairs (a[i], b[i]); a pair with a non-finite member is left out."""
    from scipy import stats

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if _finite([x]) and _finite([y])]
    diffs = [float(x) - float(y) for x, y in pairs]
    s = summary(diffs, level)
    p = math.nan
    if s.n >= 2 and s.sd > 0:
        p = float(stats.ttest_rel([x for x, _ in pairs], [y for _, y in pairs]).pvalue)
    return Paired(s.mean, s.lo, s.hi, s.n, p, paired=True)


def unpaired(a, b, level: float = LEVEL) -> Paired:
    """Welch's t-test of mean(a) − mean(b) for two independent samples, with its Welch interval."""
    from scipy import stats

    xa, xb = _finite(a), _finite(b)
    n = min(len(xa), len(xb))
    if not xa or not xb:
        return Paired(math.nan, math.nan, math.nan, n, math.nan, paired=False)
    sa, sb = summary(xa, level), summary(xb, level)
    diff = sa.mean - sb.mean
    if len(xa) < 2 or len(xb) < 2 or (sa.sd == 0 and sb.sd == 0):
        return Paired(diff, math.nan, math.nan, n, math.nan, paired=False)
    res = stats.ttest_ind(xa, xb, equal_var=False)
    ci = res.confidence_interval(level)
    return Paired(diff, float(ci.low), float(ci.high), n, float(res.pvalue), paired=False)


def bootstrap_mean(values, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0) -> Bootstrap:
    """Mean of the values with a percentile-bootstrap interval (resampling the values, e.g. seed pairs)."""
    import numpy as np

    xs = np.asarray(_finite(values), dtype=float)
    n = len(xs)
    method = f"percentile bootstrap over pairs ({n_boot} resamples, seed {seed})"
    if n == 0:
        return Bootstrap(math.nan, math.nan, math.nan, 0, method)
    if n == 1:
        return Bootstrap(float(xs[0]), math.nan, math.nan, 1, method)
    rng = np.random.default_rng(seed)
    means = xs[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return Bootstrap(float(xs.mean()), float(lo), float(hi), n, method)


def band(ys, level: float = LEVEL):
    """Column-wise mean and Student-t interval of a (replicates × points) array: (mean, lo, hi) arrays.

    Points where fewer than two replicates are finite get NaN bounds."""
    import numpy as np

    ys = np.asarray(ys, dtype=float)
    ok = np.isfinite(ys)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(np.where(ok, ys, 0.0), axis=0) / np.maximum(n, 1), np.nan)
        dev = np.where(ok, ys - mean, 0.0)
        sd = np.sqrt((dev ** 2).sum(axis=0) / np.maximum(n - 1, 1))
        from scipy import stats

        t = np.where(n >= 2, stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)), np.nan)
        half = t * sd / np.sqrt(np.maximum(n, 1))
    return mean, mean - half, mean + half


def fmt_interval(mean: float, lo: float, hi: float, n: int, spec: str = "{:.4f}") -> str:
    """'4.1234 [4.0100, 4.2300]', or '4.1234 (n = 1)' without an interval; '–' without a value."""
    if not math.isfinite(mean):
        return "–"
    if n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{spec.format(mean)} (n = {n})"
    return f"{spec.format(mean)} [{spec.format(lo)}, {spec.format(hi)}]"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


ONE_SAMPLE_TEST = "one-sample t-test over pairs, two-sided"


def one_sample(values, null: float = 0.0, level: float = LEVEL) -> Paired:
    """Student-t test of mean(values) = `null` (e.g. per-pair differences against 0) with its interval.

    Non-finite values are left out; `p` is NaN when n < 2 or every value is equal (no spread, no test)."""
    from scipy import stats

    xs = _finite(values)
    s = summary(xs, level)
    p = math.nan
    if s.n >= 2 and max(xs) > min(xs):  # equal values: no test (rounding would fake a tiny spread)
        p = float(stats.ttest_1samp(xs, null).pvalue)
    return Paired(s.mean, s.lo, s.hi, s.n, p, paired=True)
