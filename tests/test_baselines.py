"""Baselines of paper Table 3 (models/baselines.py, models/latents.py): each baseline's own term
against its definition computed independently, the VQ codebook and the GMVAE mixture prior, the
post-hoc and q(y|x) scores (sweep/metrics.py), and the baselines end to end through the runner with
an exact checkpoint resume (docs/method.md, "Baselines", "Certificate": post-hoc certificate)."""

from __future__ import annotations

import csv
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from torch import Tensor

from models.baselines import (BaselineConfig, BetaVAE, FreeBits, GMVAEObjective, KLAnnealing,
                              VQObjective, latent_spec, make_objective)
from models.latents import MixturePrior, VectorQuantizer
from models.objective import Objective, reconstruction_loss
from models.vae import CertVAE, LatentSpec, ModelConfig, VAEOutput, build
from sweep.schema import CHECKPOINT_FILE
from sweep.checkpoint import load_checkpoint
from sweep.config import EvalConfig, from_dict
from sweep.data import ImageData
from sweep.metrics import evaluate, posthoc_certificate, qy_certificate
from sweep.protocol import new_trial, restore, run_trial
from sweep.variants import STAGES
from sweep.runner import run_config
from teachers import certificate as cert
from teachers.artifact import TeacherArtifact, load_teacher
from tests.conftest import tiny_raw

D, B = 4, 16
GREY = (1, 8, 8)
TAU = 0.05
E2E_VARIANTS = ["vae", "free_bits", "gmvae", "vqvae"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run far faster on one thread on a shared 2-core box; also keeps the straight and
    the resumed runs of the resume test on the same reduction order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(latent: LatentSpec | None = None, k: int = 0, seed: int = 0) -> CertVAE:
    torch.manual_seed(seed)
    return build(ModelConfig(arch="mlp", latent_dim=D, hidden=16), GREY, k, latent)


def _out(mu: Tensor, logvar: Tensor, **kw) -> VAEOutput:
    """A VAEOutput for a regulariser; z and the reconstruction do not enter any R."""
    return VAEOutput(mu, logvar, mu, torch.zeros(len(mu), *GREY, dtype=mu.dtype), **kw)


def _posterior(seed: int = 0, b: int = B, d: int = D) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64)
    return mu.requires_grad_(True), logvar.requires_grad_(True)


def _np_kl_per_dim(mu: Tensor, logvar: Tensor) -> np.ndarray:
    """KL(N(mu, e^lv) || N(0, 1)) per row and dimension, (B, d), in numpy."""
    m, lv = mu.detach().numpy(), logvar.detach().numpy()
    return 0.5 * (m**2 + np.exp(lv) - 1.0 - lv)


def _dirichlet_rows(n: int, k: int, seed: int, conc: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(k, conc), size=n)


# ---------------------------------------------------------------- free bits, annealing, beta-VAE

def test_free_bits_floors_each_dimension_and_kills_its_gradient() -> None:
    floor, alpha = 0.25, 0.7
    mu, logvar = _posterior()
    with torch.no_grad():  # dims 0, 1 near the prior (KL << floor); dims 2, 3 far above it
        mu[:, :2] *= 0.05
        logvar[:, :2] *= 0.05
        mu[:, 2:] += 2.0
    kl_j = _np_kl_per_dim(mu, logvar).mean(0)  # (d,) batch-mean KL per dimension
    below, above = kl_j < floor, kl_j > floor
    assert below.tolist() == [True, True, False, False]

    reg = FreeBits("bce", alpha, 0.0, floor).regularizer(_out(mu, logvar), step=0)
    assert reg.item() == pytest.approx(alpha * np.maximum(kl_j, floor).sum(), rel=1e-12)
    g_mu, g_lv = torch.autograd.grad(reg, (mu, logvar))
    assert torch.equal(g_mu[:, below], torch.zeros_like(g_mu[:, below]))
    assert torch.equal(g_lv[:, below], torch.zeros_like(g_lv[:, below]))

    # above the floor: the plain KL gradient of alpha * KL_j (KL_j written out here by hand)
    plain = alpha * (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0)[above].sum()
    p_mu, p_lv = torch.autograd.grad(plain, (mu, logvar))
    torch.testing.assert_close(g_mu[:, above], p_mu[:, above], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g_lv[:, above], p_lv[:, above], rtol=1e-12, atol=1e-15)
    assert (g_mu[:, above].abs() > 0).all()


