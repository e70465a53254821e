"""Models (models/*.py): the z-only witnesses and Lemma 2, the simplex vertices, the used head, the
objective against closed forms and its one hook, training / eval weight checks, shapes, the
teacher-aware decoder's warm start, and checkpoint save/load (docs/method.md, "Objects", "Certificate",
"Objective")."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from models.objective import Objective, balance_kl, gaussian_kl_per_dim, student_log_probs
from models.vae import VAEOutput, CertVAE, ModelConfig, build
from models.witness import LatentCode, LearnedHead, SimplexWitness, UsedHead, simplex_vertices
from sweep.checkpoint import REQUIRED, CheckpointError, load_checkpoint, save_checkpoint
from teachers.certificate import kl_rows_torch

D, K, HIDDEN, B = 6, 4, 32, 8
GREY = (1, 8, 8)


def _cfg(**kw) -> ModelConfig:
    base = dict(arch="mlp", latent_dim=D, hidden=HIDDEN, channels=4)
    return ModelConfig(**{**base, **kw})


def _model(k: int = K, seed: int = 0, **kw) -> CertVAE:
    torch.manual_seed(seed)
    return build(_cfg(**kw), GREY, k)


def _x(n: int = B, shape: tuple[int, int, int] = GREY, seed: int = 1) -> Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))  # (n, C, H, W)


def _teacher(n: int = B, k: int = K, seed: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3.0 * torch.randn(n, k, generator=g), dim=1)  # (n, K), non-constant rows


def _perturb(module: nn.Module, seed: int = 3) -> None:
    """Move every parameter away from its (possibly zero) init so a test cannot pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def _dyadic(shape: tuple[int, ...], scale: float, seed: int) -> Tensor:
    """Random multiples of 1/8 times `scale` (a power of two): products and sums of a few of them are
    exact in float32 in any order, so equal rows stay equal whatever the BLAS kernel does."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, shape, generator=g).float() / 8 * scale


def _dyadic_params(module: nn.Module, seed: int = 3) -> None:
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(_dyadic(tuple(p.shape), 1.0, seed + i))


def _simplex_code(n: int) -> Tensor:
    """Codes with two non-zero power-of-two entries: z @ V.T is then exact in float32 (the products are
    exact and one rounded addition does not depend on the order), unlike general codes."""
    z = torch.zeros(n, D)  # (n, d)
    z[:, 0], z[:, 2] = 2.0, -0.5
    return z


# Why not general float codes: on this CPU (MKL sgemm), a batch of B identical rows through a
# (B, d) @ (d, K) product with d = 5 or 6 differs by one ulp between odd and even rows. That is the
# BLAS kernel, not the witness; exact codes make "identical" test the z-only structure alone.


def _witnesses() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    linear, mlp = LearnedHead(D, K, hidden=0), LearnedHead(D, K, hidden=5)
    _dyadic_params(linear)
    _dyadic_params(mlp)
    return {"head_linear": linear, "head_mlp": mlp, "simplex": SimplexWitness(D, K, beta=4.0)}


def _code(kind: str, n: int, seed: int) -> Tensor:
    """(n, D) codes, all rows equal, exact for the witness `kind`."""
    row = _simplex_code(1) if kind == "simplex" else _dyadic((1, D), 2.0, seed)
    return row.expand(n, D).contiguous()


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_states_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


# --- Lemma 2 and the z-only interface --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["head_linear", "head_mlp", "simplex"])
def test_lemma2_same_code_gives_identical_rows(kind: str) -> None:
    witness = _witnesses()[kind]
    z = _code(kind, B, seed=7)  # (B, d), every row the same code
    s = witness(LatentCode(z))  # (B, K)
    assert s.shape == (B, K)
    assert torch.equal(s, s[:1].expand_as(s))
    # a row depends on its own code only, not on the other rows of the batch
    mixed = torch.cat([z[:1], torch.randn(B - 1, D, generator=torch.Generator().manual_seed(8))])
    assert torch.equal(witness(LatentCode(mixed))[0], s[0])
    # and the witness is not constant in z: different codes give different rows
    s_diff = witness(LatentCode(torch.randn(B, D, generator=torch.Generator().manual_seed(9))))
    assert not torch.allclose(s_diff, s_diff[:1].expand_as(s_diff), atol=1e-4)


@pytest.mark.parametrize("kind", ["head_linear", "head_mlp", "simplex"])
def test_lemma2_general_codes_to_float_precision(kind: str) -> None:
    """The same property for arbitrary float codes and weights, up to the BLAS rounding above."""
    torch.manual_seed(0)
    witness = {"head_linear": LearnedHead(D, K), "head_mlp": LearnedHead(D, K, 5),
               "simplex": SimplexWitness(D, K, 4.0)}[kind]
    _perturb(witness)
    z = torch.randn(1, D).expand(B, D).contiguous()
    s = witness(LatentCode(z))
    assert torch.allclose(s, s[:1].expand_as(s), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("witness", ["head", "simplex"])
def test_lemma2_constant_encoder_gives_constant_witness_in_certvae(witness: str) -> None:
    model = _model(witness=witness, head_hidden=5 if witness == "head" else 0)
    if witness == "head":
        _dyadic_params(model.witness)
    with torch.no_grad():
        model.encoder.net[-1].weight.zero_()  # mu(x) = bias: constant in x
        model.encoder.net[-1].bias[:D] = _code(witness, 1, seed=7)[0]  # an exact code (see above)
    x = _x()
    assert not torch.equal(x[0], x[1])
    with torch.no_grad():
        mu, _ = model.encode(x)
        s = torch.softmax(model.witness_logits(mu), dim=1)  # (B, K)
    assert torch.equal(mu, mu[:1].expand_as(mu))
    assert torch.equal(s, s[:1].expand_as(s))
    assert not torch.allclose(s[0], torch.full((K,), 1.0 / K), atol=1e-3)  # a non-trivial row
    # control: with the encoder intact, the rows differ between inputs
    fresh = _model(witness=witness)
    _perturb(fresh.witness)
    with torch.no_grad():
        s_fresh = torch.softmax(fresh.witness_logits(fresh.encode(x)[0]), dim=1)
    assert not torch.allclose(s_fresh, s_fresh[:1].expand_as(s_fresh), atol=1e-4)


@pytest.mark.parametrize("kind", ["head_linear", "head_mlp", "simplex"])
def test_witness_refuses_raw_tensor_and_wrong_width(kind: str) -> None:
    witness = _witnesses()[kind]
    with pytest.raises(TypeError, match="LatentCode"):
        witness(torch.randn(B, D))
    with pytest.raises(TypeError):
        witness.logits(torch.randn(B, D))
    with pytest.raises(ValueError, match=f"\\(B, {D}\\)"):
        witness(LatentCode(torch.randn(B, D + 1)))
    with pytest.raises(ValueError):
        witness(LatentCode(torch.randn(D)))  # unbatched


# --- simplex witness ------------------------------------------------------------------------------


@pytest.mark.parametrize("k,d", [(2, 1), (3, 2), (4, 6), (10, 9), (10, 16)])
def test_simplex_vertices_regular_simplex(k: int, d: int) -> None:
    v = simplex_vertices(k, d)
    assert v.shape == (k, d) and v.dtype == torch.float32
    v64 = v.double()
    assert torch.allclose(v64.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-6)
    gram = v64 @ v64.T  # (K, K)
    off = ~torch.eye(k, dtype=torch.bool)
    assert torch.allclose(gram[off], torch.full((k * (k - 1),), -1.0 / (k - 1), dtype=torch.float64), atol=1e-6)
    assert torch.allclose(v64.sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-6)
    assert torch.equal(v, simplex_vertices(k, d))  # deterministic


def test_simplex_vertices_need_enough_dimensions() -> None:
    with pytest.raises(ValueError, match="latent_dim >= K - 1"):
        simplex_vertices(5, 3)
    simplex_vertices(5, 4)  # d = K - 1 is enough


def test_simplex_vertices_are_a_fixed_buffer() -> None:
    model = _model(witness="simplex")
    vertices = model.witness.vertices
    assert all(p is not vertices for p in model.parameters())
    assert "witness.vertices" in model.state_dict()
    assert "witness.vertices" not in dict(model.named_parameters())
    before = vertices.clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = Objective("bce", 1.0, 0.1)(model, _x(), _teacher(), lam=1.0, step=0)
    opt.zero_grad()
    loss.total.backward()
    opt.step()
    assert torch.equal(model.witness.vertices, before)
    assert torch.equal(before, simplex_vertices(K, D))


def test_simplex_witness_logits_closed_form() -> None:
    w = SimplexWitness(D, K, beta=2.5)
    z = torch.randn(B, D)
    expected = 2.5 * z @ simplex_vertices(K, D).T  # (B, K)
    assert torch.allclose(w.logits(LatentCode(z)), expected, atol=1e-6)


# --- learned head and used head -------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [0, 5])
def test_untrained_learned_head_is_exactly_uniform(hidden: int) -> None:
    torch.manual_seed(0)
    head = LearnedHead(D, K, hidden)
    s = head(LatentCode(10.0 * torch.randn(B, D)))
    assert torch.equal(s, torch.full((B, K), 1.0 / K))


def test_used_head_preserves_constancy() -> None:
    used = UsedHead(K)
    _perturb(used)
    raw = torch.randn(1, K).expand(B, K).contiguous()  # equal raw rows
    out = used(raw)  # (B, K) log-probs
    assert torch.equal(out, out[:1].expand_as(out))
    assert torch.allclose(out.exp().sum(1), torch.ones(B), atol=1e-6)
    varied = used(torch.randn(B, K))
    assert not torch.allclose(varied, varied[:1].expand_as(varied))


def test_witness_logits_are_raw_not_used_head() -> None:
    model = _model(used_head=True)
    _perturb(model.witness)
    _perturb(model.used_head)
    mu = torch.randn(B, D)
    with torch.no_grad():
        raw = model.witness_logits(mu)
        assert torch.equal(raw, model.witness.logits(LatentCode(mu)))
        used = model.used_head(raw)
        assert not torch.allclose(torch.log_softmax(raw, dim=1), used, atol=1e-3)
        # the objective optimises the used head, the certificate reads the raw logits
        assert torch.equal(student_log_probs(model, mu), used)


# --- training and evaluation ----------------------------------------------------------------------


@pytest.mark.parametrize("witness", ["head", "simplex"])
def test_training_step_changes_weights(witness: str) -> None:
    model = _model(witness=witness)
    before = _clone_state(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    terms = Objective("bce", 1.0, 0.1)(model, _x(), _teacher(), lam=1.0, step=0,
                                       generator=torch.Generator().manual_seed(0))
    opt.zero_grad()
    terms.total.backward()
    opt.step()
    after = model.state_dict()
    prefixes = ["encoder.", "decoder_in.", "decoder_body."] + (["witness."] if witness == "head" else [])
    for prefix in prefixes:
        names = [n for n in before if n.startswith(prefix) and n != "witness.vertices"]
        assert names, prefix
        assert any(not torch.equal(before[n], after[n]) for n in names), prefix
    if witness == "head":  # the zero-initialised last layer moves off zero
        assert not torch.equal(after["witness.net.0.weight"], torch.zeros(K, D))


def test_eval_under_no_grad_changes_nothing() -> None:
    model = _model(used_head=True)
    before = _clone_state(model)
    model.eval()
    with torch.no_grad():
        out = model(_x(), None, torch.Generator().manual_seed(0))
        model.witness_logits(out.mu)
        terms = Objective("bce", 1.0, 0.1)(model, _x(), _teacher(), lam=1.0, step=0)
    assert not terms.total.requires_grad
    _assert_states_equal(before, model.state_dict())
    assert all(p.grad is None for p in model.parameters())


# --- checkpoint round trip ------------------------------------------------------------------------


def _checkpoint_state(model: CertVAE, opt: torch.optim.Optimizer) -> dict:
    plain = {"rng": torch.get_rng_state(), "config": {"model": {"latent_dim": D}}, "variant": "full",
             "seed": 0, "epoch": 1, "step": 3, "lam": 1.0, "metrics": [{"step": 3, "G_tau": 0.1}],
             "n_components": K, "teacher_hash": "abc", "data_fingerprint": "def", "parent": None}
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), **plain}
    assert set(REQUIRED) - {"format", "version"} <= set(state)
    return state


@pytest.mark.parametrize("witness", ["head", "simplex"])
def test_save_load_round_trip_restores_every_tensor(tmp_path: Path, witness: str) -> None:
    kw = dict(witness=witness, head_hidden=5, decoder_uses_teacher=True, used_head=True)
    model = _model(seed=0, **kw)
    _perturb(model)  # every tensor, zero-initialised ones included, now differs from a fresh build
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = save_checkpoint(_checkpoint_state(model, opt), tmp_path / "ckpt" / "last.pt")
    assert path.is_file() and not path.with_name(path.name + ".tmp").exists()
    state = load_checkpoint(path)
    fresh = _model(seed=1, **kw)
    assert any(not torch.equal(v, fresh.state_dict()[n]) for n, v in model.state_dict().items())
    fresh.load_state_dict(state["model"])
    _assert_states_equal(model.state_dict(), fresh.state_dict())
    assert state["step"] == 3 and state["metrics"] == [{"step": 3, "G_tau": 0.1}] and state["parent"] is None


def test_load_checkpoint_rejects_a_list(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="list.pt"):
        load_checkpoint(path)


def test_load_checkpoint_rejects_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="noise.pt"):
        load_checkpoint(path)


def test_load_checkpoint_rejects_missing_keys_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "partial.pt"
    torch.save({"format": "certsweep-checkpoint", "version": 1, "model": {}}, path)
    with pytest.raises(CheckpointError, match="partial.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


# --- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,shape", [("mlp", (1, 8, 8)), ("mlp", (1, 28, 28)),
                                        ("conv", (3, 32, 32)), ("conv", (3, 64, 64))])
def test_forward_shapes(arch: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build(_cfg(arch=arch), shape, K)
    x = _x(4, shape)
    with torch.no_grad():
        out = model(x)
    assert out.x_logits.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (4, D)
    assert model.witness_logits(out.mu).shape == (4, K)


@pytest.mark.parametrize("shape", [(3, 48, 48), (3, 32, 16), (3, 4, 4)])
def test_conv_build_rejects_bad_image_sizes(shape: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        build(_cfg(arch="conv"), shape, K)


def test_warmup_model_has_no_witness() -> None:
    model = _model(k=0)
    assert model.witness is None and model.teacher_in is None and model.used_head is None
    with pytest.raises(RuntimeError, match="no witness"):
        model.witness_logits(torch.zeros(B, D))


# --- teacher-aware decoder and the warm start -----------------------------------------------------


def test_teacher_aware_model_decodes_like_warmup_after_load() -> None:
    warm = _model(k=0, seed=0, decoder_uses_teacher=True)
    model = _model(k=K, seed=1, decoder_uses_teacher=True)
    assert model.teacher_in is not None
    z = torch.randn(B, D)
    with torch.no_grad():
        expected = warm.decode(z)
        assert not torch.equal(model.decode(z, _teacher()), expected)  # different init before loading
        model.load_warmup(warm.state_dict())
        for t in (_teacher(seed=5), torch.eye(K)[torch.arange(B) % K], torch.full((B, K), 1.0 / K)):
            assert torch.equal(model.decode(z, t), expected)
    with pytest.raises(ValueError, match="teacher-aware"):
        model.decode(z)


def test_load_warmup_rejects_differently_sized_state() -> None:
    model = _model(k=K)
    before = _clone_state(model)
    for other in (_model(k=0, latent_dim=D + 2), _model(k=0, hidden=HIDDEN * 2)):
        with pytest.raises(ValueError):
            model.load_warmup(other.state_dict())
        _assert_states_equal(before, model.state_dict())  # a refused load leaves the model untouched


def test_load_warmup_rejects_missing_backbone_keys() -> None:
    model = _model(k=K)
    state = _model(k=0).state_dict()
    del state["decoder_in.weight"]
    with pytest.raises(ValueError, match="decoder_in.weight"):
        model.load_warmup(state)


# --- objective ------------------------------------------------------------------------------------


def _terms(objective: Objective, model: CertVAE, lam: float, vae_weight: float = 1.0):
    return objective(model, _x(), _teacher(), lam=lam, step=0,
                     generator=torch.Generator().manual_seed(0), vae_weight=vae_weight)


def test_objective_without_alignment_is_recon_plus_kl() -> None:
    model = _model()
    _perturb(model.witness)  # a non-uniform witness: the align term would be non-zero if it entered
    alpha = 0.7
    terms = _terms(Objective("bce", alpha, gamma=0.0), model, lam=0.0)
    assert terms.total.item() == pytest.approx((terms.recon + alpha * terms.kl).item(), abs=1e-6)
    terms.total.backward()  # the witness is not in the graph at all
    assert all(p.grad is None for p in model.witness.parameters())
    assert model.encoder.net[-1].weight.grad is not None
    with_align = _terms(Objective("bce", alpha, gamma=0.0), model, lam=1.0)
    assert with_align.align.item() > 0.01
    assert with_align.total.item() == pytest.approx(
        (with_align.recon + alpha * with_align.kl + with_align.align).item(), rel=1e-6)


def test_objective_align_and_balance_closed_form() -> None:
    model = _model()
    _perturb(model.witness)
    lam, gamma = 2.0, 0.3
    terms = _terms(Objective("bce", 1.0, gamma), model, lam=lam)
    with torch.no_grad():
        mu, _ = model.encode(_x())
        s = torch.softmax(model.witness_logits(mu).double(), dim=1)  # (B, K)
    t = _teacher().double()
    align = (t * (t.log() - s.log())).sum(1).mean()
    sbar = s.mean(0)
    balance = (sbar * (sbar * K).log()).sum()
    assert terms.align.item() == pytest.approx(align.item(), rel=1e-5)
    assert terms.balance.item() == pytest.approx(balance.item(), rel=1e-4, abs=1e-7)


def test_vae_weight_zero_removes_recon_and_kl() -> None:
    model = _model()
    _perturb(model.witness)
    lam, gamma = 1.5, 0.2
    terms = _terms(Objective("bce", 1.0, gamma), model, lam=lam, vae_weight=0.0)
    assert terms.recon.item() > 1.0 and terms.kl.item() > 0.0
    assert terms.total.item() == pytest.approx((lam * terms.align + gamma * terms.balance).item(), abs=1e-6)


def test_gaussian_kl_per_dim_closed_form() -> None:
    g = torch.Generator().manual_seed(4)
    mu, logvar = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
    sigma = [[math.exp(0.5 * v) for v in row] for row in logvar.tolist()]
    expected = [[0.5 * (m * m + s * s - 1.0 - math.log(s * s)) for m, s in zip(mrow, srow)]
                for mrow, srow in zip(mu.tolist(), sigma)]
    got = gaussian_kl_per_dim(mu, logvar)
    assert got.shape == (B, D)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    assert torch.equal(gaussian_kl_per_dim(torch.zeros(B, D), torch.zeros(B, D)), torch.zeros(B, D))


def test_balance_kl_known_answers() -> None:
    uniform = torch.full((B, K), -math.log(K))
    assert balance_kl(uniform).item() == pytest.approx(0.0, abs=1e-6)
    one_hot = torch.zeros(B, K)
    one_hot[:, 2] = 1.0
    assert balance_kl(one_hot.log()).item() == pytest.approx(math.log(K), abs=1e-6)
    # rows spread evenly over the components: each row one-hot, their mean uniform
    spread = torch.eye(K).repeat(2, 1).log()  # (2K, K)
    assert balance_kl(spread).item() == pytest.approx(0.0, abs=1e-6)


class _NoRegularizer(Objective):
    def regularizer(self, out: VAEOutput, step: int) -> Tensor:
        return torch.zeros(())


def test_regularizer_is_the_one_hook() -> None:
    model = _model()
    _perturb(model.witness)
    with torch.no_grad():
        model.encoder.net[-1].bias.add_(1.0)  # a clearly non-zero KL
    alpha = 0.6
    base = _terms(Objective("bce", alpha, 0.1), model, lam=1.0)
    hooked = _terms(_NoRegularizer("bce", alpha, 0.1), model, lam=1.0)
    assert hooked.kl.item() == base.kl.item() and base.kl.item() > 0.1
    assert (base.total - hooked.total).item() == pytest.approx(alpha * base.kl.item(), rel=1e-5)
    assert hooked.recon.item() == base.recon.item() and hooked.align.item() == base.align.item()


def test_kl_rows_torch_zero_when_student_equals_teacher() -> None:
    t = _teacher()
    assert torch.allclose(kl_rows_torch(t, t.log()), torch.zeros(B), atol=1e-6)
