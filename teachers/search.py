"""GMM teacher search on warm-up features (docs/method.md, "Protocol", step 2).

Candidate GMMs are fitted over a grid (K, covariance type, PCA dim, restart) on standardised
warm-up features mu(x). Each candidate's train targets give the diagnostics (teacher MI, top-1
margin, high-margin fraction, hard balance, soft usage, minimum mass); thresholds give a
feasibility flag. Selection is deterministic given the seed: the feasible candidate with the
highest teacher MI, else the most informative nonconstant one as a "stress case" (run and
reported, never pooled into the strict-feasible mean). The selected candidate produces the targets
for train and eval, and the result is a `TeacherArtifact` shared by every downstream variant.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from teachers.artifact import TeacherArtifact
from teachers.certificate import check_distributions, teacher_mi, usage_balance

if TYPE_CHECKING:  # scikit-learn (with SciPy, about 0.8 s to import) only where a teacher is fitted:
    # TeacherConfig is read by every process that loads a config, the Ray driver among them
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
TARGETS = ("search", "fixed")
CONSTANT_MI = 1e-6
"""A candidate with teacher MI at or below this is constant: useless even as a stress case."""

# Tags that keep the derived random streams of different purposes apart.
_SUBSAMPLE_TAG, _PCA_TAG, _GMM_TAG = 1, 2, 3


@dataclass
class TeacherConfig:
    """GMM teacher search grid, feasibility thresholds and the target protocol."""

    ks: list[int] = field(default_factory=lambda: [10])
    """Numbers of GMM components K to try (each >= 2)."""
    covariance_types: list[str] = field(default_factory=lambda: ["diag"])
    """sklearn covariance types to try, a subset of full, diag, tied, spherical."""
    pca_dims: list[int] = field(default_factory=lambda: [0])
    """0 = fit on the standardised features; d > 0 = PCA to d dims first (companion paper PCA-GMM)."""
    restarts: int = 2
    """Independent fits per grid cell; each restart is its own candidate."""
    max_iter: int = 200
    """EM iterations per fit; non-convergence is recorded, not fatal."""
    fit_samples: int = 10000
    """GMMs are fitted on a fixed random subsample of this many train rows (speed); 0 = all rows."""
    high_margin_level: float = 0.5
    """A row is high-margin when p(1) - p(2) >= this."""
    min_teacher_mi: float = 0.1
    """Feasible needs I_T >= this (nats): the certificate is vacuous for a near-constant teacher."""
    min_top1_margin: float = 0.3
    """Feasible needs the mean top-1 margin p(1) - p(2) >= this."""
    min_high_margin_frac: float = 0.3
    """Feasible needs at least this fraction of high-margin rows."""
    max_hard_balance_kl: float = 0.5
    """Feasible needs KL(argmax histogram || uniform) <= this."""
    max_soft_usage_kl: float = 0.5
    """Feasible needs KL(Tbar || uniform) <= this."""
    min_mass_ratio: float = 0.25
    """Feasible needs min_k Tbar_k >= min_mass_ratio / K (no near-empty component)."""
    target: str = "search"
    """"search": teacher searched in this run; "fixed": the fixed-target protocol, training and
    evaluating against cached targets read back from disk (hash-checked) and reporting G_fix."""
    cache: str = ""
    """Fixed target only: an earlier run directory whose seed_<s>/ holds the warm-up checkpoint and
    teacher artifact to reuse; "" = search here, cache under this run, and read the cache back."""
    cache_seed: int = -1
    """With a cache: take every seed's warm-up and teacher from the cache's seed_<cache_seed>
    (one teacher held fixed while the training seed changes, paper F.2); -1 = each seed its own."""

    def problems(self) -> list[str]:
        """Every range or choice problem, one sentence each, naming the field ("teacher.<field>")."""
        out = [f"teacher.ks: K must be >= 2, got {k!r}" for k in self.ks if not _is_int(k) or k < 2]
        out += [f"teacher.covariance_types: unknown covariance type {c!r}, expected one of "
                f"{list(COVARIANCE_TYPES)}" for c in self.covariance_types if c not in COVARIANCE_TYPES]
        out += [f"teacher.pca_dims: PCA dim must be an int >= 0 (0 = no PCA), got {d!r}"
                for d in self.pca_dims if not _is_int(d) or d < 0]
        for name in ("ks", "covariance_types", "pca_dims"):
            values = getattr(self, name)
            if not values:
                out.append(f"teacher.{name}: must not be empty")
            elif len(set(values)) != len(values):
                out.append(f"teacher.{name}: duplicate values in {values!r}")
        for name, low in (("restarts", 1), ("max_iter", 1), ("fit_samples", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                out.append(f"teacher.{name}: must be an int >= {low}, got {value!r}")
        out += self._threshold_problems()
        if self.target not in TARGETS:
            out.append(f"teacher.target: must be one of {list(TARGETS)}, got {self.target!r}")
        if self.cache_seed >= 0 and not self.cache:
            out.append(f"teacher.cache_seed: needs teacher.cache, got cache_seed {self.cache_seed}")
        if self.cache_seed < -1:
            out.append(f"teacher.cache_seed: must be -1 (each seed its own) or >= 0, got {self.cache_seed}")
        if self.cache and self.target != "fixed":
            out.append(f"teacher.cache: only used with target 'fixed', got target {self.target!r}")
        return out

    def _threshold_problems(self) -> list[str]:
        """Range problems of the feasibility thresholds; `not (lo <= v <= hi)` also catches NaN, and
        an unbounded threshold must still be finite (inf would make every candidate fail or pass)."""
        bounds = {"high_margin_level": 1.0, "min_teacher_mi": np.inf, "min_top1_margin": 1.0,
                  "min_high_margin_frac": 1.0, "max_hard_balance_kl": np.inf,
                  "max_soft_usage_kl": np.inf, "min_mass_ratio": 1.0}
        return [f"teacher.{name}: must be " + ("in [0, 1]" if hi == 1.0 else ">= 0 and finite")
                + f", got {getattr(self, name)!r}"
                for name, hi in bounds.items() if not (0.0 <= getattr(self, name) <= hi and
                                                       np.isfinite(getattr(self, name)))]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TeacherModel:
    """A fitted teacher: train-fitted standardisation, optional PCA, and the GMM."""

    scaler: StandardScaler
    pca: PCA | None
    gmm: GaussianMixture

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Soft assignments T(.|x) for any features of the training dimension.

        Args:
            features: (N, d) float array.

        Returns:
            (N, K) float64 rows, renormalised to sum to 1 up to rounding.
        """
        x = check_features(features, "features")
        if x.shape[1] != self.scaler.n_features_in_:
            raise ValueError(f"features have dim {x.shape[1]} but the teacher was fitted on dim "
                             f"{self.scaler.n_features_in_}")
        z = self.scaler.transform(x)  # (N, d)
        if self.pca is not None:
            z = self.pca.transform(z)  # (N, pca_dim)
        proba = np.asarray(self.gmm.predict_proba(z), dtype=np.float64)  # (N, K)
        return proba / proba.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Candidate:
    """One grid cell's fitted teacher with its diagnostics on the train targets."""

    index: int
    k: int
    covariance_type: str
    pca_dim: int
    restart: int
    diagnostics: dict[str, float]
    feasible: bool
    failed: list[str]
    converged: bool
    model: TeacherModel

    @property
    def teacher_mi(self) -> float:
        return self.diagnostics["teacher_mi"]

    @property
    def stress_case(self) -> bool:
        """Infeasible but nonconstant: usable, reported apart from the strict-feasible runs."""
        return not self.feasible and self.teacher_mi > CONSTANT_MI

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, K) float64 targets for (N, d) features; see TeacherModel.predict."""
        return self.model.predict(features)

    def row(self) -> dict:
        """The candidate as a json-able table row (diagnostics flattened in)."""
        return {"index": int(self.index), "k": int(self.k), "covariance_type": str(self.covariance_type),
                "pca_dim": int(self.pca_dim), "restart": int(self.restart), **self.diagnostics,
                "feasible": self.feasible, "failed": list(self.failed),
                "converged": self.converged, "stress_case": self.stress_case}


def check_features(features: np.ndarray, name: str) -> np.ndarray:
    """A float64 copy of a non-empty, finite (N, d) feature matrix; ValueError naming `name` otherwise."""
    x = np.array(features, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D (N, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(x)).sum())} entries)")
    return x


def teacher_diagnostics(T: np.ndarray, high_margin_level: float) -> dict[str, float]:
    """Teacher-quality diagnostics of docs/method.md Protocol step 2.

    Args:
        T: (N, K) teacher rows, K >= 2.
        high_margin_level: a row is high-margin when p(1) - p(2) >= this.

    Returns:
        teacher_mi, top1_margin (mean p(1) - p(2)), high_margin_frac, hard_balance_kl
        (KL(argmax histogram || uniform), 0 log 0 = 0), soft_usage_kl (KL(Tbar || uniform)),
        min_mass (min_k Tbar_k); all Python floats.
    """
    T = check_distributions(T, "T")
    n, k = T.shape
    if k < 2:
        raise ValueError(f"teacher diagnostics need K >= 2 components, got K = {k}")
    top2 = np.sort(T, axis=1)[:, -2:]  # (N, 2): p(2), p(1)
    gaps = top2[:, 1] - top2[:, 0]  # (N,)
    hist = np.bincount(T.argmax(axis=1), minlength=k) / n  # (K,)
    return {
        "teacher_mi": teacher_mi(T),
        "top1_margin": float(gaps.mean()),
        "high_margin_frac": float((gaps >= high_margin_level).mean()),
        "hard_balance_kl": usage_balance(hist[None, :]),
        "soft_usage_kl": usage_balance(T),
        "min_mass": float(T.mean(axis=0).min()),
    }


def is_feasible(diag: dict[str, float], k: int, cfg: TeacherConfig) -> tuple[bool, list[str]]:
    """Applies the feasibility thresholds.

    Args:
        diag: output of `teacher_diagnostics`.
        k: number of components (the mass threshold is min_mass_ratio / k).
        cfg: the thresholds.

    Returns:
        (feasible, names of the failed thresholds, as TeacherConfig field names).
    """
    checks = {
        "min_teacher_mi": diag["teacher_mi"] >= cfg.min_teacher_mi,
        "min_top1_margin": diag["top1_margin"] >= cfg.min_top1_margin,
        "min_high_margin_frac": diag["high_margin_frac"] >= cfg.min_high_margin_frac,
        "max_hard_balance_kl": diag["hard_balance_kl"] <= cfg.max_hard_balance_kl,
        "max_soft_usage_kl": diag["soft_usage_kl"] <= cfg.max_soft_usage_kl,
        "min_mass_ratio": diag["min_mass"] >= cfg.min_mass_ratio / k,
    }
    failed = [name for name, ok in checks.items() if not ok]
    return not failed, failed


def _derive_seed(seed: int, *parts: int) -> int:
    """A 32-bit random_state that depends deterministically on (seed, *parts); no hash() salting."""
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def _fit_rows(n: int, fit_samples: int, seed: int) -> np.ndarray:
    """Sorted indices of the fixed GMM-fitting subsample (all rows when fit_samples is 0 or >= n)."""
    if fit_samples == 0 or fit_samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(_derive_seed(seed, _SUBSAMPLE_TAG))
    return np.sort(rng.choice(n, size=fit_samples, replace=False))


def _fit_pca(z: np.ndarray, pca_dim: int, seed: int) -> PCA | None:
    """PCA to pca_dim dims fitted on all standardised train rows; None for pca_dim == 0."""
    from sklearn.decomposition import PCA

    if pca_dim == 0:
        return None
    if pca_dim > min(z.shape):
        raise ValueError(f"teacher.pca_dims: PCA dim {pca_dim} exceeds min(N, feature dim) = {min(z.shape)} "
                         f"for train features of shape {z.shape}")
    return PCA(n_components=pca_dim, random_state=_derive_seed(seed, _PCA_TAG, pca_dim)).fit(z)


def _fit_gmm(z: np.ndarray, k: int, covariance_type: str, max_iter: int,
             random_state: int) -> GaussianMixture:
    """One EM fit; convergence warnings are silenced because `converged_` is recorded instead."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=k, covariance_type=covariance_type, max_iter=max_iter,
                          random_state=random_state, reg_covar=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gmm.fit(z)


