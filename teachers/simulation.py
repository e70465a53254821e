"""Synthetic populations with a KNOWN population margin, to check teachers.certificate.margin_bounds.

A population is a finite set of atoms (x_m with probability p_m), each with its teacher row T_m and
witness row S_m, so the population bare margin of the clipped witness S' is exact:

    G = sum_m p_m sum_k T_mk log S'_mk + H(Tbar),   Tbar = sum_m p_m T_m.

Evaluation rows are i.i.d. draws of atoms; the reference q is the mean teacher row of an independent
"training" draw, as in production (the GMM teacher is fitted on the training split only).

`python -m teachers.simulation` prints the coverage of the lower and upper bounds, the rate of
false certificates over 20 looks for a non-constant witness whose G is exactly 0, the width of the
lower bound in units of the one-look CLT radius 1.645 sd(d_i) / sqrt(n), and how that width
scales with n. tests/test_bounds.py asserts on the same studies. Ray-free, numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from teachers.bounds import CLIP_ETA, REFERENCE_MIX, clip_witness, margin_bounds
from teachers.certificate import bare_margin

ALPHA = 0.05
"""Error level of every study (each one-sided bound, over all looks)."""

N_EVAL = 2000
"""Evaluation rows per draw, as in the demo."""

N_TRAIN = 8000
"""Rows of the independent training draw whose mean teacher row is the reference."""


@dataclass(frozen=True)
class Population:
    """A finite population: atom probabilities and each atom's teacher and witness rows."""

    name: str
    probs: np.ndarray  # (M,)
    T: np.ndarray  # (M, K)
    S: np.ndarray  # (M, K)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n i.i.d. rows (T, S), each (n, K)."""
        idx = rng.choice(self.probs.size, size=n, p=self.probs)
        return self.T[idx], self.S[idx]

    def reference(self, rng: np.random.Generator, n_train: int = N_TRAIN) -> np.ndarray:
        """Mean teacher row of an independent training draw of n_train rows, (K,).

        The atom counts of an i.i.d. draw are multinomial, so this is that mean without the rows.
        """
        counts = rng.multinomial(n_train, self.probs)  # (M,)
        # einsum, not @: a BLAS matrix-vector product can be many times slower on a shared machine.
        return np.einsum("m,mk->k", counts, self.T) / n_train

    def margin(self) -> float:
        """Exact population bare margin of the clipped witness."""
        return exact_margin(self.probs, self.T, self.S)


