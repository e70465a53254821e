"""The constant-collapse certificate as pure functions (docs/method.md, "Certificate").

All inputs are (N, K) row-stochastic matrices (numpy arrays or torch tensors); every row is one
distribution over K components. Means run over the N rows (the evaluation set):

    Tbar = mean_i T_i
    I_T  = mean_i KL(T_i || Tbar) = H(Tbar) - mean_i H(T_i)          teacher MI
    L    = mean_i KL(T_i || S_i)                                    raw alignment
    G    = I_T - L,  G_tau = G - tau                                margins (certified iff G_tau > 0)
    I_S  = H(sbar) - mean_i H(S_i)                                  student MI
    KL(sbar || uniform) = log K - H(sbar)                           usage balance

Numerics (docs/method.md, "Numerics"): 0 * log 0 = 0 exactly (masked logs, never an epsilon),
accumulation in float64, rows that are not distributions are rejected. The numpy functions return
Python floats; `kl_rows_torch` is the differentiable per-row KL used by the training losses.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used, so the analysis' table tool runs without it
    from torch import Tensor

ROW_SUM_TOL = 1e-6
"""A row whose sum differs from 1 by more than this is not a distribution."""

Distributions = "np.ndarray | Tensor"


def _to_float64(P: Distributions) -> np.ndarray:
    """A float64 numpy copy of P, never a view of the caller's memory."""
    if hasattr(P, "detach"):  # a torch tensor
        return np.array(P.detach().cpu().double().numpy(), dtype=np.float64)
    return np.array(P, dtype=np.float64)


def check_distributions(P: Distributions, name: str = "T") -> np.ndarray:
    """Validates that P is a non-empty (N, K) matrix of distributions.

    Args:
        P: candidate (N, K) row-stochastic matrix (numpy array or torch tensor).
        name: how the error messages call P.

    Returns:
        A float64 copy of P, shape (N, K).

    Raises:
        ValueError: naming `name` and the problem: not 2-D, empty, NaN/inf, negative entries, or a
            row whose sum is off by more than ROW_SUM_TOL (the first such row and its sum).
    """
    arr = _to_float64(P)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, K) array, got {arr.ndim}-D with shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): need at least one row and one column")
    if not np.isfinite(arr).all():
        row, col = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} contains NaN or inf (first at row {row}, column {col})")
    if (arr < 0).any():
        row, col = np.argwhere(arr < 0)[0]
        raise ValueError(
            f"{name} has negative entries (first at row {row}, column {col}: {float(arr[row, col])!r})"
        )
    sums = arr.sum(axis=1)  # (N,)
    off = np.abs(sums - 1.0) > ROW_SUM_TOL
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(
            f"{name} row {row} sums to {float(sums[row])!r}, not 1 (tolerance {ROW_SUM_TOL}): "
            "every row must be a distribution"
        )
    return arr


def _xlogx(P: np.ndarray) -> np.ndarray:
    """Elementwise p * log p with 0 * log 0 = 0 exactly."""
    positive = P > 0
    return np.where(positive, P * np.log(np.where(positive, P, 1.0)), 0.0)


