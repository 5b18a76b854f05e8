import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from mos_predictor.level_rules import QualityStatsError
from mos_predictor.quality_stats import RELEASED_STATS, QualityStats, fit_quality_stats
from mos_predictor.stats import QUALITY_PLOT_NAME, label_manifest_quality, run_stats
from mos_predictor.stats_plot import plot_quality_distribution
from qamdt.errors import ConfigError
from qamdt.manifest import ClipRecord, read_manifest, write_manifest
from qamdt.quality import PREFIXES, QUALITY_STATS_NAME, with_prefix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def skewed_scores(n=20000, seed=0, a=-4.0, loc=4.1, scale=0.35):
    return sps.skewnorm.rvs(a, loc=loc, scale=scale, size=n, random_state=seed)


def make_manifest(tmp_path, scores, name="manifest.jsonl"):
    records = [
        ClipRecord(
            id=f"c{i}",
            audio=f"audio/c{i}.wav",
            original_caption=f"caption {i}",
            pmos=None if s is None else float(s),
        )
        for i, s in enumerate(scores)
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    write_manifest(path, records)
    return path


# --- level rules --------------------------------------------------------------------------


def test_five_bin_levels_around_every_edge():
    st = QualityStats.from_mu_sigma(3.0, 0.5)  # binary-exact edges 2.0, 2.5, 3.5, 4.0
    assert st.level_rule == "five-bin"
    assert st.level_edges == (2.0, 2.5, 3.5, 4.0)
    cases = {
        0.0: 1,
        1.999: 1,
        2.0: 2,  # on the edge: the upper bin
        2.499: 2,
        2.5: 3,
        3.0: 3,
        3.499: 3,
        3.5: 4,
        3.999: 4,
        4.0: 5,
        5.0: 5,
    }
    for score, level in cases.items():
        assert st.level_for(score) == level, score
    got = st.levels_for(np.array(list(cases)))
    assert got.dtype == np.int64
    assert got.tolist() == list(cases.values())


def test_released_five_bin_edges_and_exact_edge_scores():
    st = RELEASED_STATS
    assert (st.mu, st.sigma) == (3.80, 0.20)
    assert st.level_edges == pytest.approx((3.4, 3.6, 4.0, 4.2))
    for level, edge in zip((2, 3, 4, 5), st.level_edges, strict=True):
        assert st.level_for(edge) == level
        assert st.level_for(np.nextafter(edge, -np.inf)) == level - 1
    assert st.level_for(3.8) == 3
    assert st.levels_for(np.array([[3.0, 4.5], [3.7, 4.1]])).tolist() == [[1, 5], [3, 4]]


def test_eq1_literal_formula():
    st = QualityStats.from_mu_sigma(3.0, 0.5, level_rule="eq1")
    # Q(s) = floor((s - (mu - 2 sigma)) / sigma) + r, r = 2 for s > mu else 1, clipped.
    for s in np.linspace(0.0, 5.0, 501):
        r = 2 if s > 3.0 else 1
        expected = min(max(math.floor((s - 2.0) / 0.5) + r, 1), 5)
        assert st.level_for(s) == expected, s
    cases = {
        1.0: 1,  # formula gives -1: clipped
        2.0: 1,  # mu - 2 sigma
        2.499: 1,
        2.5: 2,  # mu - sigma
        2.999: 2,
        3.0: 3,  # mu itself: the only score with level 3
        3.001: 4,
        3.499: 4,
        3.5: 5,  # mu + sigma
        4.5: 5,  # formula gives 7: clipped
    }
    assert st.levels_for(np.array(list(cases))).tolist() == list(cases.values())
    assert st.level_edges == (2.5, 3.0, 3.0, 3.5)


def test_eq1_skips_level_three_except_at_mu():
    st = QualityStats.from_mu_sigma(3.8, 0.2, level_rule="eq1")
    scores = np.linspace(2.0, 5.0, 30001)
    scores = scores[scores != 3.8]
    levels = st.levels_for(scores)
    assert 3 not in set(levels.tolist())
    assert set(levels.tolist()) == {1, 2, 4, 5}
    assert st.level_for(3.8) == 3
    assert st.level_for(st.mu - st.sigma) == 2
    assert st.level_for(st.mu + st.sigma) == 5
    assert st.level_for(np.nextafter(3.8, 0)) == 2
    assert st.level_for(np.nextafter(3.8, 5)) == 4
    fitted = fit_quality_stats(skewed_scores(), level_rule="eq1")
    assert fitted.level_counts[3] == 0
    assert sum(fitted.level_counts.values()) == fitted.count


def test_explicit_level_edges():
    st = fit_quality_stats(skewed_scores(2000), level_edges=[2.0, 3.0, 3.5, 4.0])
    assert st.level_rule == "edges"
    assert st.levels_for([1.9, 2.0, 3.2, 3.5, 4.0]).tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="increasing"):
        fit_quality_stats(skewed_scores(200), level_edges=[2.0, 3.0, 3.0, 4.0])
    with pytest.raises(ConfigError, match="four"):
        fit_quality_stats(skewed_scores(200), level_edges=[2.0, 3.0, 4.0])
    with pytest.raises(ConfigError, match="level_rule"):
        fit_quality_stats(skewed_scores(200), level_rule="eq1", level_edges=[1, 2, 3, 4])
    with pytest.raises(ConfigError, match="level_rule"):
        fit_quality_stats(skewed_scores(200), level_rule="seven-bin")