@pytest.mark.parametrize("step, factor", [(0, 0.0), (50, 0.5), (100, 1.0), (250, 1.0), (1, 0.01)])
def test_kl_annealing_weight_ramps_linearly_then_holds(step: int, factor: float) -> None:
    alpha = 0.8
    obj = make_objective("kl_anneal", "bce", alpha, 0.1, BaselineConfig(anneal_steps=100), _model())
    assert isinstance(obj, KLAnnealing)
    assert obj.weight(step) == pytest.approx(alpha * factor, abs=1e-15)
    mu, logvar = _posterior(1)
    kl = _np_kl_per_dim(mu, logvar).sum(1).mean()
    assert obj.regularizer(_out(mu, logvar), step).item() == pytest.approx(alpha * factor * kl, rel=1e-12,
                                                                           abs=1e-15)


@pytest.mark.parametrize("variant, beta", [("beta_vae_a", 0.3), ("beta_vae_b", 6.0)])
def test_beta_vae_regulariser_is_beta_times_kl(variant: str, beta: float) -> None:
    cfg = BaselineConfig(beta_a=0.3, beta_b=6.0)
    obj = make_objective(variant, "bce", 1.7, 0.1, cfg, _model())  # alpha_kl 1.7 must not enter
    assert isinstance(obj, BetaVAE)
    mu, logvar = _posterior(2)
    kl = _np_kl_per_dim(mu, logvar).sum(1).mean()
    assert obj.regularizer(_out(mu, logvar), 0).item() == pytest.approx(beta * kl, rel=1e-12)


def test_make_objective_and_latent_spec_per_variant() -> None:
    cfg = BaselineConfig(vq_codes=7, vq_ema=True, vq_decay=0.9, gmm_components=0)
    gm = _model(latent_spec("gmvae", cfg, 5))
    for variant in ("full", "noalign", "rescue", "prefit", "vae"):
        assert type(make_objective(variant, "bce", 1.0, 0.1, cfg, gm)) is Objective, variant
    expected = {"beta_vae_a": BetaVAE, "beta_vae_b": BetaVAE, "kl_anneal": KLAnnealing,
                "free_bits": FreeBits, "gmvae": GMVAEObjective, "vqvae": VQObjective}
    for variant, cls in expected.items():
        assert type(make_objective(variant, "bce", 1.0, 0.1, cfg, gm)) is cls, variant

    for stage in STAGES:
        spec = latent_spec(stage, cfg, 5)
        kind = {"vqvae": "vq", "gmvae": "gmm"}.get(stage, "gaussian")
        assert spec.kind == kind, stage
        model = _model(spec)
        assert (model.quantizer is not None) == (kind == "vq")
        assert (model.prior is not None and model.qy is not None) == (kind == "gmm")
    vq = latent_spec("vqvae", cfg, 5)
    assert (vq.n_codes, vq.ema, vq.decay) == (7, True, 0.9)
    assert latent_spec("gmvae", cfg, 5).n_mixture == 5  # 0 = the teacher's K
    assert latent_spec("gmvae", BaselineConfig(gmm_components=3), 5).n_mixture == 3


# ---------------------------------------------------------------- VQ-VAE

def test_quantiser_returns_the_nearest_code() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=10, dim=3)
    z = torch.randn(50, 3)
    z_st, z_q = vq(z)
    book = vq.codebook.detach().double().numpy()
    dist = ((z.double().numpy()[:, None, :] - book[None]) ** 2).sum(-1)  # (50, 10)
    idx = dist.argmin(1)
    assert vq.assign(z).tolist() == idx.tolist()
    assert torch.equal(z_q, vq.codebook[torch.as_tensor(idx)])
    torch.testing.assert_close(z_st, z_q)  # forward value of the straight-through code is z_q


def _vq_batch(digits: ImageData, n: int = 32) -> Tensor:
    return digits.x_train[:n]


