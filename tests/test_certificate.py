"""Certificate math (teachers/certificate.py) against closed forms, hand-worked numbers and an
independent pure-Python implementation (docs/method.md, "Certificate")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from teachers.certificate import (
    alignment_loss,
    bare_margin,
    check_distributions,
    entropy_rows,
    kl_rows_torch,
    margin,
    student_mi,
    teacher_mi,
    usage_balance,
)

LN2 = math.log(2.0)


def _dirichlet(rng: np.random.Generator, n: int, k: int, alpha: float = 1.0) -> np.ndarray:
    return rng.dirichlet(np.full(k, alpha), size=n)  # (n, k)


def _sparse(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Rows with exact zeros: a Dirichlet draw with about half of each row masked out."""
    mask = rng.random((n, k)) < 0.5
    mask[np.arange(n), rng.integers(0, k, n)] = True  # every row keeps at least one entry
    P = np.where(mask, _dirichlet(rng, n, k), 0.0)
    return P / P.sum(axis=1, keepdims=True)


# ---------- independent reference: pure Python loops, entropy form for the MI ----------

def _ref_entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in row if p > 0)


def _ref_teacher_mi(T: np.ndarray) -> float:
    rows = T.tolist()
    n, k = len(rows), len(rows[0])
    tbar = [sum(r[j] for r in rows) / n for j in range(k)]
    return _ref_entropy(tbar) - sum(_ref_entropy(r) for r in rows) / n


def _ref_alignment(T: np.ndarray, S: np.ndarray) -> float:
    total = 0.0
    for t_row, s_row in zip(T.tolist(), S.tolist()):
        total += sum(t * (math.log(t) - math.log(s)) for t, s in zip(t_row, s_row) if t > 0)
    return total / len(T)


def _ref_usage(S: np.ndarray) -> float:
    rows = S.tolist()
    k = len(rows[0])
    sbar = [sum(r[j] for r in rows) / len(rows) for j in range(k)]
    return math.log(k) - _ref_entropy(sbar)


def _held_out_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(20240517)
    onehot = np.eye(7)[rng.integers(0, 7, 50)]  # (50, 7)
    constant = np.tile(_dirichlet(rng, 1, 6), (40, 1))  # (40, 6)
    return [
        ("dense K=5", _dirichlet(rng, 60, 5), _dirichlet(rng, 60, 5)),
        ("peaked K=10", _dirichlet(rng, 80, 10, 0.1), _dirichlet(rng, 80, 10, 2.0)),
        ("one-hot K=7", onehot, _dirichlet(rng, 50, 7)),
        ("zeros K=8", _sparse(rng, 70, 8), _dirichlet(rng, 70, 8)),
        ("constant K=6", constant, _dirichlet(rng, 40, 6)),
        ("K=2", _dirichlet(rng, 30, 2, 0.5), _dirichlet(rng, 30, 2)),
        ("K=100", _dirichlet(rng, 25, 100, 0.3), _dirichlet(rng, 25, 100)),
    ]


HELD_OUT = _held_out_cases()


@pytest.mark.parametrize("name,T,S", HELD_OUT, ids=[case[0] for case in HELD_OUT])
def test_agrees_with_independent_implementation(name: str, T: np.ndarray, S: np.ndarray) -> None:
    assert teacher_mi(T) == pytest.approx(_ref_teacher_mi(T), abs=1e-9)
    assert alignment_loss(T, S) == pytest.approx(_ref_alignment(T, S), abs=1e-9)
    assert margin(T, S, tau=0.05) == pytest.approx(_ref_teacher_mi(T) - _ref_alignment(T, S) - 0.05, abs=1e-9)
    assert student_mi(S) == pytest.approx(_ref_teacher_mi(S), abs=1e-9)
    assert usage_balance(S) == pytest.approx(_ref_usage(S), abs=1e-9)
    ref_entropies = [_ref_entropy(r) for r in T.tolist()]
    np.testing.assert_allclose(entropy_rows(T), ref_entropies, rtol=0, atol=1e-12)


# ---------- closed forms ----------

