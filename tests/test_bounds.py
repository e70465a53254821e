"""Confidence bounds on the population bare margin (teachers/certificate.py, "Statistical
certificate", issue 12), checked on synthetic populations with a known G (teachers/simulation.py)."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from teachers import simulation as sim
from teachers.bounds import CLIP_ETA, REFERENCE_FRACTION, _bet_fractions, _betting_lcb, _kl_upper, _kl_weight
from teachers.certificate import bare_margin, bh_adjust, clip_witness, margin_bounds, margin_pvalue, spent_alpha

ALPHA = sim.ALPHA


@pytest.fixture(scope="module")
def populations() -> dict[str, sim.Population]:
    return {pop.name: pop for pop in sim.default_populations()}


@pytest.fixture(scope="module")
def studies(populations) -> dict[str, sim.CoverageStudy]:
    """300 independent (training reference, evaluation draw) pairs per population, look 1."""
    return {name: sim.coverage_study(pop, reps=300, seed=11) for name, pop in populations.items()}


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    pos = p > 0
    return float((p[pos] * np.log(p[pos] / q[pos])).sum())


# ---------- the populations: exact G ----------


def test_exact_margin_is_teacher_mi_minus_alignment(populations):
    # Independent form: G = sum_m p_m KL(T_m || Tbar) - sum_m p_m KL(T_m || S'_m).
    for pop in populations.values():
        S_clip, tbar = clip_witness(pop.S), pop.probs @ pop.T
        mi = sum(p * _kl(t, tbar) for p, t in zip(pop.probs, pop.T))
        align = sum(p * _kl(t, s) for p, t, s in zip(pop.probs, pop.T, S_clip))
        assert pop.margin() == pytest.approx(mi - align, abs=1e-12)


def test_exact_margin_matches_a_million_row_plugin(populations):
    pop = populations["softmax-Gaussian K=10"]
    T, S = pop.draw(1_000_000, np.random.default_rng(5))
    S_clip = clip_witness(S)
    # Influence function of the plug-in: <T_i, log S'_i> + H(Tbar) linearised is <T_i, log(S'_i / Tbar)>.
    per_row = (T * np.log(S_clip / (pop.probs @ pop.T))).sum(axis=1)
    tolerance = 5 * per_row.std() / 1000 + T.shape[1] / 1e6  # 5 standard errors + the plug-in bias
    assert abs(bare_margin(T, S_clip) - pop.margin()) < tolerance


def test_identity_g_equals_mean_term_minus_kl(populations):
    # G = E[d] - KL(Tbar || q) for ANY reference q: the identity the bounds rest on.
    rng = np.random.default_rng(0)
    for pop in populations.values():
        k = pop.T.shape[1]
        q = rng.dirichlet(np.ones(k))
        mean_d = float(pop.probs @ (pop.T * np.log(clip_witness(pop.S) / q)).sum(axis=1))
        assert pop.margin() == pytest.approx(mean_d - _kl(pop.probs @ pop.T, q), abs=1e-12)


def test_null_witness_is_non_constant_with_zero_margin():
    for pop in sim.null_populations():
        assert abs(pop.margin()) < 1e-12
        assert pop.S.std(axis=0).max() > 0.1  # far from a constant witness


# ---------- the main guarantees ----------


def test_coverage_of_lower_and_upper(studies):
    for name, study in studies.items():
        assert study.lower.size >= 300
        assert study.lower_coverage >= 1 - ALPHA, name
        assert study.upper_coverage >= 1 - ALPHA, name
        assert (study.lower <= study.plugin).all() and (study.plugin <= study.upper).all(), name


def test_null_witness_rarely_certified_over_twenty_looks():
    # n = 1000 rows per look keeps this test inside its time budget; the guarantee holds for every n
    # (python -m teachers.simulation prints the n = 2000 figure).
    pop = sim.null_populations()[0]
    rate = sim.false_certificate_rate(pop, sequences=300, looks=20, n=1000, seed=3)
    assert rate <= ALPHA


def test_width_within_four_clt_radii(studies):
    # Acceptance criterion of issue 12; python -m teachers.simulation prints the measured ratios.
    for name, study in studies.items():
        assert study.width_ratio <= 4.0, (name, study.width_ratio)
    demo = studies["softmax-Gaussian K=10"]
    assert demo.width_ratio > 1.0  # a bound narrower than the CLT radius would be suspicious


def test_width_shrinks_like_one_over_sqrt_n(populations):
    ratio = sim.scaling_ratio(populations["softmax-Gaussian K=10"], n=2000, factor=4, reps=60, seed=7)
    assert 1.6 <= ratio <= 2.5, ratio  # 1/sqrt(n) gives 2; the 1/n part of the KL bound pushes it up


@pytest.mark.parametrize("which", ["population mean", "sample mean", "skewed"])
def test_constant_student_never_certified(populations, which):
    pop = populations["softmax-Gaussian K=10"]
    rng = np.random.default_rng(2)
    k = pop.T.shape[1]
    for draw in range(100):
        reference = pop.reference(rng)
        T, _ = pop.draw(2000, rng)
        c = {"population mean": pop.probs @ pop.T, "sample mean": T.mean(axis=0),
             "skewed": rng.dirichlet(np.ones(k))}[which]
        S = np.broadcast_to(c / c.sum(), T.shape)
        assert margin_bounds(T, S, reference=reference)[0] <= 0.0
        if draw < 20:
            assert margin_bounds(T, S, look=3)[0] <= 0.0  # reference=None path
    assert margin_pvalue(T, S, reference=reference) == 1.0


def test_bounds_grow_apart_with_the_look(populations):
    T, S = populations["softmax-Gaussian K=10"].draw(2000, np.random.default_rng(4))
    bounds = [margin_bounds(T, S, look=t) for t in (1, 2, 10, 100)]
    lowers, uppers = zip(*bounds)
    assert all(a > b for a, b in zip(lowers, lowers[1:]))
    assert all(a < b for a, b in zip(uppers, uppers[1:]))
    assert spent_alpha(0.05, 1) == pytest.approx(0.05 * 6 / math.pi**2)
    assert sum(spent_alpha(0.05, t) for t in range(1, 200_000)) == pytest.approx(0.05, rel=1e-5)


# ---------- the two ingredients on their own ----------


def test_kl_weight_closed_form_and_monotone():
    near_one = 1.0 + np.linspace(-2e-3, 2e-3, 41)
    t = np.concatenate([[0.0, 1e-12], np.linspace(0.01, 5.0, 999), near_one])
    w = _kl_weight(t)
    s = (np.arange(20000) + 0.5) / 20000  # midpoint rule for w(t) = int_0^1 (1 - s)/(1 + s(t - 1)) ds
    integral = np.array([np.mean((1 - s) / (1 + s * (ti - 1))) for ti in t])
    assert w == pytest.approx(integral, abs=1e-6)
    order = np.argsort(t)
    assert (np.diff(w[order]) <= 1e-15).all()  # decreasing
    assert (np.diff((t * w)[order]) >= -1e-15).all()  # t w(t) increasing
    e = np.concatenate([-np.logspace(-5, -3.01, 20), np.logspace(-5, -3.01, 20)])
    closed = ((1 + e) * np.log1p(e) - e) / e**2  # accurate here: no cancellation beyond ~1e-6
    assert (_kl_weight(1 + e) >= closed - 1e-9).all()  # the series branch is an upper bound
    assert _kl_weight(1 + e) == pytest.approx(closed, abs=1e-8)
    p, q = np.random.default_rng(0).dirichlet(np.ones(7), size=2)
    weighted_chi2 = float((q * _kl_weight(p / q) * (p / q - 1) ** 2).sum())
    assert _kl(p, q) == pytest.approx(weighted_chi2, rel=1e-12)  # KL = sum_k q_k w(t_k) (t_k - 1)^2


def test_kl_upper_bound_coverage_with_a_poor_reference(populations):
    # q from only 300 training rows (far from Tbar): the KL term matters; K = 100.
    pop = populations["softmax-Gaussian K=100"]
    tbar, rng, delta = pop.probs @ pop.T, np.random.default_rng(8), 0.05
    misses, gaps = 0, []
    for _ in range(300):
        ref = pop.reference(rng, n_train=300)
        q = 0.99 * ref + 0.01 / ref.size
        t_hat = pop.draw(2000, rng)[0].mean(axis=0)
        bound = _kl_upper(t_hat, 2000, q, delta)
        misses += _kl(tbar, q) > bound
        gaps.append(bound - _kl(t_hat, q))
    assert misses / 300 <= delta
    assert np.median(gaps) > 0  # the bound sits above the plug-in KL


def test_betting_lower_bound_coverage_on_skewed_data():
    # Y ~ 10 * Beta(0.5, 3) (mean 10/7, skewed), n = 200, level 0.2: misses <= 0.2 of 1000 draws.
    rng, level, mean = np.random.default_rng(9), 0.2, 10 / 7
    bounds = []
    for _ in range(1000):
        Y = 10 * rng.beta(0.5, 3.0, size=200)
        bounds.append(_betting_lcb(Y, level, _bet_fractions(Y, level), 10.0))
    bounds = np.array(bounds)
    assert np.mean(bounds > mean) <= level
    radius = 0.8416 * 10 * math.sqrt(0.5 * 3 / (3.5**2 * 4.5)) / math.sqrt(200)  # one-sided CLT, 0.2
    assert np.median(mean - bounds) < 3 * radius  # valid AND not vacuous


# ---------- reference=None, p-values, errors ----------


def test_reference_none_uses_a_held_out_quarter(populations):
    T, S = populations["softmax-Gaussian K=10"].draw(400, np.random.default_rng(1))
    base = margin_bounds(T, S)
    held_out = np.random.default_rng(0).permutation(400)[: round(REFERENCE_FRACTION * 400)]
    S2 = S.copy()
    S2[held_out] = 1.0 / S.shape[1]  # witness rows of the reference part never enter the bounds
    assert margin_bounds(T, S2) == base
    T2 = T.copy()
    T2[held_out] = np.eye(S.shape[1])[0]  # but their teacher rows set q
    assert margin_bounds(T2, S) != base
    assert margin_bounds(T, S) == base  # deterministic
    # A valid bound either way: the population margin is 1.19, the plug-in on 300 rows about that.
    assert base[0] < populations["softmax-Gaussian K=10"].margin() < base[1]


def test_pvalue_matches_the_nested_bounds(populations):
    rng = np.random.default_rng(6)
    weak = sim.softmax_gaussian(10, witness_noise=2.0)
    cases = [populations["softmax-Gaussian K=10"].draw(300, rng), weak.draw(150, rng),
             weak.draw(300, rng), sim.null_populations()[0].draw(2000, rng)]
    levels = np.concatenate([np.logspace(-14, -0.01, 30), [0.05]])
    for look, (T, S) in zip([1, 2, 1, 5], cases):
        p = margin_pvalue(T, S, look=look, alpha=0.05)
        assert 0.0 < p <= 1.0
        for a in levels:
            if abs(a - p) <= 1e-6 * p:
                continue
            certified = margin_bounds(T, S, alpha=a, look=look, tune_alpha=0.05)[0] > 0.0
            assert (p <= a) == certified, (p, a)
        assert (p <= 0.05) == (margin_bounds(T, S, alpha=0.05, look=look)[0] > 0.0)
    assert any(1e-12 < margin_pvalue(T, S) < 0.5 for T, S in cases[1:3])  # a non-trivial p exists


def _bh_by_definition(p: np.ndarray, a: float) -> np.ndarray:
    """Step-up BH rejections at level a, straight from the definition (NaN never rejected)."""
    finite = ~np.isnan(p)
    m = finite.sum()
    ranked = np.sort(p[finite])
    passing = [i for i in range(1, m + 1) if ranked[i - 1] <= i * a / m]
    if not passing:
        return np.zeros(p.shape, dtype=bool)
    return finite & (np.nan_to_num(p, nan=2.0) <= ranked[max(passing) - 1])


def test_bh_adjust_known_example_and_definition():
    adjusted = bh_adjust([0.01, 0.04, 0.03, 0.005, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.02, 0.04, 0.04, 0.02], rtol=1e-12)
    assert np.isnan(adjusted[4])
    np.testing.assert_array_equal(bh_adjust([0.5, 0.9]), [0.9, 0.9])
    np.testing.assert_array_equal(bh_adjust([0.8, 0.9, 1.0]), [1.0, 1.0, 1.0])
    assert bh_adjust([]).size == 0 and np.isnan(bh_adjust([np.nan])).all()
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = np.where(rng.random(30) < 0.5, rng.random(30) * 0.02, rng.random(30))
        p[rng.random(30) < 0.1] = np.nan
        adj = bh_adjust(p)
        order = np.argsort(np.nan_to_num(p, nan=2.0))
        finite_sorted = adj[order][~np.isnan(adj[order])]
        assert (np.diff(finite_sorted) >= 0).all()  # monotone in p
        for a in (0.001, 0.01, 0.05, 0.2):
            np.testing.assert_array_equal(np.nan_to_num(adj, nan=2.0) <= a, _bh_by_definition(p, a))


def test_errors(populations):
    T, S = populations["softmax-Gaussian K=10"].draw(50, np.random.default_rng(0))
    bad = T.copy()
    bad[3, 0] += 0.5
    cases = [
        (dict(T=bad, S=S), "T row 3 sums to"),
        (dict(T=T, S=S[:, :5] / S[:, :5].sum(axis=1, keepdims=True)), "shape mismatch"),
        (dict(T=T, S=S, reference=np.ones(9) / 9), "length K = 10"),
        (dict(T=T, S=S, reference=np.full(10, 0.2)), "reference row 0 sums to"),
        (dict(T=T[:1], S=S[:1]), "at least 2 rows"),
        (dict(T=T, S=S, alpha=0.0), "alpha must be in"),
        (dict(T=T, S=S, alpha=1.0), "alpha must be in"),
        (dict(T=T, S=S, alpha=float("nan")), "alpha must be in"),
        (dict(T=T, S=S, alpha=True), "alpha must be a real number"),
        (dict(T=T, S=S, alpha="0.05"), "alpha must be a real number"),
        (dict(T=T, S=S, look=0), "look must be an int >= 1"),
        (dict(T=T, S=S, look=2.0), "look must be an int >= 1"),
        (dict(T=T, S=S, look=True), "look must be an int >= 1"),
        (dict(T=T, S=S, tune_alpha=1.5), "tune_alpha must be in"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            margin_bounds(**kwargs)
    with pytest.raises(ValueError, match="alpha must be in"):
        margin_pvalue(T, S, alpha=2.0)
    with pytest.raises(ValueError, match="look must be"):
        margin_pvalue(T, S, look=0)
    with pytest.raises(ValueError, match="1-D"):
        bh_adjust(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bh_adjust([0.5, 1.5])


def test_clipping_is_the_certified_witness():
    S = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(clip_witness(S), (1 - CLIP_ETA) * S + CLIP_ETA / 3)
    assert 1e-4 <= CLIP_ETA <= 1e-2
    # A witness that rules out a teacher component: the raw margin is -inf, the clipped one is finite.
    T = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]] * 50)
    S = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]] * 50)
    assert bare_margin(T, S) == -math.inf
    assert all(math.isfinite(b) for b in margin_bounds(T, S))


def test_bounds_functions_take_their_arguments_in_one_order():
    """margin_bounds and margin_pvalue: (T, S, alpha, look, reference), so a positional call means
    the same in both."""
    order = [list(inspect.signature(f).parameters)[:5] for f in (margin_bounds, margin_pvalue)]
    assert order[0] == order[1] == ["T", "S", "alpha", "look", "reference"]