def test_vq_codebook_loss_trains_assigned_codes_and_straight_through_reaches_encoder(digits) -> None:
    model = _model(LatentSpec("vq", n_codes=64, ema=False))
    c = 0.25
    obj = make_objective("vqvae", "bce", 1.0, 0.0, BaselineConfig(vq_commitment=c), model)
    x = _vq_batch(digits)
    out = model(x)
    codes = model.quantizer.assign(out.mu)
    used = torch.zeros(64, dtype=torch.bool)
    used[codes] = True
    assert 0 < int(used.sum()) < 64  # some codes assigned, some not: the test can tell them apart

    # straight-through: the decoder's gradient at its input reaches z_e = mu unchanged
    recon = reconstruction_loss(out.x_logits, x, "bce")
    g_mu, g_z = torch.autograd.grad(recon, (out.mu, out.z), retain_graph=True)
    torch.testing.assert_close(g_mu, g_z, rtol=0, atol=0)
    assert g_mu.abs().sum() > 0
    (g_book,) = torch.autograd.grad(recon, model.quantizer.codebook, allow_unused=True, retain_graph=True)
    assert g_book is None or torch.equal(g_book, torch.zeros_like(g_book))  # not through the decoder

    # the regulariser: codebook term -> codebook only; commitment term -> encoder only
    reg = obj.regularizer(out, 0)
    g_book, g_mu = torch.autograd.grad(reg, (model.quantizer.codebook, out.mu), retain_graph=True)
    mu, book = out.mu.detach().double(), model.quantizer.codebook.detach().double()
    expected_book = torch.zeros_like(book)
    expected_book.index_add_(0, codes, 2.0 * (book[codes] - mu) / len(mu))  # d/de_m ||sg(z_e) - e_m||^2
    torch.testing.assert_close(g_book.double(), expected_book, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_mu.double(), 2.0 * c * (mu - book[codes]) / len(mu), rtol=1e-5, atol=1e-7)
    expected_reg = ((mu - book[codes]) ** 2).sum(1).mean() * (1 + c)
    assert reg.item() == pytest.approx(float(expected_reg), rel=1e-5)

    # one optimizer step on the whole loss: assigned rows move, the others stay, encoder trains
    before = model.quantizer.codebook.detach().clone()
    enc_before = [p.detach().clone() for p in model.encoder.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt.zero_grad()
    obj(model, x, None, 0.0, 0).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    opt.step()
    moved = (model.quantizer.codebook.detach() != before).any(1)
    assert torch.equal(moved, used)
    assert any(not torch.equal(a, p) for a, p in zip(enc_before, model.encoder.parameters()))


def _np_ema(book, count, total, z, decay):
    """Expected EMA codebook after one batch, assignments by brute force on the OLD codebook."""
    idx = ((z[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
    onehot = np.eye(len(book))[idx]  # (B, M)
    count = decay * count + (1 - decay) * onehot.sum(0)
    total = decay * total + (1 - decay) * onehot.T @ z
    return total / count[:, None], count, total, idx


def test_vq_ema_codebook_follows_the_moving_average_in_training_only() -> None:
    torch.manual_seed(1)
    decay = 0.9
    vq = VectorQuantizer(n_codes=12, dim=3, ema=True, decay=decay)
    assert "codebook" in dict(vq.named_buffers()) and len(list(vq.parameters())) == 0
    z = torch.randn(40, 3) + 0.3

    vq.eval()
    frozen = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(z)
    assert all(torch.equal(frozen[k], v) for k, v in vq.state_dict().items())

    vq.train()
    book, count, total = (vq.codebook.double().numpy().copy(), vq.ema_count.double().numpy().copy(),
                          vq.ema_sum.double().numpy().copy())
    exp_book, exp_count, exp_total, idx = _np_ema(book, count, total, z.double().numpy(), decay)
    vq(z)
    used = np.bincount(idx, minlength=12) > 0
    assert 0 < used.sum() < 12
    np.testing.assert_allclose(vq.ema_count.numpy(), exp_count, rtol=1e-6)
    np.testing.assert_allclose(vq.ema_sum.numpy(), exp_total, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vq.codebook.numpy(), exp_book, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vq.codebook.numpy()[~used], book[~used], rtol=1e-5, atol=1e-6)
    zn = z.double().numpy()
    for m in np.flatnonzero(used):  # each assigned code moved toward the mean of its encoder outputs
        target = zn[idx == m].mean(0)
        assert np.linalg.norm(vq.codebook.numpy()[m] - target) < np.linalg.norm(book[m] - target)


def test_vq_ema_objective_has_no_codebook_term(digits) -> None:
    model = _model(LatentSpec("vq", n_codes=16, ema=True, decay=0.9))
    obj = make_objective("vqvae", "bce", 1.0, 0.0, BaselineConfig(vq_commitment=0.4, vq_ema=True), model)
    model.eval()  # no EMA update: the codebook is the one z_q was read from
    out = model(_vq_batch(digits))
    commit = (out.mu - out.z_q).double().pow(2).sum(1).mean()
    assert obj.regularizer(out, 0).item() == pytest.approx(0.4 * commit.item(), rel=1e-5)
    assert not model.quantizer.codebook.requires_grad


# ---------------------------------------------------------------- GMVAE

def _prior(k: int, d: int, seed: int) -> MixturePrior:
    torch.manual_seed(seed)
    prior = MixturePrior(k, d).double()
    with torch.no_grad():
        prior.logvars.uniform_(-1.0, 1.0)
    return prior


def test_mixture_prior_is_a_proper_mixture() -> None:
    prior = _prior(3, 2, 0)
    w = prior.log_weights.exp()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(w, torch.full((3,), 1 / 3, dtype=w.dtype), rtol=0, atol=1e-7)

    z = torch.randn(7, 2, dtype=torch.float64) * 2
    means, var = prior.means.detach().numpy(), prior.logvars.detach().exp().numpy()
    comp = np.stack([multivariate_normal(means[y], np.diag(var[y])).logpdf(z.numpy()) for y in range(3)], 1)
    np.testing.assert_allclose(prior.component_log_prob(z).detach().numpy(), comp, rtol=1e-10)
    expected = logsumexp(np.log(1 / 3) + comp, axis=1)
    np.testing.assert_allclose(prior.log_prob(z).detach().numpy(), expected, rtol=1e-10)


def test_mixture_prior_density_integrates_to_one_in_1d() -> None:
    prior = MixturePrior(3, 1).double()
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-2.0], [0.5], [3.0]]))
        prior.logvars.copy_(torch.tensor([[math.log(0.25)], [0.0], [math.log(2.0)]]))
    grid = torch.linspace(-30, 30, 200001, dtype=torch.float64)
    dens = prior.log_prob(grid[:, None]).detach().exp()
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-3)