@pytest.mark.parametrize("k", [2, 5, 30])
def test_lemma1_constant_student_margin_is_minus_kl_tbar_c(k: int) -> None:
    rng = np.random.default_rng(k)
    for trial in range(5):
        T = _sparse(rng, 200, k) if trial % 2 else _dirichlet(rng, 200, k, 0.5)
        tbar = T.mean(axis=0)  # (K,)
        c = _dirichlet(rng, 1, k)[0]  # (K,)
        kl_tbar_c = float(np.sum(np.where(tbar > 0, tbar * np.log(np.where(tbar > 0, tbar / c, 1.0)), 0.0)))
        G = margin(T, np.tile(c, (200, 1)), tau=0.0)
        assert G == pytest.approx(-kl_tbar_c, abs=1e-12)
        assert G <= 0.0
        # The best constant student is Tbar, and it costs exactly I_T.
        assert abs(margin(T, np.tile(tbar, (200, 1)), tau=0.0)) < 1e-12


@pytest.mark.parametrize("k", [2, 10, 100])
def test_constant_teacher_has_zero_mi(k: int) -> None:
    row = _dirichlet(np.random.default_rng(k), 1, k)  # (1, K)
    T = np.tile(row, (1000, 1))
    assert teacher_mi(T) == 0.0
    assert student_mi(T) == 0.0


def test_hand_computed_identity_teacher_uniform_student() -> None:
    T = np.array([[1.0, 0.0], [0.0, 1.0]])
    S = np.array([[0.5, 0.5], [0.5, 0.5]])
    # Tbar = (1/2, 1/2): I_T = H(Tbar) - 0 = ln 2; each row KL = 1 * ln(1 / 0.5) = ln 2.
    assert teacher_mi(T) == pytest.approx(LN2, abs=1e-15)
    assert alignment_loss(T, S) == pytest.approx(LN2, abs=1e-15)
    assert bare_margin(T, S) == pytest.approx(0.0, abs=1e-15)
    assert margin(T, S) == pytest.approx(-0.05, abs=1e-15)
    assert student_mi(S) == 0.0
    assert usage_balance(S) == 0.0


def test_hand_computed_teacher_with_zeros() -> None:
    T = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    S = np.array([[0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])
    # Tbar = (1/4, 1/4, 1/2): H(Tbar) = 2 * (1/4) ln 4 + (1/2) ln 2 = 1.5 ln 2.
    # H(T_1) = ln 2, H(T_2) = 0 (0 log 0 = 0), so I_T = 1.5 ln 2 - 0.5 ln 2 = ln 2.
    # KL(T_1 || S_1) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.5) + 0 = 0.5 ln 2; KL(T_2 || S_2) = ln(1/0.5) = ln 2.
    # L = 0.75 ln 2, G = 0.25 ln 2, G_0.05 = 0.25 ln 2 - 0.05 = 0.12328679513998632.
    assert teacher_mi(T) == pytest.approx(LN2, abs=1e-15)
    assert alignment_loss(T, S) == pytest.approx(0.75 * LN2, abs=1e-15)
    assert margin(T, S, tau=0.05) == pytest.approx(0.12328679513998632, abs=1e-15)
    # sbar = (1/4, 3/8, 3/8); both student rows have entropy 1.5 ln 2.
    h_sbar = -(0.25 * math.log(0.25) + 2 * 0.375 * math.log(0.375))
    assert student_mi(S) == pytest.approx(h_sbar - 1.5 * LN2, abs=1e-15)
    assert usage_balance(S) == pytest.approx(math.log(3) - h_sbar, abs=1e-15)
    np.testing.assert_array_equal(entropy_rows(T), [LN2, 0.0])


def test_student_zero_where_teacher_positive_gives_inf() -> None:
    T = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert alignment_loss(T, np.array([[1.0, 0.0], [1.0, 0.0]])) == math.inf
    assert margin(T, np.array([[1.0, 0.0], [1.0, 0.0]])) == -math.inf
    # Zeros of S where T is also zero cost nothing: 0 * log(0 / 0) = 0.
    assert alignment_loss(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])) == 0.0


