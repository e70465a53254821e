"""GMM teacher search (teachers/search.py) and the cached artifact (teachers/artifact.py):
diagnostics on hand-made teachers, deterministic selection on synthetic blobs, and a cache that
refuses every modified, mismatched or overwriting use (docs/method.md, "Protocol" step 2)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from teachers.artifact import TeacherArtifact, TeacherCacheError, load_teacher, save_teacher
from teachers.search import (
    TeacherConfig,
    fit_candidates,
    is_feasible,
    search_teacher,
    select,
    teacher_diagnostics,
)

CENTERS = np.array([[0.0, 0.0, 0.0, 0.0], [8.0, 0.0, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0]])  # 8 sd apart


def _blobs(n_per_blob: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated unit Gaussian blobs in 4-D: features (3n, 4) and blob labels (3n,)."""
    labels = np.repeat(np.arange(3), n_per_blob)
    return CENTERS[labels] + np.random.default_rng(seed).normal(size=(len(labels), 4)), labels


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x_train, y_train = _blobs(100, seed=0)
    x_eval, y_eval = _blobs(50, seed=1)
    return x_train, y_train, x_eval, y_eval


def _is_blob_partition(T: np.ndarray, labels: np.ndarray) -> bool:
    """True iff argmax T maps each blob to one component and different blobs to different ones."""
    hard = T.argmax(axis=1)
    per_blob = [set(hard[labels == b]) for b in np.unique(labels)]
    return all(len(s) == 1 for s in per_blob) and len(set.union(*per_blob)) == len(per_blob)


# ---------- diagnostics and feasibility on hand-made teachers ----------

def test_diagnostics_one_hot_balanced() -> None:
    T = np.tile(np.eye(4), (3, 1))  # (12, 4): every component used by 3 rows
    d = teacher_diagnostics(T, high_margin_level=0.5)
    assert d == pytest.approx({"teacher_mi": math.log(4), "top1_margin": 1.0, "high_margin_frac": 1.0,
                               "hard_balance_kl": 0.0, "soft_usage_kl": 0.0, "min_mass": 0.25}, abs=1e-15)


def test_diagnostics_uniform_teacher() -> None:
    d = teacher_diagnostics(np.full((10, 5), 0.2), high_margin_level=0.5)
    assert d["teacher_mi"] == 0.0
    assert d["top1_margin"] == 0.0
    assert d["high_margin_frac"] == 0.0
    assert d["soft_usage_kl"] == pytest.approx(0.0, abs=1e-15)
    # Every argmax tie goes to component 0: the hard histogram is a point mass, KL = log K.
    assert d["hard_balance_kl"] == pytest.approx(math.log(5), abs=1e-15)
    assert d["min_mass"] == pytest.approx(0.2, abs=1e-15)


def test_diagnostics_unbalanced_and_partial_margins() -> None:
    hard = teacher_diagnostics(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), 0.5)
    # argmax histogram (3/4, 1/4): KL to uniform = 0.75 ln 1.5 + 0.25 ln 0.5.
    assert hard["hard_balance_kl"] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-15)
    assert hard["min_mass"] == 0.25
    soft = teacher_diagnostics(np.array([[0.75, 0.25, 0.0], [0.4, 0.35, 0.25]]), 0.5)
    # Gaps 0.5 (counts: >= the level) and 0.05 (does not).
    assert soft["top1_margin"] == pytest.approx(0.275, abs=1e-12)
    assert soft["high_margin_frac"] == 0.5
    assert soft["min_mass"] == pytest.approx(0.125, abs=1e-15)


def test_is_feasible_names_failed_thresholds() -> None:
    cfg = TeacherConfig()
    good = {"teacher_mi": 1.0, "top1_margin": 0.8, "high_margin_frac": 0.9, "hard_balance_kl": 0.1,
            "soft_usage_kl": 0.1, "min_mass": 0.06}
    assert is_feasible(good, 5, cfg) == (True, [])  # 0.06 >= 0.25 / 5
    assert is_feasible(good, 4, cfg) == (False, ["min_mass_ratio"])  # 0.06 < 0.25 / 4
    bad = {**good, "teacher_mi": 0.05, "soft_usage_kl": 0.6}
    assert is_feasible(bad, 5, cfg) == (False, ["min_teacher_mi", "max_soft_usage_kl"])


# ---------- search and selection on blobs ----------

def test_search_recovers_the_blobs_when_k3_is_the_most_informative(blobs) -> None:
    x_train, y_train, x_eval, y_eval = blobs
    art = search_teacher(x_train, x_eval, TeacherConfig(ks=[2, 3]), seed=0,
                         data_fingerprint="d", warmup_fingerprint="w")
    # Any K=2 teacher has I_T <= H(Tbar) <= ln 2 < ln 3, so the max-MI rule has to pick K=3.
    assert art.k == 3 and art.feasible
    assert art.I_T == pytest.approx(math.log(3), abs=1e-3)
    assert _is_blob_partition(art.targets_train, y_train)
    assert _is_blob_partition(art.targets_eval, y_eval)