def _np_gauss_kl(mu, logvar, means, logvars) -> np.ndarray:
    """KL(N(mu_b, diag e^lv_b) || N(m_y, diag e^v_y)) with full matrices, (B, K)."""
    out = np.zeros((len(mu), len(means)))
    for b in range(len(mu)):
        s0 = np.diag(np.exp(logvar[b]))
        for y in range(len(means)):
            s1_inv = np.linalg.inv(np.diag(np.exp(logvars[y])))
            diff = means[y] - mu[b]
            out[b, y] = 0.5 * (np.trace(s1_inv @ s0) + diff @ s1_inv @ diff - len(diff)
                               + np.log(np.linalg.det(np.diag(np.exp(logvars[y]))) / np.linalg.det(s0)))
    return out


def test_kl_to_components_matches_closed_form_and_monte_carlo() -> None:
    prior = _prior(3, 2, 1)
    mu, logvar = _posterior(3, b=2, d=2)
    kl = prior.kl_to_components(mu, logvar).detach().numpy()
    expected = _np_gauss_kl(mu.detach().numpy(), logvar.detach().numpy(), prior.means.detach().numpy(),
                            prior.logvars.detach().numpy())
    np.testing.assert_allclose(kl, expected, rtol=1e-10)

    g = torch.Generator().manual_seed(0)
    n = 100_000
    q = torch.distributions.Normal(mu.detach(), (0.5 * logvar.detach()).exp())  # (2, 2)
    z = q.mean + q.stddev * torch.randn(n, 2, 2, generator=g, dtype=torch.float64)  # (n, B, d)
    log_q = q.log_prob(z).sum(-1)  # (n, B)
    for y in range(3):
        p = torch.distributions.Normal(prior.means[y].detach(), (0.5 * prior.logvars[y].detach()).exp())
        diff = (log_q - p.log_prob(z).sum(-1)).numpy()  # (n, B)
        se = diff.std(0) / math.sqrt(n)
        assert (np.abs(diff.mean(0) - kl[:, y]) < 5 * se + 1e-3).all(), y


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_gmvae_regulariser_by_hand(alpha: float) -> None:
    k = 3
    model = _model(LatentSpec("gmm", n_mixture=k)).double()
    obj = make_objective("gmvae", "bce", alpha, 0.0, BaselineConfig(), model)
    assert obj.prior is model.prior
    assert {id(p) for p in model.prior.parameters()} <= {id(p) for p in model.parameters()}
    mu, logvar = _posterior(4, b=5)
    logits = torch.randn(5, k, dtype=torch.float64)
    reg = obj.regularizer(_out(mu, logvar, qy_logits=logits), 0)

    lg = logits.numpy()
    qy = np.exp(lg - logsumexp(lg, axis=1, keepdims=True))  # (B, K)
    kl_y = _np_gauss_kl(mu.detach().numpy(), logvar.detach().numpy(), model.prior.means.detach().numpy(),
                        model.prior.logvars.detach().numpy())
    expected = ((qy * kl_y).sum(1) + (qy * np.log(qy * k)).sum(1)).mean()
    # The KL weight alpha_kl scales the GMVAE's whole KL part, as it scales the Gaussian VAE's KL.
    assert reg.item() == pytest.approx(alpha * expected, rel=1e-10)


