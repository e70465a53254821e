"""Confidence bounds on the POPULATION bare margin, valid over every look of a trial, and
Benjamini-Hochberg across a sweep (issue 12; imports only math and numpy).

teachers/certificate.py computes the certificate on the n evaluation rows (a plug-in). This module
bounds the population margin G = E_x[sum_k T_k log s_k] + H(Tbar) of a FIXED teacher T and
witness s (both fitted on a training split) from n i.i.d. evaluation rows; the method, its
assumptions and its error accounting are in `margin_bounds`' docstring. The functions are
re-exported by teachers.certificate (`margin_bounds`, `margin_pvalue`, `bh_adjust`).
"""

from __future__ import annotations

import math

import numpy as np

from teachers.certificate import Distributions, _to_float64, check_distributions

CLIP_ETA = 1e-2
"""Clipping of the certified witness, S' = (1 - eta) S + eta / K (equal rows stay equal, so S' is
still a z-only, constancy-preserving witness). eta sets the lower support log(eta / K) of the
per-row terms, which caps the betting fractions of the lower bound; in teachers.simulation 1e-2
gave the tightest lower bounds of {1e-4, 1e-3, 1e-2} (its cost, about eta nats of margin on a sharp
witness, is smaller than what the larger bets gain). The CLIPPED witness is the one certified."""

REFERENCE_MIX = 1e-2
"""The reference q is mixed with uniform by this weight, so min_k q_k >= REFERENCE_MIX / K > 0."""

REFERENCE_FRACTION = 0.25
"""With reference=None this fraction of the rows (a seeded permutation) estimates q; the rest are
the sample the bounds use, so q is independent of it."""

MAIN_SHARE = 0.9
"""Share of a look's level alpha_t spent on the lower bound of E[d]; the rest bounds KL(Tbar || q)."""

BET_CAP = 0.75
"""c in the betting fraction lambda_i(mu) = min(lambda*_i, c / mu) (Waudby-Smith & Ramdas use 1/2
or 3/4): every capital factor stays >= 1 - c > 0."""

BET_PRIOR_VARIANCE = 1.0
"""One pseudo-observation of variance (nats^2) that starts the running variance of the bets."""

ORDER_SEED = 0
"""Seed of the fixed permutation of the rows: the betting order and the reference=None split."""

_MU_TOL = 1e-9
"""Bisection tolerance of a betting bound, relative to the support width."""

_P_FLOOR = 1e-300
"""Smallest p-value margin_pvalue returns (the bisection runs over log-levels above it)."""


def spent_alpha(alpha: float, look: int) -> float:
    """Level spent at look t: alpha_t = alpha * 6 / (pi^2 t^2); the sum over t >= 1 is alpha."""
    return alpha * 6.0 / (math.pi**2 * look**2)