def test_selection_is_max_mi_among_feasible(blobs) -> None:
    x_train, _, _, _ = blobs
    candidates = fit_candidates(x_train, TeacherConfig(ks=[2, 3, 5]), seed=0)
    assert [(c.index, c.k, c.restart) for c in candidates] == [
        (0, 2, 0), (1, 2, 1), (2, 3, 0), (3, 3, 1), (4, 5, 0), (5, 5, 1)]
    # The K=3 fits are the blobs exactly, hence feasible, so the winner is at least that informative.
    assert all(c.feasible and abs(c.teacher_mi - math.log(3)) < 1e-3 for c in candidates if c.k == 3)
    best = select(candidates)
    assert best.feasible
    assert best.teacher_mi == max(c.teacher_mi for c in candidates if c.feasible)
    assert best.teacher_mi >= math.log(3) - 1e-3


def test_selection_ties_go_to_the_lowest_index_and_feasible_beats_higher_mi(blobs) -> None:
    x_train, _, _, _ = blobs
    candidates = fit_candidates(x_train, TeacherConfig(ks=[3], restarts=3), seed=0)
    tied = [dataclasses.replace(c, diagnostics={**c.diagnostics, "teacher_mi": 1.0}) for c in candidates]
    assert select(tied).index == 0
    infeasible_best = {**tied[0].diagnostics, "teacher_mi": 2.0}
    tied[0] = dataclasses.replace(tied[0], feasible=False, diagnostics=infeasible_best)
    assert select(tied).index == 1


def test_search_is_deterministic(blobs) -> None:
    x_train, _, x_eval, _ = blobs
    cfg = TeacherConfig(ks=[3, 5], covariance_types=["diag", "spherical"], pca_dims=[0, 2], fit_samples=200)
    a = search_teacher(x_train, x_eval, cfg, seed=7, data_fingerprint="d", warmup_fingerprint="w")
    b = search_teacher(x_train, x_eval, cfg, seed=7, data_fingerprint="d", warmup_fingerprint="w")
    assert np.array_equal(a.targets_train, b.targets_train)
    assert np.array_equal(a.targets_eval, b.targets_eval)
    assert a.candidates == b.candidates
    assert a.content_hash() == b.content_hash()


def test_impossible_thresholds_select_a_stress_case(blobs) -> None:
    x_train, _, x_eval, _ = blobs
    cfg = TeacherConfig(ks=[2, 3], min_teacher_mi=50.0)
    candidates = fit_candidates(x_train, cfg, seed=0)
    assert all(not c.feasible and "min_teacher_mi" in c.failed for c in candidates)
    best = select(candidates)
    assert best.stress_case and best.k == 3
    art = search_teacher(x_train, x_eval, cfg, seed=0, data_fingerprint="d", warmup_fingerprint="w")
    assert not art.feasible
    assert art.selected["stress_case"] is True


def test_constant_features_have_no_nonconstant_teacher() -> None:
    with pytest.raises(ValueError, match="no nonconstant teacher"):
        search_teacher(np.ones((60, 4)), np.ones((10, 4)), TeacherConfig(ks=[2, 3]), seed=0,
                       data_fingerprint="d", warmup_fingerprint="w")


def test_bad_features_and_grid_raise(blobs) -> None:
    x_train, _, x_eval, _ = blobs
    with pytest.raises(ValueError, match="NaN"):
        fit_candidates(np.where(np.arange(4) == 2, np.nan, x_train), TeacherConfig(ks=[3]), seed=0)
    with pytest.raises(ValueError, match="pca_dims: PCA dim 9"):
        fit_candidates(x_train, TeacherConfig(ks=[3], pca_dims=[9]), seed=0)
    with pytest.raises(ValueError, match="teacher.ks"):
        fit_candidates(x_train, TeacherConfig(ks=[1]), seed=0)
    candidate = fit_candidates(x_train, TeacherConfig(ks=[3], restarts=1, pca_dims=[2]), seed=0)[0]
    T = candidate.predict(x_eval)
    assert T.shape == (150, 3) and candidate.pca_dim == 2
    np.testing.assert_allclose(T.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="dim 3"):
        candidate.predict(x_eval[:, :3])


def test_config_problems() -> None:
    assert TeacherConfig().problems() == []
    assert TeacherConfig(ks=[1, 3]).problems() == ["teacher.ks: K must be >= 2, got 1"]
    assert any("teacher.covariance_types" in p and "'banded'" in p
               for p in TeacherConfig(covariance_types=["diag", "banded"]).problems())
    assert any("teacher.min_top1_margin" in p for p in TeacherConfig(min_top1_margin=-0.1).problems())
    assert any("teacher.max_soft_usage_kl" in p for p in TeacherConfig(max_soft_usage_kl=-1.0).problems())
    assert any("teacher.pca_dims" in p for p in TeacherConfig(pca_dims=[-2]).problems())
    assert any("teacher.restarts" in p for p in TeacherConfig(restarts=0).problems())
    assert any("teacher.cache" in p for p in TeacherConfig(target="search", cache="/x").problems())
    assert TeacherConfig(target="fixed").problems() == []  # searches, then caches in this run
    assert TeacherConfig(target="fixed", cache="/some/dir").problems() == []
    assert any("teacher.target" in p for p in TeacherConfig(target="frozen").problems())