def fit_candidates(train_features: np.ndarray, cfg: TeacherConfig, seed: int) -> list[Candidate]:
    """Fits every grid cell (pca_dim x k x covariance type x restart) and scores it on train.

    Args:
        train_features: (N, d) warm-up features mu(x) of the train split.
        cfg: grid and thresholds; must have no `problems()`.
        seed: non-negative int; every random stream is derived from it.

    Returns:
        Candidates in grid order (index = position), each with its diagnostics on the train targets.
    """
    from sklearn.preprocessing import StandardScaler

    _require_valid(cfg, seed)
    x = check_features(train_features, "train_features")
    rows = _fit_rows(len(x), cfg.fit_samples, seed)
    if max(cfg.ks) > len(rows):
        raise ValueError(f"teacher.ks: K = {max(cfg.ks)} exceeds the {len(rows)} rows the GMMs are fitted on")
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)  # (N, d)
    candidates: list[Candidate] = []
    for pca_dim in cfg.pca_dims:
        pca = _fit_pca(z, pca_dim, seed)
        z_fit = (z if pca is None else pca.transform(z))[rows]  # (n_fit, d')
        for k, ct, restart in itertools.product(cfg.ks, cfg.covariance_types, range(cfg.restarts)):
            state = _derive_seed(seed, _GMM_TAG, k, COVARIANCE_TYPES.index(ct), pca_dim, restart)
            model = TeacherModel(scaler, pca, _fit_gmm(z_fit, k, ct, cfg.max_iter, state))
            diag = teacher_diagnostics(model.predict(x), cfg.high_margin_level)
            feasible, failed = is_feasible(diag, k, cfg)
            candidates.append(Candidate(len(candidates), k, ct, pca_dim, restart, diag, feasible, failed,
                                        bool(model.gmm.converged_), model))
    return candidates