def test_gmvae_qy_reads_the_image_not_z(digits) -> None:
    model = _model(LatentSpec("gmm", n_mixture=4))
    assert not {id(p) for p in model.qy.parameters()} & {id(p) for p in model.encoder.parameters()}
    mu, logvar = torch.zeros(8, D), torch.zeros(8, D)
    model.encode = lambda x: (mu, logvar)  # hold the posterior fixed whatever the image
    x = digits.x_train[:8]
    a, b = model(x), model(x.flip(-1))
    assert torch.equal(a.mu, b.mu)
    assert not torch.allclose(a.qy_logits, b.qy_logits)
    torch.testing.assert_close(a.qy_logits, model.qy(x))


# ---------------------------------------------------------------- post-hoc and q(y|x) scores

def test_posthoc_constant_means_score_the_train_mean_teacher() -> None:
    t_tr, t_ev = _dirichlet_rows(300, 4, 0), _dirichlet_rows(200, 4, 1)
    for c_tr, c_ev in ((0.1, 0.1), (0.1, 0.7), (3.3, -1.2)):
        res = posthoc_certificate(torch.full((300, 5), c_tr), t_tr, torch.full((200, 5), c_ev), t_ev, TAU)
        tb_tr, tb_ev = t_tr.mean(0), t_ev.mean(0)
        expected = -float((tb_ev * np.log(tb_ev / tb_tr)).sum()) - TAU  # Lemma 1 with c = Tbar_train
        assert res["posthoc_G_tau"] == pytest.approx(expected, abs=1e-6), (c_tr, c_ev)
        assert res["posthoc_student_mi"] == pytest.approx(0.0, abs=1e-9)


def test_posthoc_certifies_means_that_encode_the_teacher() -> None:
    rng = np.random.default_rng(0)
    t_tr, t_ev = _dirichlet_rows(400, 4, 2), _dirichlet_rows(200, 4, 3)
    enc = lambda t: torch.as_tensor(np.log(t) + 0.05 * rng.standard_normal(t.shape))  # noqa: E731
    res = posthoc_certificate(enc(t_tr), t_tr, enc(t_ev), t_ev, TAU)
    assert res["posthoc_G_tau"] > 0.5 * cert.teacher_mi(t_ev)
    assert res["posthoc_student_mi"] > 0


def test_posthoc_never_sees_labels(digits) -> None:
    params = list(inspect.signature(posthoc_certificate).parameters)
    assert params == ["mu_train", "t_train", "mu_eval", "t_eval", "tau", "max_iter"]
    model = _model(k=4)
    teacher = TeacherArtifact(_dirichlet_rows(len(digits.x_train), 4, 4), _dirichlet_rows(len(digits.x_eval), 4, 5),
                              {"k": 4}, [], 0, "", "")
    shuffled = ImageData(digits.name, digits.x_train, digits.y_train[torch.randperm(len(digits.y_train))],
                         digits.x_eval, None, digits.n_classes)
    cfg = EvalConfig(probe=False)
    a = evaluate(model, digits, teacher, cfg, posthoc=True)
    b = evaluate(model, shuffled, teacher, cfg, posthoc=True)
    for key in ("posthoc_G_tau", "posthoc_L_align", "posthoc_student_mi"):
        assert a[key] == b[key], key