# ---------- the cached artifact ----------

@pytest.fixture()
def artifact() -> TeacherArtifact:
    rng = np.random.default_rng(0)
    row = {"index": 1, "k": 3, "covariance_type": "diag", "pca_dim": 0, "restart": 1,
           "teacher_mi": 0.7, "top1_margin": 0.6, "feasible": True, "failed": [], "stress_case": False}
    return TeacherArtifact(
        targets_train=rng.dirichlet(np.ones(3), size=20), targets_eval=rng.dirichlet(np.ones(3), size=8),
        selected=row, candidates=[{**row, "index": 0, "teacher_mi": 0.5}, row], seed=3,
        data_fingerprint="data-abc", warmup_fingerprint="warm-xyz")


def test_artifact_round_trip(artifact: TeacherArtifact, tmp_path) -> None:
    save_teacher(artifact, tmp_path / "teacher")
    loaded = load_teacher(tmp_path / "teacher", data_fingerprint="data-abc", warmup_fingerprint="warm-xyz")
    assert np.array_equal(loaded.targets_train, artifact.targets_train)
    assert np.array_equal(loaded.targets_eval, artifact.targets_eval)
    assert loaded.metadata() == artifact.metadata()
    assert loaded.content_hash() == artifact.content_hash()
    assert json.loads((tmp_path / "teacher" / "teacher.json").read_text())["format_version"] == 1
    save_teacher(artifact, tmp_path / "teacher")  # identical re-save is allowed


def test_searched_artifact_round_trips(blobs, tmp_path) -> None:
    x_train, _, x_eval, _ = blobs
    art = search_teacher(x_train, x_eval, TeacherConfig(ks=[3], restarts=1), seed=0,
                         data_fingerprint="d", warmup_fingerprint="w")
    loaded = load_teacher(save_teacher(art, tmp_path / "t"))
    assert loaded.content_hash() == art.content_hash()
    assert loaded.selected == art.selected and loaded.I_T == art.I_T


def test_tampered_targets_fail_the_hash(artifact: TeacherArtifact, tmp_path) -> None:
    directory = save_teacher(artifact, tmp_path / "t")
    arrays = dict(np.load(directory / "targets.npz"))
    arrays["targets_train"][0] = np.roll(arrays["targets_train"][0], 1)  # still a distribution
    np.savez(directory / "targets.npz", **arrays)
    with pytest.raises(TeacherCacheError, match="hash"):
        load_teacher(directory)


def test_tampered_json_fails_the_hash(artifact: TeacherArtifact, tmp_path) -> None:
    directory = save_teacher(artifact, tmp_path / "t")
    meta = json.loads((directory / "teacher.json").read_text())
    meta["selected"]["teacher_mi"] += 1e-9
    (directory / "teacher.json").write_text(json.dumps(meta))
    with pytest.raises(TeacherCacheError, match="hash"):
        load_teacher(directory)


def test_non_stochastic_targets_are_rejected(artifact: TeacherArtifact, tmp_path) -> None:
    directory = save_teacher(artifact, tmp_path / "t")
    arrays = dict(np.load(directory / "targets.npz"))
    arrays["targets_eval"][2] *= 2.0
    np.savez(directory / "targets.npz", **arrays)
    with pytest.raises(TeacherCacheError, match=r"targets_eval row 2 sums"):
        load_teacher(directory)


def test_fingerprint_mismatch_is_refused(artifact: TeacherArtifact, tmp_path) -> None:
    directory = save_teacher(artifact, tmp_path / "t")
    with pytest.raises(TeacherCacheError, match="data fingerprint data-abc"):
        load_teacher(directory, data_fingerprint="data-other")
    with pytest.raises(TeacherCacheError, match="warmup fingerprint"):
        load_teacher(directory, warmup_fingerprint="warm-other")


def test_missing_or_corrupt_cache_is_refused(artifact: TeacherArtifact, tmp_path) -> None:
    with pytest.raises(TeacherCacheError, match="missing"):
        load_teacher(tmp_path / "nowhere")
    directory = save_teacher(artifact, tmp_path / "t")
    (directory / "teacher.json").write_text("{not json")
    with pytest.raises(TeacherCacheError, match="teacher.json"):
        load_teacher(directory)


def test_saving_a_different_artifact_is_refused(artifact: TeacherArtifact, tmp_path) -> None:
    directory = save_teacher(artifact, tmp_path / "t")
    before = {name: (directory / name).read_bytes() for name in ("targets.npz", "teacher.json")}
    other = dataclasses.replace(artifact, seed=4)
    with pytest.raises(TeacherCacheError, match=str(directory)):
        save_teacher(other, directory)
    assert {name: (directory / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in directory.iterdir()) == ["targets.npz", "teacher.json"]