def _kl_rows(T: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Per-row KL(T_i || S_i), (N,); +inf where T_ik > 0 but S_ik == 0."""
    positive = T > 0
    # Masking both logs keeps 0 * log(0 / s) = 0 exact, also where s == 0.
    with np.errstate(divide="ignore"):
        log_ratio = np.log(np.where(positive, T, 1.0)) - np.log(np.where(positive, S, 1.0))
    return np.where(positive, T * log_ratio, 0.0).sum(axis=1)  # (N,)


def _mutual_information(P: np.ndarray) -> float:
    """mean_i KL(P_i || Pbar) for a validated (N, K) matrix."""
    # Mean shifted by the first row: exact for constant columns, so a constant P gets exactly 0.
    pbar = P[:1] + (P - P[:1]).mean(axis=0, keepdims=True)  # (1, K)
    # Every P_ik > 0 has pbar_k >= P_ik / N > 0, so the KL is finite. The KL form avoids the
    # cancellation of H(Pbar) - mean H(P_i); max() only removes a negative rounding residue.
    return max(0.0, float(_kl_rows(P, np.broadcast_to(pbar, P.shape)).mean()))


def entropy_rows(P: Distributions) -> np.ndarray:
    """Shannon entropy (nats) of every row, with 0 * log 0 = 0.

    Args:
        P: (N, K) row-stochastic matrix.

    Returns:
        (N,) float64 array of H(P_i).
    """
    return -_xlogx(check_distributions(P, "P")).sum(axis=1)


def teacher_mi(T: Distributions) -> float:
    """Teacher MI I_T = mean_i KL(T_i || Tbar) = H(Tbar) - mean_i H(T_i); 0 for a constant teacher.

    Args:
        T: (N, K) teacher rows.

    Returns:
        I_T in nats, >= 0.
    """
    return _mutual_information(check_distributions(T, "T"))


def alignment_loss(T: Distributions, S: Distributions) -> float:
    """Raw alignment L = mean_i KL(T_i || S_i).

    Args:
        T: (N, K) teacher rows.
        S: (N, K) student rows s(mu(x_i)).

    Returns:
        L in nats. float('inf') when some T_ik > 0 has S_ik == 0: the KL is then infinite, and an
        epsilon would hide a student that rules out a component the teacher uses.

    Raises:
        ValueError: if either input is not a matrix of distributions or the shapes differ.
    """
    return float(_kl_rows(*_checked_pair(T, S)).mean())


def _checked_pair(T: Distributions, S: Distributions) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies of a teacher and a student of the same shape."""
    T_arr, S_arr = check_distributions(T, "T"), check_distributions(S, "S")
    if T_arr.shape != S_arr.shape:
        raise ValueError(f"shape mismatch: T has shape {T_arr.shape} but S has shape {S_arr.shape}")
    return T_arr, S_arr


def certificate(T: Distributions, S: Distributions, tau: float = 0.05,
                fixed_target: bool = False) -> dict[str, float]:
    """Every certificate number of a raw witness (docs/method.md, "Certificate" and "Margins").

    Args:
        T: (N, K) teacher rows (the cached targets Ttilde for a fixed target).
        S: (N, K) student rows s(mu(x_i)).
        tau: safety offset, finite and >= 0; it only shifts the number.
        fixed_target: whether T are fixed cached targets: then G_fix = I_Ttilde - L - tau is
            reported too (NaN otherwise).

    Returns:
        I_T, L_align, G = I_T - L (bare), G_tau = G - tau (certified iff > 0) and G_fix, in nats;
        the margins are -inf when L is infinite.
    """
    shift = _checked_tau(tau)
    T_arr, S_arr = _checked_pair(T, S)
    i_t, loss = _mutual_information(T_arr), float(_kl_rows(T_arr, S_arr).mean())
    g = i_t - loss
    return {"I_T": i_t, "L_align": loss, "G": g, "G_tau": g - shift, "G_fix": g - shift if fixed_target else math.nan}


def _checked_tau(tau: float) -> float:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be finite and >= 0, got {tau!r}")
    return float(tau)


def margin(T: Distributions, S: Distributions, tau: float = 0.05) -> float:
    """Certificate margin G_tau = I_T - L - tau; certified iff > 0 (docs/method.md, "Margins").

    Args:
        T: (N, K) teacher rows.
        S: (N, K) student rows.
        tau: safety offset, finite and >= 0; it only shifts the number.

    Returns:
        G_tau in nats; -inf when L is infinite.
    """
    return certificate(T, S, tau)["G_tau"]


def bare_margin(T: Distributions, S: Distributions) -> float:
    """Bare margin G = I_T - L (margin with tau = 0)."""
    return certificate(T, S, 0.0)["G"]


def statistical_certificate(T: Distributions, S: Distributions, alpha: float, look: int, reference: Distributions,
                            tau: float = 0.05, fixed_target: bool = False) -> dict[str, Any]:
    """The error-controlled certificate at one report point (teachers/bounds.py, `margin_bounds`):
    one-sided bounds on the POPULATION bare margin of the clipped witness, valid over every look of
    the trial, the claim `certified` = G_lower > 0 at level alpha, and its p-value (Benjamini-Hochberg
    across a sweep uses it). For a fixed target the same bounds shifted by tau bound G_fix.

    Args:
        T: (N, K) evaluation teacher rows.
        S: (N, K) raw witness rows.
        alpha: error rate of each one-sided bound.
        look: index of this report point within the trial (1 for the first).
        reference: (K,) distribution independent of the rows: the teacher's training-split marginal.
        tau: the fixed-target margin's offset.
        fixed_target: whether T are cached fixed targets.
    """
    from teachers import bounds

    lower, upper = bounds.margin_bounds(T, S, alpha, look, reference)
    out = {"G_lower": lower, "G_upper": upper, "certified": bool(lower > 0),
           "p_certified": bounds.margin_pvalue(T, S, alpha, look, reference)}
    if fixed_target:
        out |= {"G_fix_lower": at_tau(lower, tau), "G_fix_upper": at_tau(upper, tau)}
    return out


def at_tau(G: Any, tau: float) -> Any:
    """G_tau' = G - tau' from a logged bare margin G (a float or an array of them): a tau sweep
    never needs retraining (docs/method.md, "Margins")."""
    return G - _checked_tau(tau)


def escape_force(grads: Distributions) -> float:
    """Escape force (docs/method.md, "Escape force"): the input-dependent part of the alignment gradient
    at the encoder output, mean_i ||g_i - mean_j g_j||^2, accumulated in float64.

    Args:
        grads: (N, d) per-row gradients g_i = d KL(T_i || s(mu_i)) / d mu_i.
    """
    g = _to_float64(grads)
    if g.ndim != 2 or not len(g):
        raise ValueError(f"grads must be a non-empty (N, d) array, got shape {g.shape}")
    return float(((g - g.mean(axis=0)) ** 2).sum(axis=1).mean())


def student_mi(S: Distributions) -> float:
    """Student MI I_S = H(sbar) - mean_i H(S_i), computed as mean_i KL(S_i || sbar).

    Args:
        S: (N, K) student rows.

    Returns:
        I_S in nats, >= 0; ~0 for a collapsed (constant) student.
    """
    return _mutual_information(check_distributions(S, "S"))


def usage_balance(S: Distributions) -> float:
    """Usage balance KL(sbar || uniform) = log K - H(sbar).

    Args:
        S: (N, K) student rows.

    Returns:
        The KL in nats, 0 iff the mean student row is uniform.
    """
    S_arr = check_distributions(S, "S")
    sbar = S_arr.mean(axis=0)  # (K,)
    # sum_k sbar_k log(K sbar_k) is exactly 0 for an exactly uniform sbar, unlike log K - H(sbar).
    return max(0.0, float(_xlogx(sbar * S_arr.shape[1]).sum() / S_arr.shape[1]))


def kl_rows_torch(T: Tensor, log_s: Tensor) -> Tensor:
    """Differentiable per-row KL(T_i || s_i) from student log-probabilities, for training losses.

    T is a fixed target (no gradient is meant to reach it). 0 * log 0 = 0 exactly, and rows where
    T_ik == 0 contribute neither value nor gradient, even if log_s_ik is -inf.

    Args:
        T: (B, K) teacher rows.
        log_s: (B, K) student log-probabilities, e.g. from log_softmax.

    Returns:
        (B,) tensor of per-row KL; take .mean() for the batch loss.
    """
    import torch

    if T.shape != log_s.shape or T.dim() != 2:
        raise ValueError(
            f"T and log_s must both be (B, K); got T {tuple(T.shape)} and log_s {tuple(log_s.shape)}"
        )
    T = T.to(log_s.dtype)
    # torch.where (not T * log_s alone) because 0 * -inf would be NaN; the masked branch gets zero grad.
    cross = torch.where(T > 0, T * log_s, torch.zeros_like(log_s))  # (B, K)
    return (torch.special.xlogy(T, T) - cross).sum(dim=-1)  # (B,)


BOUNDS = ("margin_bounds", "margin_pvalue", "bh_adjust", "clip_witness", "spent_alpha")


def __getattr__(name: str) -> Any:
    """The confidence bounds on the population margin live in teachers/bounds.py (they import this
    module); `from teachers.certificate import margin_bounds` reaches them here (PEP 562)."""
    if name in BOUNDS:
        from teachers import bounds

        return getattr(bounds, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