def _check_level(alpha: float, look: int, name: str = "alpha") -> None:
    """Raises ValueError unless alpha is a real number in (0, 1) and look an int >= 1."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number in (0, 1), got {alpha!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")
    if isinstance(look, bool) or not isinstance(look, (int, np.integer)) or look < 1:
        raise ValueError(f"look must be an int >= 1 (1 for the first report point), got {look!r}")


def clip_witness(S: Distributions, eta: float = CLIP_ETA) -> np.ndarray:
    """The certified witness S' = (1 - eta) S + eta / K, float64, rows still distributions.

    Args:
        S: (N, K) witness rows.
        eta: clipping weight in [0, 1).

    Returns:
        (N, K) clipped rows; every entry >= eta / K.
    """
    S_arr = check_distributions(S, "S")
    return (1.0 - eta) * S_arr + eta / S_arr.shape[1]


def _check_reference(reference: Distributions, k: int) -> np.ndarray:
    """The reference as a float64 (K,) distribution, or ValueError."""
    ref = _to_float64(reference)
    if ref.shape != (k,):
        raise ValueError(f"reference must be a distribution of length K = {k}, got shape {ref.shape}")
    return check_distributions(ref[None, :], "reference")[0]


def _split_rows(
    T: Distributions, S: Distributions, reference: Distributions | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q, T_sample, S_sample): the mixed reference and the rows independent of it, betting order."""
    T_arr, S_arr = check_distributions(T, "T"), check_distributions(S, "S")
    if T_arr.shape != S_arr.shape:
        raise ValueError(f"shape mismatch: T has shape {T_arr.shape} but S has shape {S_arr.shape}")
    n, k = T_arr.shape
    # A fixed pseudo-random order: a stored order (e.g. sorted by class) cannot steer the bets.
    order = np.random.default_rng(ORDER_SEED).permutation(n)
    if reference is None:
        if n < 2:
            raise ValueError("reference=None splits the rows, so it needs at least 2 rows")
        n_ref = max(1, min(n - 1, int(round(REFERENCE_FRACTION * n))))
        ref, order = T_arr[order[:n_ref]].mean(axis=0), order[n_ref:]
    else:
        ref = _check_reference(reference, k)
    q = (1.0 - REFERENCE_MIX) * ref + REFERENCE_MIX / k  # (K,), min >= REFERENCE_MIX / K
    return q, T_arr[order], S_arr[order]


