"""Error bars: Clopper-Pearson intervals, their place in every report, and `compare` over report folders."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from birdshield.stats import ci95, clopper_pearson


@pytest.mark.parametrize(("k", "n"), [(0, 150), (1, 150), (73, 150), (145, 150), (150, 150), (3, 7)])
def test_clopper_pearson_equals_scipys_exact_binomial_interval(k: int, n: int):
    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_interval_contains_the_estimate_and_narrows_with_n():
    for k, n in [(5, 10), (50, 100), (500, 1000)]:
        low, high = ci95(k, n)
        assert low <= k / n <= high
    assert ci95(500, 1000)[1] - ci95(500, 1000)[0] < ci95(5, 10)[1] - ci95(5, 10)[0]
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_mcnemar_exact_is_the_two_sided_sign_test_on_disagreements():
    from birdshield.stats import mcnemar_exact

    assert mcnemar_exact(7, 0) == pytest.approx(2 * 0.5**7)  # 7 of 7 disagreements one way
    assert mcnemar_exact(0, 7) == mcnemar_exact(7, 0)  # symmetric
    assert mcnemar_exact(5, 4) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0  # no disagreement, no evidence
    assert mcnemar_exact(13, 3) < 0.05 < mcnemar_exact(9, 6)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_report_intervals_round_once_when_shown_to_a_tenth_of_a_percent():
    low, high = clopper_pearson(851, 900)  # high is 0.95945...: a double rounding would show 96.0%
    assert f"{ci95(851, 900)[1]:.1%}" == f"{high:.1%}" == "95.9%"
    assert ci95(851, 900)[0] == pytest.approx(low, abs=1e-6)


def test_a_count_is_shown_with_its_share_and_interval_as_the_docs_quote_it():
    from birdshield.stats import format_count

    assert format_count(169, 180) == "169/180 93.9% (89.3-96.9)"
    assert format_count(851, 900) == "851/900 94.6% (92.9-95.9)"  # rounds once, as reports do
    assert format_count(0, 150) == "0/150 0.0% (0.0-2.4)"