def test_tau_only_shifts_the_margin() -> None:
    rng = np.random.default_rng(3)
    T, S = _dirichlet(rng, 40, 4), _dirichlet(rng, 40, 4)
    for tau in (0.0, 0.05, 0.15):
        assert margin(T, S, tau=tau) == pytest.approx(bare_margin(T, S) - tau, abs=1e-15)
    with pytest.raises(ValueError, match="tau"):
        margin(T, S, tau=-0.1)


# ---------- validation ----------

@pytest.mark.parametrize(
    "P,match",
    [
        (np.array([[0.5, 0.5], [1.2, -0.2]]), "negative"),
        (np.array([[0.5, 0.5], [np.nan, 0.5]]), "NaN"),
        (np.array([[0.5, 0.5], [0.5, 0.5 + 1e-3]]), r"row 1 sums to 1\.001"),
        (np.array([0.5, 0.5]), "2-D"),
        (np.zeros((0, 3)), "empty"),
        (np.array([[np.inf, 0.0]]), "inf"),
    ],
)
def test_invalid_distributions_raise(P: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_distributions(P, name="teacher rows")
    with pytest.raises(ValueError, match=match):
        teacher_mi(P)


def test_error_names_the_argument() -> None:
    with pytest.raises(ValueError, match="^S row 0"):
        alignment_loss(np.array([[1.0, 0.0]]), np.array([[0.7, 0.7]]))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        alignment_loss(np.full((2, 2), 0.5), np.full((2, 3), 1 / 3))


def test_check_distributions_returns_float64_copy() -> None:
    P = np.array([[0.25, 0.75]], dtype=np.float32)
    out = check_distributions(P)
    assert out.dtype == np.float64
    out[0, 0] = 9.0
    assert P[0, 0] == np.float32(0.25)


# ---------- torch ----------

def test_torch_inputs_give_the_same_floats() -> None:
    rng = np.random.default_rng(11)
    T, S = _sparse(rng, 30, 6), _dirichlet(rng, 30, 6)
    Tt, St = torch.from_numpy(T).requires_grad_(False), torch.from_numpy(S).requires_grad_(True)
    assert teacher_mi(Tt) == teacher_mi(T)
    assert alignment_loss(Tt, St) == alignment_loss(T, S)
    assert margin(Tt, St) == margin(T, S)
    assert student_mi(St) == student_mi(S)
    assert usage_balance(St) == usage_balance(S)
    assert isinstance(margin(Tt, St), float)


def test_kl_rows_torch_matches_numpy_per_row_and_has_finite_grads() -> None:
    rng = np.random.default_rng(5)
    T = _sparse(rng, 16, 5)  # (16, 5) with exact zeros
    logits = torch.tensor(rng.normal(size=(16, 5)), dtype=torch.float64, requires_grad=True)
    log_s = torch.log_softmax(logits, dim=-1)  # (16, 5)
    kl = kl_rows_torch(torch.from_numpy(T), log_s)  # (16,)
    S = log_s.exp().detach().numpy()
    expected = [alignment_loss(T[i : i + 1], S[i : i + 1]) for i in range(16)]
    np.testing.assert_allclose(kl.detach().numpy(), expected, rtol=0, atol=1e-12)
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # d KL(T_i || softmax(h_i)) / d h_i = s_i - T_i (the escape force of docs/method.md).
    np.testing.assert_allclose(logits.grad.numpy(), S - T, rtol=0, atol=1e-12)


def test_kl_rows_torch_ignores_minus_inf_where_teacher_is_zero() -> None:
    log_s = torch.tensor([[0.0, -math.inf]], requires_grad=True)
    kl = kl_rows_torch(torch.tensor([[1.0, 0.0]]), log_s)
    kl.sum().backward()
    assert kl.item() == 0.0
    assert torch.equal(log_s.grad, torch.tensor([[-1.0, 0.0]]))
    with pytest.raises(ValueError, match="log_s"):
        kl_rows_torch(torch.ones(2, 3) / 3, torch.zeros(2, 4))