def test_qy_certificate_on_a_gmvae_is_finite_and_scores_qy(digits) -> None:
    model = _model(LatentSpec("gmm", n_mixture=4))
    x = digits.x_eval[:200]
    targets = _dirichlet_rows(200, 4, 6)
    res = qy_certificate(model, x, targets, TAU, batch_size=64)
    assert all(math.isfinite(v) for v in res.values())
    with torch.no_grad():
        q = torch.softmax(model.qy(x).double(), 1).numpy()
    kl = (targets * np.log(targets / q)).sum(1).mean()
    i_t = (targets * np.log(targets / targets.mean(0))).sum(1).mean()
    assert res["qy_G_tau"] == pytest.approx(i_t - kl - TAU, rel=1e-9)
    assert res["qy_student_mi"] > 0


# ---------------------------------------------------------------- end to end

def _e2e_raw(**train) -> dict:
    raw = tiny_raw(**{"warmup_epochs": 1, "epochs": 1, **train})
    raw["variants"] = list(E2E_VARIANTS)
    raw["eval"]["probe"] = False
    raw["baselines"] = {"vq_ema": True, "vq_codes": 16}  # EMA: the codebook lives in buffers
    return raw


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, _one_thread) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("baselines") / "run"
    rows = run_config(from_dict(_e2e_raw()), out, log=lambda _: None)
    return out, rows


def test_baselines_end_to_end_rows(baseline_run) -> None:
    out, rows = baseline_run
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == E2E_VARIANTS
    assert [r["method"] for r in rows] == E2E_VARIANTS
    teacher = load_teacher(out / "seed_3" / "teacher")
    tbar = teacher.tbar
    untrained = -float((tbar * np.log(tbar * teacher.k)).sum()) - TAU  # uniform head: -KL(Tbar||u) - tau
    for row in rows:
        v = row["variant"]
        assert row["student_mi"] == pytest.approx(0.0, abs=1e-9), v
        assert row["G_tau"] == pytest.approx(untrained, abs=1e-6), v
        assert math.isfinite(row["posthoc_G_tau"]), v
        assert row["lam"] == 0.0, v
        assert math.isfinite(row["qy_G_tau"]) == (v == "gmvae"), v
        assert math.isnan(row["kl"]) == (v == "vqvae"), v


def test_baseline_checkpoint_resumes_exactly(baseline_run, digits, tmp_path) -> None:
    out, rows = baseline_run
    straight = load_checkpoint(out / "seed_3" / "vqvae" / CHECKPOINT_FILE)
    assert not torch.equal(straight["model"]["quantizer.ema_count"], torch.ones(16))  # buffers moved
    teacher = load_teacher(out / "seed_3" / "teacher")
    cfg = from_dict(_e2e_raw())

    cut = from_dict(_e2e_raw(warmup_epochs=0))  # a baseline runs warmup + epochs: stop after one epoch
    first = new_trial(cut, "vqvae", 3, digits, teacher)
    run_trial(first, tmp_path / "cut")
    resumed = new_trial(cfg, "vqvae", 3, digits, teacher)
    restore(resumed, load_checkpoint(tmp_path / "cut" / CHECKPOINT_FILE))
    for name in ("quantizer.codebook", "quantizer.ema_count", "quantizer.ema_sum"):
        assert torch.equal(resumed.model.state_dict()[name], first.model.state_dict()[name]), name
    assert resumed.epoch == 1 and resumed.step == first.step
    end = run_trial(resumed, tmp_path / "resumed")

    state = resumed.model.state_dict()
    assert state.keys() == straight["model"].keys()
    for name, value in straight["model"].items():
        assert torch.equal(state[name], value), name
    for key in ("G_tau", "posthoc_G_tau", "recon", "train_total", "step"):
        assert end[key] == straight["metrics"][-1][key], key
