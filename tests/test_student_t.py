"""Student's t CDF and quantiles (engine/results/student_t.py), and the summary's interval and p-value."""
import math

import pytest

from engine.results.report import format_summary, summarize
from engine.results.student_t import regularized_beta, t_cdf, t_quantile


@pytest.mark.parametrize("t, df, cdf", [        # printed t tables (two-sided 0.05 / 0.10 columns)
    (2.262, 9, 0.975), (12.706, 1, 0.975), (4.303, 2, 0.975), (2.776, 4, 0.975),
    (2.064, 24, 0.975), (1.711, 24, 0.95), (1.984, 100, 0.975), (1.960, 100000, 0.975),
])
def test_cdf_and_quantile_match_table_values(t, df, cdf):
    assert t_cdf(t, df) == pytest.approx(cdf, abs=5e-5)
    assert t_cdf(-t, df) == pytest.approx(1 - cdf, abs=5e-5)
    assert t_quantile(cdf, df) == pytest.approx(t, abs=5e-4)
    assert t_quantile(1 - cdf, df) == pytest.approx(-t, abs=5e-4)


@pytest.mark.parametrize("t", [-40.0, -3.0, -1.0, -0.2, 0.0, 0.3, 1.0, 2.5, 7.0, 1e4])
def test_cdf_matches_the_closed_forms_of_one_and_two_degrees_of_freedom(t):
    assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12, abs=1e-15)   # Cauchy
    assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12, abs=1e-15)


def test_edges():
    assert t_cdf(math.inf, 5) == 1.0 and t_cdf(-math.inf, 5) == 0.0 and t_cdf(0.0, 5) == 0.5
    assert regularized_beta(0.0, 2, 3) == 0.0 and regularized_beta(1.0, 2, 3) == 1.0
    assert regularized_beta(0.4, 2, 3) == pytest.approx(0.5248, abs=1e-12)   # 1 - (1-x)^4 - 4x(1-x)^3
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="p must be in"):
        t_quantile(1.0, 3)


def test_against_scipy():
    from scipy import stats                  # in the [test] extra: the cross-check is never skipped
    for df in (1, 2, 3, 5, 9, 24, 99, 1000, 2.5):
        for t in (-30.0, -2.0, -0.1, 0.4, 1.7, 6.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-10, abs=1e-14)
        for p in (1e-8, 0.025, 0.3, 0.9, 0.975, 0.999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


def runs_with(accuracies, failed=0):
    ok = [{"seed": i, "ema_accuracy": a, "train_seconds": 1.0, "total_seconds": 2.0} for i, a in enumerate(accuracies)]
    return ok + [{"seed": 100 + i, "status": "failed"} for i in range(failed)]


def test_summary_gives_the_means_interval_and_one_sided_p_value():
    # Ten runs at 94% + d +- s: the standard error is s/3 and t = 3d/s. With d = 2.262 s/3,
    # t is the table's 97.5% point for 9 df: p = 0.025 and the interval starts at 94%.
    s = 0.003
    d = 2.262 * s / 3
    summary = summarize(runs_with([0.94 + d + (s if i % 2 else -s) for i in range(10)], failed=2))
    assert summary["runs"] == 10 and summary["failed_runs"] == 2
    assert summary["p_value_mean_above_94"] == pytest.approx(0.025, abs=5e-5)
    low, high = summary["ema_accuracy_ci95"]
    assert low == pytest.approx(0.94, abs=1e-6) and high == pytest.approx(0.94 + 2 * d, abs=1e-6)
    text = format_summary(summary, "data", "cpu")
    assert "95% CI  94.00% .. 94.45% (t, 9 df)" in text and "p-value 0.025 for mean > 94% (one-sided t-test" in text


def test_below_the_target_the_p_value_is_large():
    summary = summarize(runs_with([0.935, 0.937, 0.933]))
    assert summary["p_value_mean_above_94"] > 0.95
    assert summary["ema_accuracy_ci95"][1] < 0.94


def test_zero_spread_gives_a_point_interval_and_a_certain_verdict():
    above, below = summarize(runs_with([0.95, 0.95])), summarize(runs_with([0.93, 0.93]))
    assert above["ema_accuracy_ci95"] == [0.95, 0.95] and above["p_value_mean_above_94"] == 0.0
    assert below["p_value_mean_above_94"] == 1.0


def test_one_run_says_why_the_interval_and_p_value_are_absent():
    summary = summarize(runs_with([0.95], failed=1))
    assert summary["ema_accuracy_ci95"] is None and summary["p_value_mean_above_94"] is None
    text = format_summary(summary, "data", "cpu")
    assert "one run has no spread" in text
    assert " std " not in text and "  std" not in text and "p-value " not in text and "95% CI" not in text


def test_a_summary_cut_short_says_how_many_runs_were_asked():
    summary = summarize(runs_with([0.95]))
    text = format_summary(summary, "data", "cpu", asked=4)
    assert text.startswith("summary over 1 of 4 run(s)") and "(3 not run)" in text
    assert format_summary(summary, "data", "cpu", asked=1).startswith("summary over 1 run(s) on cpu")
    assert format_summary(summarize(runs_with([], failed=2)), "data", "cpu", asked=4) == \
        "no run of 4 finished (2 failed, 2 not run)"


def test_the_interval_stays_within_0_and_100_percent():
    # Two runs far apart: the t interval (12.7 standard errors each side) would pass 100%.
    summary = summarize(runs_with([0.95, 0.99]))
    low, high = summary["ema_accuracy_ci95"]
    assert high == 1.0 and low == pytest.approx(0.97 - 12.706 * 0.02, abs=1e-3)
    assert "100.00% (t, 1 df)" in format_summary(summary, "data", "cpu")