def test_non_finite_score_has_no_label():
    with pytest.raises(QualityStatsError, match="finite"):
        RELEASED_STATS.level_for(float("nan"))
    with pytest.raises(QualityStatsError, match="finite"):
        RELEASED_STATS.prefixes_for([3.0, float("inf")])


# --- prefixes -----------------------------------------------------------------------------


def test_released_prefix_thresholds_are_inclusive():
    st = RELEASED_STATS
    assert st.prefix_sigmas == 1.25
    assert st.low_below == 3.55
    assert st.high_from == 4.05
    assert st.prefix_for(3.55) == "low quality"
    assert st.prefix_for(np.nextafter(3.55, 5)) == "medium quality"
    assert st.prefix_for(3.8) == "medium quality"
    assert st.prefix_for(np.nextafter(4.05, 0)) == "medium quality"
    assert st.prefix_for(4.05) == "high quality"
    assert st.prefix_for(1.0) == "low quality"
    assert st.prefix_for(5.0) == "high quality"
    got = st.prefixes_for(np.array([3.0, 3.55, 3.9, 4.05, 4.6]))
    assert got.tolist() == [
        "low quality",
        "low quality",
        "medium quality",
        "high quality",
        "high quality",
    ]


def test_prefix_sigmas_and_absolute_thresholds():
    scores = skewed_scores(5000)
    st = fit_quality_stats(scores, prefix_sigmas=1.0)
    assert st.prefix_thresholds == pytest.approx((st.mu - st.sigma, st.mu + st.sigma))
    st = fit_quality_stats(scores, prefix_thresholds=(3.5, 4.0))
    assert st.prefix_thresholds == (3.5, 4.0)
    assert st.prefix_sigmas is None
    assert sum(st.prefix_counts.values()) == scores.size
    assert st.prefix_counts["low quality"] == int((scores <= 3.5).sum())
    assert st.prefix_counts["high quality"] == int((scores >= 4.0).sum())
    with pytest.raises(ConfigError, match="below"):
        fit_quality_stats(scores, prefix_thresholds=(4.0, 3.5))


def test_with_prefix():
    assert with_prefix("a calm piano piece", "high quality") == "high quality, a calm piano piece"
    assert with_prefix("", "low quality") == "low quality"
    assert with_prefix(None, "low quality") == "low quality"
    assert with_prefix("  ", "medium quality") == "medium quality"
    assert with_prefix("jazz", None) == "jazz"


# --- fitting ------------------------------------------------------------------------------


def test_fit_recovers_skewnorm_and_matches_numpy():
    scores = skewed_scores(n=50000, seed=1, a=-4.0, loc=4.1, scale=0.35)
    st = fit_quality_stats(scores)
    assert st.count == scores.size
    assert st.mu == pytest.approx(np.mean(scores), rel=1e-12)
    assert st.sigma == pytest.approx(np.std(scores), rel=1e-12)  # population std
    fit = st.skewnorm
    assert fit.a == pytest.approx(-4.0, rel=0.15)
    assert fit.loc == pytest.approx(4.1, abs=0.02)
    assert fit.scale == pytest.approx(0.35, rel=0.05)
    mean, var, skew = sps.skewnorm.stats(-4.0, loc=4.1, scale=0.35, moments="mvs")
    assert fit.mean == pytest.approx(float(mean), abs=0.01)
    assert fit.std == pytest.approx(math.sqrt(float(var)), rel=0.03)
    assert fit.skewness == pytest.approx(float(skew), abs=0.1)
    assert fit.skewness < 0
    assert sum(st.level_counts.values()) == scores.size
    levels = st.levels_for(scores)
    assert st.level_counts == {lv: int((levels == lv).sum()) for lv in range(1, 6)}