def _margin_terms(
    T: Distributions, S: Distributions, reference: Distributions | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Per-row terms d_i = sum_k T_ik log(S'_ik / q_k) and what the bounds need.

    Returns:
        d (n,) in betting order, the sample teacher mean (K,), q (K,), and the known support
        [lo, hi] of every d_i.
    """
    q, T_s, S_s = _split_rows(T, S, reference)
    k = T_s.shape[1]
    S_clip = (1.0 - CLIP_ETA) * S_s + CLIP_ETA / k  # (n, K), >= eta / K > 0
    # Both logs are finite (S' > 0, q > 0), so T_ik = 0 contributes exactly 0 (0 log 0 = 0).
    d = (T_s * (np.log(S_clip) - np.log(q))).sum(axis=1)  # (n,)
    # d_i >= min_k log(S'_ik / q_k) >= log(eta / K) - log max q;
    # d_i <= max_k log(S'_ik / q_k) <= log(1 - eta + eta / K) - log min q.
    lo = math.log(CLIP_ETA / k) - math.log(float(q.max()))
    hi = math.log(1.0 - CLIP_ETA + CLIP_ETA / k) - math.log(float(q.min()))
    return d, T_s.mean(axis=0), q, lo, hi


def _bet_fractions(Y: np.ndarray, tune_level: float) -> np.ndarray:
    """Predictable plug-in fractions lambda*_i = sqrt(2 ln(1/a) / (n sigma2_{i-1})), (n,).

    sigma2_{i-1} is a running variance of Y_1..Y_{i-1} started by one pseudo-observation of
    variance BET_PRIOR_VARIANCE, so lambda*_i uses only rows before i (predictable).
    """
    n = Y.size
    t = np.arange(1, n + 1)
    running_mean = np.cumsum(Y) / t  # (n,) mean of Y_1..Y_i
    sq_dev = np.cumsum((Y - running_mean) ** 2)  # (n,)
    var_prev = np.concatenate(([BET_PRIOR_VARIANCE], (BET_PRIOR_VARIANCE + sq_dev[:-1]) / t[1:]))
    return np.sqrt(2.0 * math.log(1.0 / tune_level) / (n * var_prev))


def _excess_log_capital(
    Y: np.ndarray, fractions: np.ndarray, mu: float, log_threshold: float
) -> float:
    """max_t log K_t(mu) - log(1/level), K_t(mu) = prod_{i<=t} (1 + lambda_i (Y_i - mu)).

    >= 0 rejects mu. lambda_i = min(lambda*_i, BET_CAP / mu).
    """
    lam = np.minimum(fractions, BET_CAP / mu)  # (n,); 1 + lam (Y - mu) >= 1 - BET_CAP > 0 as Y >= 0
    return float(np.cumsum(np.log1p(lam * (Y - mu))).max()) - log_threshold


def _betting_lcb(Y: np.ndarray, level: float, fractions: np.ndarray, width: float) -> float:
    """Lower confidence bound on E[Y] for i.i.d. Y_i >= 0: P(E[Y] < bound) <= level.

    The capital K_t(mu) is a nonnegative martingale at mu = E[Y], so by Ville's inequality
    max_t K_t(E[Y]) >= 1/level has probability <= level; K_t(mu) decreases in mu, so the rejected
    mu form an interval (0, m*), and the largest mu verified rejected is a valid bound. It is found
    by regula falsi with the Illinois step on the bracket [rejected, not rejected].
    Returns min(bound, mean Y) (a smaller lower bound stays valid).
    """
    mean, log_threshold = float(Y.mean()), math.log(1.0 / level)
    f_high = _excess_log_capital(Y, fractions, mean, log_threshold) if mean > 0.0 else -1.0
    if f_high >= 0.0:
        return max(mean, 0.0)
    # Bracket [low rejected, high not rejected]. low = 0 is always a valid bound (Y >= 0); a first
    # guess three empirical-Bernstein radii below the mean usually narrows it (speed only).
    high, side = mean, 0
    low = mean - 3.0 * float(Y.std()) * math.sqrt(2.0 * log_threshold / Y.size)
    f_low = _excess_log_capital(Y, fractions, low, log_threshold) if low > 0.0 else -1.0
    if f_low < 0.0:
        high, f_high = (low, f_low) if low > 0.0 else (high, f_high)
        low, f_low = 0.0, _excess_log_capital(Y, fractions, 1e-300, log_threshold)
        if f_low < 0.0:
            return 0.0
    gap = f_low  # true excess log-capital at low; f_low / f_high may be Illinois-halved below
    while high - low > _MU_TOL * width and gap > 1e-9:  # gap ~ 0: low sits on the boundary
        mid = (low * f_high - high * f_low) / (f_high - f_low)
        if not low < mid < high:  # guard the secant step; bisect instead
            mid = 0.5 * (low + high)
        f_mid = _excess_log_capital(Y, fractions, mid, log_threshold)
        if f_mid >= 0.0:
            low, f_low, gap = mid, f_mid, f_mid
            f_high, side = (0.5 * f_high if side == 1 else f_high), 1
        else:
            high, f_high = mid, f_mid
            f_low, side = (0.5 * f_low if side == -1 else f_low), -1
    return low


def _teacher_mean_bounds(t_hat: np.ndarray, n: int, x: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate Bernstein bounds (l_k, u_k) on Tbar_k, each side failing w.p. <= e^{-x}.

    T_k is in [0, 1] with Var T_k <= Tbar_k, so Bernstein's inequality (X <= 1) gives
    |t_hat_k - Tbar_k| < sqrt(2 Tbar_k x / n) + x / (3n) on each side; solved for sqrt(Tbar_k).
    """
    a, c = math.sqrt(x / (2.0 * n)), x / (3.0 * n)
    upper = np.minimum(1.0, (a + np.sqrt(a * a + t_hat + c)) ** 2)  # (K,)
    lower = np.maximum(0.0, np.sqrt(a * a + t_hat - c) - a) ** 2  # (K,), radicand >= x / (6n) > 0
    return lower, upper


def _kl_weight(t: np.ndarray) -> np.ndarray:
    """w(t) = phi(t) / (t - 1)^2 with phi(t) = t log t - t + 1, elementwise; w(0) = 1, w(1) = 1/2.

    w(t) = int_0^1 (1 - s) / (1 + s (t - 1)) ds, so w is decreasing and t w(t) increasing in t.
    Near t = 1 the series sum_j (1 - t)^j / ((j + 1)(j + 2)) is used, plus |t - 1|^3 / 10 (more than
    its remainder), so the value is never below w(t).
    """
    t = np.asarray(t, dtype=np.float64)
    e = t - 1.0
    near = np.abs(e) < 1e-3
    safe_t = np.where(near | (t <= 0.0), 2.0, t)  # placeholder where the closed form is not used
    closed = (safe_t * np.log(safe_t) - safe_t + 1.0) / (safe_t - 1.0) ** 2
    series = 0.5 - e / 6.0 + e * e / 12.0 + np.abs(e) ** 3 / 10.0
    return np.where(t <= 0.0, 1.0, np.where(near, series, closed))


def _kl_upper(t_hat: np.ndarray, n: int, q: np.ndarray, delta: float) -> float:
    """Upper bound on KL(Tbar || q) failing w.p. <= delta (delta/2 direction, delta/2 coordinates).

    With t_k = Tbar_k / q_k, a0_k = sqrt(q_k) (t_k - 1) and the FIXED weights w_k = w(t_k),
    KL(Tbar || q) = sum_k q_k phi(t_k) = |a0|_w^2 exactly (weighted norm |v|_w^2 = sum_k w_k v_k^2).
    a_hat = (t_hat - q)/sqrt q = a0 + mean_i Y_i, Y_i = (T_i - Tbar)/sqrt q centred. With the fixed
    unit direction u = a0/|a0|_w, Cauchy-Schwarz gives
    |a_hat|_w >= <a_hat, u>_w = |a0|_w - mean_i W_i, W_i = -<u, Y_i>_w. W_i <= |Y_i|_w <= |Y_i| <= sqrt(2 / min q) = b (w <= 1) and Var W_i <=
    lambda_max(w^1/2 Cov Y w^1/2) <= max_k w_k t_k (Cov T <= diag Tbar), so Bernstein bounds mean W by
    rho = sqrt(2 sigma2 x / n) + b x / (3n). Per-coordinate bounds l_k <= Tbar_k <= u_k give
    w_k <= w(l_k/q_k) and w_k t_k <= w(u_k/q_k) u_k/q_k. Result: KL <= (|a_hat|_{w(l/q)} + rho)^2,
    and always KL <= -log min q.
    """
    k = q.size
    # 2K coordinate events, delta / (4K) each: delta / 2 in all.
    low, high = _teacher_mean_bounds(t_hat, n, math.log(4.0 * k / delta))
    sigma2 = float(np.max(_kl_weight(high / q) * high / q))
    x = math.log(2.0 / delta)
    rho = math.sqrt(2.0 * sigma2 * x / n) + math.sqrt(2.0 / float(q.min())) * x / (3.0 * n)
    a_hat_w = math.sqrt(float((_kl_weight(low / q) * (t_hat - q) ** 2 / q).sum()))
    return min((a_hat_w + rho) ** 2, -math.log(float(q.min())))


def _lower_at(d: np.ndarray, t_hat: np.ndarray, q: np.ndarray, lo: float, hi: float, level: float,
              fractions: np.ndarray) -> float:
    """Lower bound on G at a look's level: min(LCB_{MAIN_SHARE level} E[d], mean d) - KL bound."""
    lcb = lo + _betting_lcb(d - lo, MAIN_SHARE * level, fractions, hi - lo)
    return lcb - _kl_upper(t_hat, d.size, q, (1.0 - MAIN_SHARE) * level)


def margin_bounds(T: Distributions, S: Distributions, alpha: float = 0.05, look: int = 1,
                  reference: Distributions | None = None, *, tune_alpha: float | None = None) -> tuple[float, float]:
    """One-sided confidence bounds (lower, upper) on the population bare margin of the clipped S'.

    Target: G = E_x[sum_k T_k log S'_k] + H(Tbar), Tbar = E_x T(x), for the certified (clipped)
    witness S' = (1 - CLIP_ETA) S + CLIP_ETA / K. Guarantee: over all looks t = 1, 2, ... of one
    trial, P(exists t: G_t < lower_t) <= alpha and, separately, P(exists t: G_t > upper_t) <= alpha.

    Assumptions: the rows x_i are i.i.d. draws of the population; T and S are fixed functions at the
    look (fitted on a separate training split, not on these rows); `reference` is a distribution over
    K that is independent of these rows (in production the teacher's training-split marginal). Looks
    may reuse the same rows and be arbitrarily dependent: only a union bound is used, so stopping a
    trial or picking a look from these bounds is covered. Not covered: feeding these rows back into
    training (e.g. a guarded schedule that raises lambda from the eval margin), which makes later
    witnesses depend on them; such a schedule must read a separate split.

    Method. q = (1 - REFERENCE_MIX) reference + REFERENCE_MIX / K (reference=None: the mean teacher
    row of a seeded REFERENCE_FRACTION of the rows, which are then left out). Per-row terms
    d_i = sum_k T_ik log(S'_ik / q_k) obey the exact identity G = E[d] - KL(Tbar || q), so
    E[d] - KL(Tbar || q) <= G <= E[d]; d_i lies in the known [lo, hi] = [log(eta/K) - log max q,
    log(1 - eta + eta/K) - log min q].
    - E[d] bounds: betting confidence bounds (Waudby-Smith & Ramdas 2024): for Y_i = d_i - lo >= 0
      (upper: Y_i = hi - d_i) and a candidate mean mu, K_t(mu) = prod_{i<=t} (1 + lambda_i(mu) (Y_i -
      mu)), lambda_i(mu) = min(lambda*_i, BET_CAP / mu), lambda*_i the fixed-n predictable plug-in
      tuned at the FIXED level tune_alpha (its share at this look); reject mu if max_t K_t(mu) >=
      1/level (Ville's inequality).
      Rows are taken in a fixed seeded order. The bound is capped at the sample mean.
    - KL(Tbar || q) upper bound: KL written as a weighted chi2, |a0|_w^2, bounded through the
      projection of the sample error on the FIXED direction a0 (Bernstein, dimension-free) and
      per-coordinate Bernstein bounds on Tbar (see _kl_upper).

    Error accounting at look t, alpha_t = alpha 6 / (pi^2 t^2) (sum_t alpha_t = alpha):
    lower: E[d] LCB at MAIN_SHARE alpha_t; KL bound at (1 - MAIN_SHARE) alpha_t, of which half is the
    direction event and half the 2K coordinate events (each (1 - MAIN_SHARE) alpha_t / (4K));
    upper: E[d] UCB at alpha_t. The bound on KL is never below KL(t_hat || q), so lower <= the
    plug-in margin of S' on the sample rows; for a constant witness that is -KL(t_hat || c') <= 0, so
    a constant witness is never certified, on any draw.

    The KL bound needs no supremum over directions (Bousquet's inequality, sqrt(K / n)): the true
    direction a0 is a population quantity, so one scalar Bernstein bound suffices and the bound is
    (sqrt(KL_hat) + O(sqrt(x / n)))^2, K entering only through log K in the coordinate events.

    Sources: Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting",
    JRSS-B 86 (2024), arXiv:2010.09686 (predictable plug-in bets, truncation c / mu, Ville's
    inequality for the capital); Bernstein's inequality in the one-sided form of Boucheron, Lugosi &
    Massart, "Concentration Inequalities" (OUP 2013), Thm 2.10: independent X_i with
    sum_i E[X_i^2] <= v and sum_i E[(X_i)_+^q] <= q! v c^(q-2) / 2 (q >= 3) have
    P(sum_i (X_i - E X_i) >= sqrt(2 v x) + c x) <= e^{-x}; X_i <= b meets it with c = b / 3
    (E[(X_i)_+^q] <= b^(q-2) E[X_i^2] and q!/2 >= 3^(q-2)).

    Args:
        T: (N, K) teacher rows.
        S: (N, K) witness rows (raw; clipped here).
        alpha: error probability of each one-sided bound, over all looks, in (0, 1).
        look: index t >= 1 of this report point within the trial.
        reference: (K,) distribution independent of these rows, or None to split the rows.
        tune_alpha: level the betting fractions are tuned at (default: alpha); a fixed value makes
            the bounds nested in alpha (margin_pvalue).

    Returns:
        (lower, upper) in nats, lower <= upper.

    Raises:
        ValueError: invalid rows, shapes, reference, alpha, tune_alpha or look.
    """
    _check_level(alpha, look)
    tune = alpha if tune_alpha is None else tune_alpha
    _check_level(tune, look, "tune_alpha")
    d, t_hat, q, lo, hi = _margin_terms(T, S, reference)
    level, tune_level = spent_alpha(float(alpha), look), spent_alpha(float(tune), look)
    lower = _lower_at(d, t_hat, q, lo, hi, level, _bet_fractions(d - lo, MAIN_SHARE * tune_level))
    ucb_gap = _betting_lcb(hi - d, level, _bet_fractions(hi - d, tune_level), hi - lo)
    return lower, hi - ucb_gap


def margin_pvalue(T: Distributions, S: Distributions, alpha: float = 0.05, look: int = 1,
                  reference: Distributions | None = None) -> float:
    """p-value of H0: G <= 0 (no certificate) at this look, for Benjamini-Hochberg across a sweep.

    p = inf{a : lower(a) > 0}, lower(a) = margin_bounds(T, S, a, look, reference,
    tune_alpha=alpha)[0]: the bets are tuned at the FIXED level alpha, so lower(a) is continuous and
    nondecreasing in a (nested family) and p <= a iff lower(a) > 0, up to the bisection tolerance in
    log a (1e-9). Valid: under H0, P(p_t <= a for some look t) <= P(exists t: G_t < lower_t(a)) <= a.

    Args (in margin_bounds' order):
        T, S, look, reference: as in margin_bounds.
        alpha: tuning level of the bets, in (0, 1); p <= alpha iff margin_bounds(..., alpha)[0] > 0.

    Returns:
        p in [_P_FLOOR, 1]; 1.0 when no level below 1 certifies.
    """
    _check_level(alpha, look)
    d, t_hat, q, lo, hi = _margin_terms(T, S, reference)
    fractions = _bet_fractions(d - lo, MAIN_SHARE * spent_alpha(float(alpha), look))

    def certifies(log_a: float) -> bool:
        level = spent_alpha(math.exp(log_a), look)
        return _lower_at(d, t_hat, q, lo, hi, level, fractions) > 0.0

    low, high = math.log(_P_FLOOR), 0.0  # certifies(low) and not certifies(high) after the checks
    if not certifies(high):
        return 1.0
    if certifies(low):
        return _P_FLOOR
    while high - low > 1e-9:
        mid = 0.5 * (low + high)
        low, high = (low, mid) if certifies(mid) else (mid, high)
    return math.exp(high)


def bh_adjust(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: reject H_i at FDR level a iff adjusted_i <= a.

    adjusted_(i) = min_{j >= i} m p_(j) / j over the m non-NaN p-values sorted ascending, clipped
    to 1 (step-up; monotone in p). NaN entries stay NaN and do not count in m. BH controls the FDR
    for independent or positively dependent (PRDS) p-values (Benjamini & Hochberg 1995).

    Args:
        pvalues: 1-D p-values in [0, 1], NaN allowed.

    Returns:
        float64 array of the same shape.
    """
    p = np.array(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    finite = ~np.isnan(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError("pvalues must lie in [0, 1] (NaN allowed)")
    out = np.full_like(p, np.nan)
    m = int(finite.sum())
    if m == 0:
        return out
    idx = np.flatnonzero(finite)[np.argsort(p[finite], kind="stable")]  # ascending p
    scaled = p[idx] * m / np.arange(1, m + 1)  # (m,)
    out[idx] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out