def exact_margin(probs: np.ndarray, T: np.ndarray, S: np.ndarray) -> float:
    """G = sum_m p_m <T_m, log S'_m> + H(Tbar) for the clipped witness S' (0 log 0 = 0)."""
    S_clip = clip_witness(S)  # entries >= eta / K > 0: the log is finite, T = 0 gives exactly 0
    cross = float(np.einsum("m,mk->", probs, T * np.log(S_clip)))
    tbar = np.einsum("m,mk->k", probs, T)  # (K,)
    pos = tbar > 0
    return cross - float((tbar[pos] * np.log(tbar[pos])).sum())


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _atoms(rng: np.random.Generator, k: int, atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """Atom probabilities (imbalanced classes, uneven atoms) and each atom's class."""
    class_weights = rng.dirichlet(np.full(k, 5.0))  # (K,) mildly imbalanced
    classes = rng.choice(k, size=atoms, p=class_weights)  # (M,)
    probs = rng.gamma(2.0, size=atoms)
    return probs / probs.sum(), classes


def softmax_gaussian(k: int = 10, atoms: int = 5000, seed: int = 0, witness_noise: float = 0.7,
                     name: str | None = None) -> Population:
    """GMM-like teacher softmax(4 e_class + N(0, 1.5^2)); witness softmax(log T + N(0, noise^2))."""
    rng = np.random.default_rng(seed)
    probs, classes = _atoms(rng, k, atoms)
    T = _softmax(4.0 * np.eye(k)[classes] + 1.5 * rng.standard_normal((atoms, k)))
    S = _softmax(np.log(T) + witness_noise * rng.standard_normal((atoms, k)))
    return Population(name or f"softmax-Gaussian K={k}", probs, T, S)


def dirichlet(k: int = 10, atoms: int = 5000, seed: int = 1) -> Population:
    """Teacher rows Dirichlet(0.3 + 3 e_class) (exact zeros possible after rounding are kept);
    witness: the teacher mixed with an independent Dirichlet(1) row, 70 / 30."""
    rng = np.random.default_rng(seed)
    probs, classes = _atoms(rng, k, atoms)
    T = np.stack([rng.dirichlet(0.3 + 3.0 * np.eye(k)[c]) for c in classes])  # (M, K)
    S = 0.7 * T + 0.3 * rng.dirichlet(np.ones(k), size=atoms)
    return Population(f"Dirichlet K={k}", probs, T, S)


def null_witness(pop: Population) -> tuple[Population, float]:
    """The population with an overconfident witness softmax(log S / temp), temp < 1 tuned so G = 0.

    Sharpening a noisy witness makes it confidently wrong on some rows, so G(temp) runs from
    G(1) > 0 to G(e^-6) < 0; bisection in log temp to the last bit leaves |G| ~ 1e-16. The witness
    stays strongly non-constant (its rows are nearly one-hot). Returns the population and temp.
    """
    log_s = np.log(pop.S)

    def margin_at(log_temp: float) -> float:
        return exact_margin(pop.probs, pop.T, _softmax(log_s / math.exp(log_temp)))

    low, high = -6.0, 0.0
    if not (margin_at(low) < 0.0 < margin_at(high)):
        raise ValueError(f"{pop.name}: G does not change sign between temp e^-6 and 1")
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (low, mid) if margin_at(mid) > 0.0 else (mid, high)
    temp = math.exp(0.5 * (low + high))
    return Population(f"{pop.name}, null witness (temp {temp:.3f})", pop.probs, pop.T,
                      _softmax(log_s / temp)), temp


def null_populations() -> list[Population]:
    """Non-constant witnesses with population G = 0 exactly, for the false-certificate studies."""
    return [null_witness(softmax_gaussian(10, witness_noise=1.5))[0],
            null_witness(dirichlet(10))[0]]


def default_populations() -> list[Population]:
    """The populations of the tests and of the printed figures."""
    return [softmax_gaussian(10), dirichlet(10), softmax_gaussian(100, seed=2)]


def clt_radius(T: np.ndarray, S: np.ndarray, reference: np.ndarray) -> float:
    """One-look CLT radius 1.645 sd(d_i) / sqrt(n), d_i = sum_k T_ik log(S'_ik / q_k)."""
    k = T.shape[1]
    q = (1.0 - REFERENCE_MIX) * reference + REFERENCE_MIX / k
    S_clip = (1.0 - CLIP_ETA) * S + CLIP_ETA / k
    d = (T * (np.log(S_clip) - np.log(q))).sum(axis=1)  # (n,)
    return 1.645 * float(d.std(ddof=1)) / math.sqrt(d.size)


@dataclass(frozen=True)
class CoverageStudy:
    """Per-repetition results at look 1: bounds, plug-in margin of S', CLT radius; the true G."""

    G: float
    lower: np.ndarray  # (reps,)
    upper: np.ndarray  # (reps,)
    plugin: np.ndarray  # (reps,)
    radius: np.ndarray  # (reps,)

    @property
    def lower_coverage(self) -> float:
        return float(np.mean(self.lower <= self.G))

    @property
    def upper_coverage(self) -> float:
        return float(np.mean(self.upper >= self.G))

    @property
    def width_ratio(self) -> float:
        """Median over repetitions of (plug-in - lower) / CLT radius."""
        return float(np.median((self.plugin - self.lower) / self.radius))

    @property
    def median_gap(self) -> float:
        return float(np.median(self.plugin - self.lower))


def coverage_study(pop: Population, reps: int = 300, n: int = N_EVAL, seed: int = 0,
                   alpha: float = ALPHA) -> CoverageStudy:
    """reps independent (training reference, evaluation draw) pairs, bounds at look 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(reps):
        reference = pop.reference(rng)
        T, S = pop.draw(n, rng)
        lower, upper = margin_bounds(T, S, alpha=alpha, look=1, reference=reference)
        rows.append((lower, upper, bare_margin(T, clip_witness(S)), clt_radius(T, S, reference)))
    lower, upper, plugin, radius = (np.array(c) for c in zip(*rows))
    return CoverageStudy(pop.margin(), lower, upper, plugin, radius)


def false_certificate_rate(pop: Population, sequences: int = 300, looks: int = 20,
                           n: int = N_EVAL, seed: int = 0, alpha: float = ALPHA) -> float:
    """Fraction of sequences with lower > 0 at some look 1..looks; fresh rows at every look."""
    rng = np.random.default_rng(seed)
    certified = 0
    for _ in range(sequences):
        reference = pop.reference(rng)
        for look in range(1, looks + 1):
            T, S = pop.draw(n, rng)
            if margin_bounds(T, S, alpha=alpha, look=look, reference=reference)[0] > 0.0:
                certified += 1
                break
    return certified / sequences


def scaling_ratio(pop: Population, n: int = N_EVAL, factor: int = 4, reps: int = 60,
                  seed: int = 0) -> float:
    """Median gap (plug-in - lower) at n over that at factor * n; 1/sqrt(n) gives sqrt(factor)."""
    small = coverage_study(pop, reps=reps, n=n, seed=seed).median_gap
    large = coverage_study(pop, reps=reps, n=factor * n, seed=seed + 1).median_gap
    return small / large


def main() -> None:
    print(f"margin_bounds at alpha = {ALPHA} (each one-sided bound), n = {N_EVAL} evaluation rows, "
          f"reference from {N_TRAIN} independent training rows, clipping eta = {CLIP_ETA}")
    for pop in default_populations():
        study = coverage_study(pop)
        print(f"\n{pop.name}: population G = {study.G:.4f}")
        print(f"  coverage over 300 draws, look 1: lower {study.lower_coverage:.3f}, "
              f"upper {study.upper_coverage:.3f} (target >= {1 - ALPHA:.2f})")
        print(f"  width at look 1: median (plug-in - lower) = {study.median_gap:.4f} nats; "
              f"median of (plug-in - lower) / CLT radius = {study.width_ratio:.2f} "
              f"(CLT radius 1.645 sd(d)/sqrt(n), median {np.median(study.radius):.4f}; "
              "criterion <= 4)")
        print(f"  1/sqrt(n) scaling: median gap at n = {N_EVAL} / at n = {4 * N_EVAL} = "
              f"{scaling_ratio(pop):.2f} (exact 1/sqrt(n) scaling gives 2)")
    for pop in null_populations():
        print(f"\n{pop.name}: population G = {pop.margin():.1e}")
        print(f"  sequences certified (lower > 0) at some look 1..20, fresh rows per look: "
              f"{false_certificate_rate(pop):.3f} of 300 (allowed <= {ALPHA})")


if __name__ == "__main__":
    main()