def test_fit_errors_name_the_problem():
    with pytest.raises(QualityStatsError, match="at least 2"):
        fit_quality_stats([3.5])
    with pytest.raises(QualityStatsError, match="at least 2"):
        fit_quality_stats([])
    with pytest.raises(QualityStatsError, match="zero variance"):
        fit_quality_stats([3.5, 3.5, 3.5])
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(QualityStatsError):
        fit_quality_stats([3.5, float("nan")])


# --- save / load --------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    st = fit_quality_stats(skewed_scores(3000), prefix_thresholds=(3.5, 4.0))
    path = st.save(tmp_path / "sub" / QUALITY_STATS_NAME)
    assert QualityStats.load(path) == st
    assert json.loads(path.read_text())["level_counts"].keys() == {"1", "2", "3", "4", "5"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    eq1 = fit_quality_stats(skewed_scores(3000), level_rule="eq1")
    assert QualityStats.load(eq1.save(tmp_path / "eq1.json")) == eq1
    assert QualityStats.load(RELEASED_STATS.save(tmp_path / "rel.json")) == RELEASED_STATS


def test_load_rejects_unknown_and_missing_keys(tmp_path):
    d = RELEASED_STATS.to_dict()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**d, "sigmaa": 0.2}))
    with pytest.raises(ConfigError, match="unknown key.*'sigmaa'.*did you mean 'sigma'"):
        QualityStats.load(path)
    st = fit_quality_stats(skewed_scores(500))
    d = st.to_dict()
    d["skewnorm"]["shape"] = 1.0
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="shape"):
        QualityStats.load(path)
    d = RELEASED_STATS.to_dict()
    del d["mu"]
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="missing key.*'mu'"):
        QualityStats.load(path)


def test_load_rejects_inconsistent_edges(tmp_path):
    d = RELEASED_STATS.to_dict()
    d["mu"] = 3.5
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="do not match"):
        QualityStats.load(path)


# --- manifests ----------------------------------------------------------------------------


def test_label_manifest_quality(tmp_path):
    rng = np.random.default_rng(0)
    scores = list(rng.normal(3.8, 0.3, size=40))
    scores[3] = None
    scores[17] = None
    path = make_manifest(tmp_path, scores)
    before = {r.id: r for r in read_manifest(path)}

    st = label_manifest_quality(path)
    finite = np.array([s for s in scores if s is not None])
    assert st.count == finite.size
    assert st.mu == pytest.approx(finite.mean())
    assert st.sigma == pytest.approx(finite.std())

    after = read_manifest(path)
    assert [r.id for r in after] == list(before)
    for r in after:
        if r.pmos is None:
            assert r == before[r.id]
            assert r.quality_level is None and r.quality_prefix is None
        else:
            assert r.quality_level == st.level_for(r.pmos)
            assert r.quality_prefix == st.prefix_for(r.pmos)
            assert r.quality_prefix in PREFIXES
            assert r.original_caption == before[r.id].original_caption
            assert r.final_caption is None
            assert r.audio == before[r.id].audio

    # Reusing the stats on a copy gives the same labels, written to another file.
    copy = make_manifest(tmp_path, scores, name="copy.jsonl")
    out = tmp_path / "out" / "labelled.jsonl"
    reused = label_manifest_quality(copy, out_path=out, stats=st)
    assert reused is st
    assert [(r.quality_level, r.quality_prefix) for r in read_manifest(out)] == [
        (r.quality_level, r.quality_prefix) for r in after
    ]
    assert read_manifest(out)[0].audio == "../audio/c0.wav"
    assert all(r.quality_level is None for r in read_manifest(copy))

    saved = st.save(tmp_path / QUALITY_STATS_NAME)
    label_manifest_quality(copy, stats=saved)
    assert [r.quality_level for r in read_manifest(copy)] == [r.quality_level for r in after]


def test_label_manifest_new_data_with_training_stats(tmp_path):
    path = make_manifest(tmp_path, [3.0, 3.55, 3.8, 4.05, 4.5])
    st = label_manifest_quality(path, stats=RELEASED_STATS)
    assert st is RELEASED_STATS
    rows = read_manifest(path)
    assert [r.quality_level for r in rows] == [1, 2, 3, 4, 5]
    assert [r.quality_prefix for r in rows] == [
        "low quality",
        "low quality",
        "medium quality",
        "high quality",
        "high quality",
    ]


