import math

import numpy as np
import pytest
from scipy import stats

from mos_predictor.metrics import (
    evaluate_predictions,
    format_metrics,
    quality_metrics,
    system_level,
    system_means,
)


def test_hand_computed_small_case():
    # true = 1,2,3,4; pred = 1,3,2,4: errors 0,1,1,0 -> MSE 0.5.
    # Means 2.5; deviations (-1.5,-0.5,0.5,1.5) and (-1.5,0.5,-0.5,1.5):
    # covariance sum 2.25-0.25-0.25+2.25 = 4, variance sums 5 and 5 -> LCC 0.8.
    # Ranks equal the values, so SRCC = LCC = 0.8.
    # Pairs: 6, one discordant (2,3 swapped) -> tau = (5-1)/6 = 2/3.
    m = quality_metrics([1, 3, 2, 4], [1, 2, 3, 4])
    assert m["count"] == 4
    assert m["mse"] == pytest.approx(0.5)
    assert m["lcc"] == pytest.approx(0.8)
    assert m["srcc"] == pytest.approx(0.8)
    assert m["ktau"] == pytest.approx(2 / 3)


def test_against_numpy_and_scipy():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 5, 30)
    pred = true + rng.normal(0, 0.5, 30)
    m = quality_metrics(pred, true)
    assert m["mse"] == pytest.approx(np.mean((pred - true) ** 2))
    assert m["lcc"] == pytest.approx(np.corrcoef(pred, true)[0, 1])
    assert m["srcc"] == pytest.approx(stats.spearmanr(pred, true)[0])
    assert m["ktau"] == pytest.approx(stats.kendalltau(pred, true)[0])


def test_perfect_and_reversed_ranking():
    true = [1.0, 2.0, 3.5, 4.0, 5.0]
    perfect = quality_metrics([x * 2 + 1 for x in true], true)
    reverse = quality_metrics([-x for x in true], true)
    for key in ("lcc", "srcc", "ktau"):
        assert perfect[key] == pytest.approx(1.0)
        assert reverse[key] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "pred,true",
    [([], []), ([3.0], [2.0]), ([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]), ([1, 2, 3], [4, 4, 4])],
)
def test_undefined_correlations_are_nan(pred, true, recwarn):
    m = quality_metrics(pred, true)
    assert all(math.isnan(m[k]) for k in ("lcc", "srcc", "ktau"))
    assert m["count"] == len(pred)
    assert math.isnan(m["mse"]) == (len(pred) == 0)
    assert not recwarn.list


def test_nan_prediction_gives_nan_not_crash():
    m = quality_metrics([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(m["mse"]) and math.isnan(m["lcc"])


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length"):
        quality_metrics([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="differ in length"):
        system_level([1, 2], [1, 2], ["a"])


def test_system_level_averages_per_system():
    # System a: pred (1,3) -> 2, true (1,2) -> 1.5; b: pred 4 -> 4, true 3 -> 3;
    # c: pred (5,6,7) -> 6, true (4,5,3) -> 4.
    pred = [1, 4, 3, 5, 6, 7]
    true = [1, 3, 2, 4, 5, 3]
    systems = ["a", "b", "a", "c", "c", "c"]
    ids, mean_pred, mean_true = system_means(pred, true, systems)
    assert ids == ["a", "b", "c"]
    np.testing.assert_allclose(mean_pred, [2, 4, 6])
    np.testing.assert_allclose(mean_true, [1.5, 3, 4])
    m = system_level(pred, true, systems)
    assert m["count"] == 3
    # Errors 0.5, 1, 2 -> MSE (0.25 + 1 + 4) / 3.
    assert m["mse"] == pytest.approx(5.25 / 3)
    assert m["srcc"] == pytest.approx(1.0)
    assert m["ktau"] == pytest.approx(1.0)
    assert m["lcc"] == pytest.approx(np.corrcoef([2, 4, 6], [1.5, 3, 4])[0, 1])


def test_evaluate_and_format():
    result = evaluate_predictions([1, 2, 3, 4], [1, 2, 3, 5], systems=["x", "x", "y", "y"])
    assert result["count"] == 4
    assert result["utterance"]["count"] == 4
    assert result["system"]["count"] == 2
    assert math.isnan(result["system"]["ktau"]) is False
    table = format_metrics(result, title="omq")
    lines = table.splitlines()
    assert lines[0] == "omq"
    assert lines[1].split() == ["level", "count", "MSE", "LCC", "SRCC", "KTAU"]
    assert lines[2].split()[:2] == ["utterance", "4"]
    assert lines[3].split()[:2] == ["system", "2"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned

    no_systems = evaluate_predictions([1, 2], [2, 1])
    assert no_systems["system"] is None
    assert len(format_metrics(no_systems).splitlines()) == 2
    single = format_metrics(quality_metrics([1.0], [2.0]))
    assert "nan" in single and single.splitlines()[1].split()[0] == "all"