def _require_valid(cfg: TeacherConfig, seed: int) -> None:
    """Raises one ValueError listing every config problem and a bad seed."""
    problems = cfg.problems()
    if not _is_int(seed) or seed < 0:
        problems.append(f"seed must be an int >= 0, got {seed!r}")
    if problems:
        raise ValueError("invalid teacher search config: " + "; ".join(problems))


def select(candidates: list[Candidate]) -> Candidate:
    """Deterministic selection (docs/method.md Protocol step 2).

    The feasible candidate with the highest teacher MI (ties: lowest index); if none is feasible,
    the nonconstant candidate (teacher MI > CONSTANT_MI) with the highest teacher MI, whose
    `stress_case` is then True.

    Raises:
        ValueError: if no candidate is nonconstant; the message lists the grid.
    """
    feasible = [c for c in candidates if c.feasible]
    pool = feasible or [c for c in candidates if c.teacher_mi > CONSTANT_MI]
    if not pool:
        grid = {"ks": sorted({c.k for c in candidates}),
                "covariance_types": sorted({c.covariance_type for c in candidates}),
                "pca_dims": sorted({c.pca_dim for c in candidates}),
                "restarts": len({c.restart for c in candidates})}
        raise ValueError(f"no nonconstant teacher was found among {len(candidates)} candidates "
                         f"(every teacher MI <= {CONSTANT_MI}); grid: {grid}")
    return max(pool, key=lambda c: (c.teacher_mi, -c.index))


def search_teacher(train_features: np.ndarray, eval_features: np.ndarray, cfg: TeacherConfig, seed: int,
                   data_fingerprint: str, warmup_fingerprint: str) -> TeacherArtifact:
    """Fits the grid, selects one teacher, and builds its artifact (train and eval targets).

    Args:
        train_features: (N_train, d) warm-up features of the train split (the GMMs are fitted here).
        eval_features: (N_eval, d) warm-up features of the evaluation split.
        cfg: the search config.
        seed: non-negative int that fixes every random choice.
        data_fingerprint: identifies the data the features came from.
        warmup_fingerprint: identifies the warm-up checkpoint the features came from.

    Returns:
        The TeacherArtifact; both target matrices come from the same selected candidate.
    """
    eval_x = check_features(eval_features, "eval_features")
    candidates = fit_candidates(train_features, cfg, seed)
    best = select(candidates)
    return TeacherArtifact(
        targets_train=best.predict(train_features), targets_eval=best.predict(eval_x),
        selected=best.row(), candidates=[c.row() for c in candidates], seed=int(seed),
        data_fingerprint=data_fingerprint, warmup_fingerprint=warmup_fingerprint)