def test_label_manifest_errors(tmp_path):
    path = make_manifest(tmp_path, [None, None])
    with pytest.raises(QualityStatsError, match="no row has a pmos"):
        label_manifest_quality(path)
    path = make_manifest(tmp_path, [3.7], name="one.jsonl")
    with pytest.raises(QualityStatsError, match="one.jsonl.*at least 2"):
        label_manifest_quality(path)
    with pytest.raises(ConfigError, match="level_rule"):
        label_manifest_quality(path, stats=RELEASED_STATS, level_rule="eq1")


def test_run_stats(tmp_path):
    scores = list(skewed_scores(300, seed=3)) + [None]
    path = make_manifest(tmp_path, scores)
    summary = run_stats(path)
    assert summary["rows"] == 301
    assert summary["labelled"] == 300
    assert summary["fitted"] is True
    assert summary["stats"] == str(tmp_path / QUALITY_STATS_NAME)
    assert summary["plot"] == str(tmp_path / QUALITY_PLOT_NAME)
    assert sum(summary["level_counts"].values()) == 300
    assert sum(summary["prefix_counts"].values()) == 300
    assert summary["skewnorm"]["a"] < 0
    json.dumps(summary)
    st = QualityStats.load(summary["stats"])
    assert st.mu == summary["mu"]
    assert (tmp_path / QUALITY_PLOT_NAME).read_bytes().startswith(PNG_MAGIC)

    other = make_manifest(tmp_path / "new", [3.0, 4.5])
    summary = run_stats(other, stats=summary["stats"], plot=False)
    assert summary["fitted"] is False
    assert summary["plot"] is None
    assert summary["level_counts"] == {1: 1, 2: 0, 3: 0, 4: 0, 5: 1}
    assert QualityStats.load(tmp_path / "new" / QUALITY_STATS_NAME) == st


# --- picture ------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["five-bin", "eq1"])
def test_plot_is_png(tmp_path, rule):
    scores = skewed_scores(2000)
    st = fit_quality_stats(scores, level_rule=rule)
    out = plot_quality_distribution(scores, st, tmp_path / "pics" / "q.png", title="test")
    assert out.read_bytes().startswith(PNG_MAGIC)
    out = plot_quality_distribution(scores, RELEASED_STATS, tmp_path / "released.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(QualityStatsError):
        plot_quality_distribution([], st, tmp_path / "empty.png")


def test_quantile_rule_fills_every_level_of_a_flat_set():
    from mos_predictor.level_rules import NORMAL_LEVEL_SHARES

    flat = np.linspace(1.0, 5.0, 1001)
    five_bin = fit_quality_stats(flat)
    assert five_bin.level_counts[1] == 0 and five_bin.level_counts[5] == 0
    quantile = fit_quality_stats(flat, level_rule="quantile")
    shares = np.array([quantile.level_counts[k] for k in (1, 2, 3, 4, 5)]) / flat.size
    np.testing.assert_allclose(shares, NORMAL_LEVEL_SHARES, atol=0.003)
    quintiles = fit_quality_stats(flat, level_rule="quantile", level_shares=[0.2] * 5)
    counts = [quintiles.level_counts[k] for k in (1, 2, 3, 4, 5)]
    assert sum(counts) == 1001 and all(abs(c - 200) <= 1 for c in counts)


def test_quantile_rule_matches_five_bin_on_a_normal_set():
    scores = np.random.default_rng(0).normal(3.8, 0.2, 200_000)
    a = fit_quality_stats(scores)
    b = fit_quality_stats(scores, level_rule="quantile")
    np.testing.assert_allclose(a.level_edges, b.level_edges, atol=0.005)


def test_quantile_rule_rejects_bad_shares_and_round_trips(tmp_path):
    from qamdt.errors import ConfigError

    scores = np.linspace(1, 5, 100)
    with pytest.raises(ConfigError, match="level_shares"):
        fit_quality_stats(scores, level_rule="quantile", level_shares=[0.5, 0.5])
    with pytest.raises(ConfigError, match="level_shares only apply"):
        fit_quality_stats(scores, level_shares=[0.2] * 5)
    stats = fit_quality_stats(scores, level_rule="quantile")
    stats.save(tmp_path / "s.json")
    assert QualityStats.load(tmp_path / "s.json") == stats
