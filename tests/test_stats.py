"""figures.stats against hand computations (Student t for n = 3: t(0.975, 2) = 4.302653)."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("scipy")

T2 = 4.302653  # two-sided 95% Student-t critical value, 2 degrees of freedom


def test_t_quantile():
    from metapretrain.figures.stats import t_quantile

    assert t_quantile(3) == pytest.approx(T2, abs=1e-6)
    assert t_quantile(2) == pytest.approx(12.706205, abs=1e-6)


def test_summary_mean_sd_and_t_interval():
    from metapretrain.figures.stats import summary

    s = summary([4.0, 4.1, 4.2])
    half = T2 * 0.1 / math.sqrt(3)  # 0.248414
    assert (s.n, s.mean, s.sd) == (3, pytest.approx(4.1), pytest.approx(0.1))
    assert s.lo == pytest.approx(4.1 - half, abs=1e-6) and s.hi == pytest.approx(4.1 + half, abs=1e-6)
    assert s.lo == pytest.approx(3.851586, abs=1e-6)
    nan_left_out = summary([4.0, float("nan"), 4.1, None, 4.2])
    assert nan_left_out == s


def test_summary_of_one_value_has_no_interval():
    from metapretrain.figures.stats import fmt_interval, summary

    s = summary([3.5])
    assert s.n == 1 and s.mean == 3.5 and math.isnan(s.lo) and math.isnan(s.hi) and math.isnan(s.sd)
    assert fmt_interval(s.mean, s.lo, s.hi, s.n) == "3.5000 (n = 1)"
    assert summary([]).n == 0 and math.isnan(summary([]).mean)
    s3 = summary([1.0, 2.0, 3.0])
    assert fmt_interval(s3.mean, s3.lo, s3.hi, s3.n, "{:.3f}") == "2.000 [-0.484, 4.484]"


def test_paired_t_test_by_hand():
    from metapretrain.figures.stats import PAIRED_TEST, paired

    # Differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 3.4641.
    # With 2 df the t CDF is 1/2 + t / (2 sqrt(2 + t^2)): p = 2 (1/2 - 3.4641 / (2 sqrt 14)) = 0.074180.
    p = paired([0.51, 0.54, 0.58], [0.50, 0.52, 0.55])
    t = 0.02 / (0.01 / math.sqrt(3))
    assert p.n == 3 and p.mean_diff == pytest.approx(0.02)
    assert p.p == pytest.approx(2 * (0.5 - t / (2 * math.sqrt(2 + t * t))), abs=1e-9)
    assert p.p == pytest.approx(0.074180, abs=1e-6)
    assert p.lo == pytest.approx(0.02 - T2 * 0.01 / math.sqrt(3), abs=1e-6)
    assert p.hi == pytest.approx(0.044841, abs=1e-6)
    assert p.paired and p.test == PAIRED_TEST
    one = paired([0.6], [0.5])
    assert one.n == 1 and one.mean_diff == pytest.approx(0.1) and math.isnan(one.p) and math.isnan(one.lo)
    same = paired([1.0, 2.0], [0.0, 1.0])  # every difference 1: no variance, no test
    assert same.mean_diff == 1.0 and math.isnan(same.p)


def test_unpaired_welch_test():
    from scipy import stats as ss

    from metapretrain.figures.stats import UNPAIRED_TEST, unpaired

    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    u = unpaired(a, b)
    assert not u.paired and u.test == UNPAIRED_TEST and u.n == 3
    assert u.mean_diff == pytest.approx(2.0 - 5.0)
    assert u.p == pytest.approx(ss.ttest_ind(a, b, equal_var=False).pvalue)
    assert u.lo < u.mean_diff < u.hi


def test_bootstrap_is_seeded_and_names_its_method():
    from metapretrain.figures.stats import bootstrap_mean

    vals = [1.3333, 1.3793, 1.4286]
    b = bootstrap_mean(vals)
    assert b == bootstrap_mean(vals)  # same inputs, same interval
    assert b.estimate == pytest.approx(sum(vals) / 3) and b.n == 3
    assert min(vals) <= b.lo < b.estimate < b.hi <= max(vals)
    assert "percentile bootstrap over pairs" in b.method and "seed 0" in b.method
    one = bootstrap_mean([2.0])
    assert one.estimate == 2.0 and math.isnan(one.lo) and one.n == 1


def test_band_is_columnwise_t_interval():
    import numpy as np

    from metapretrain.figures.stats import band

    ys = np.array([[4.0, 1.0], [4.1, float("nan")], [4.2, float("nan")]])
    mean, lo, hi = band(ys)
    assert mean[0] == pytest.approx(4.1) and lo[0] == pytest.approx(3.851586, abs=1e-6)
    assert mean[1] == 1.0 and math.isnan(lo[1]) and math.isnan(hi[1])  # one finite replicate: no band
