"""Gaussian VAE with a z-only witness and an optional teacher-aware decoder path.

docs/method.md, "Objects": encoder q(z|x) = N(mu(x), diag sigma^2(x)), prior N(0, I); decoder p(x|z, t)
may also take the teacher vector t = T(x) (reconstruction only, never the certificate); the witness
s(z) sees only the latent code. Two backbones: an MLP for 8x8 / 28x28 grey images and a conv net for
32x32 / 64x64 RGB images.

The witness and the teacher path of the decoder need K, which exists only after the teacher search;
the warm-up model is built with n_components=0 and the downstream model loads the warm-up weights
(`load_warmup`), its new modules starting neutral (zero-initialised teacher path, uniform head).
"""

from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.latents import MixturePrior, VectorQuantizer
from models.witness import LatentCode, LearnedHead, SimplexWitness, UsedHead, Witness

ARCHS = ("mlp", "conv")
WITNESSES = ("head", "simplex")
RECONS = ("bce", "mse")
MAX_WIDTH = 2**24
"""Largest layer width / latent size a config may ask for: larger is a mistyped number, and torch's
size arithmetic would overflow before `build` could say how many parameters that makes."""
MAX_PARAMETERS = 2**31
"""Largest model `build` makes (8 GiB of float32 weights, about 32 GiB with Adam's state): far beyond
this project's backbones (a few million), so only a mistyped size reaches it."""


WARMUP_META = "warmup"
"""Config field metadata: whether the key changes the warm-up (and so its teacher search). Trials
that differ only in keys that do not share one warm-up and teacher (sweep/grid.py); a section's
keys default to its own rule there."""
DOWNSTREAM_ONLY = {WARMUP_META: False}
"""A model key that changes only the downstream model (its witness or decoder input)."""


@dataclass
class ModelConfig:
    """Backbone, latent size and witness of a CertVAE."""

    arch: str = "mlp"
    """mlp (grey 8x8 / 28x28) or conv (RGB 32x32 / 64x64)."""
    latent_dim: int = 16
    """Dimension d of z."""
    hidden: int = 256
    """MLP hidden width."""
    channels: int = 32
    """Conv base channels (doubling per down-sampling stage, capped at 4x)."""
    witness: str = field(default="head", metadata=DOWNSTREAM_ONLY)
    """head: learned softmax(h(z)); simplex: fixed softmax(beta * V z) (companion paper)."""
    head_hidden: int = field(default=0, metadata=DOWNSTREAM_ONLY)
    """Hidden width of the learned head; 0 = linear h(z) = W z + b."""
    simplex_beta: float = field(default=4.0, metadata=DOWNSTREAM_ONLY)
    """Witness gain beta of the simplex witness."""
    decoder_uses_teacher: bool = field(default=False, metadata=DOWNSTREAM_ONLY)
    """Decoder also gets t = T(x) (reconstruction only; never enters the certificate)."""
    used_head: bool = field(default=False, metadata=DOWNSTREAM_ONLY)
    """Optimise alignment through the constancy-preserving calibrated head (certificate stays raw)."""
    recon: str = "bce"
    """Reconstruction likelihood: bce (Bernoulli, pixels in [0, 1]) or mse (unit Gaussian)."""

    def problems(self) -> list[str]:
        """Every range / choice problem, as sentences naming the field."""
        out = []
        for name, value, options in (("arch", self.arch, ARCHS), ("witness", self.witness, WITNESSES),
                                     ("recon", self.recon, RECONS)):
            if value not in options:
                out.append(f"model.{name}: {value!r} is not one of {', '.join(options)}")
        for name, low in (("latent_dim", 1), ("hidden", 1), ("channels", 1), ("head_hidden", 0)):
            if not low <= getattr(self, name) <= MAX_WIDTH:
                out.append(f"model.{name}: must be in [{low}, 2**24], got {getattr(self, name)}")
        if not 0 < self.simplex_beta < math.inf:  # also NaN
            out.append(f"model.simplex_beta: must be > 0 and finite, got {self.simplex_beta}")
        return out


@dataclass
class VAEOutput:
    """One forward pass: the posterior, the sample and the reconstruction logits."""

    mu: Tensor  # (B, d)
    logvar: Tensor  # (B, d)
    z: Tensor  # (B, d) what the decoder saw: reparameterised sample, or straight-through code (VQ)
    x_logits: Tensor  # (B, C, H, W)
    z_q: Tensor | None = None  # (B, d) nearest codebook vectors (VQ-VAE)
    qy_logits: Tensor | None = None  # (B, K) logits of q(y|x) (GMVAE)


class MLPEncoder(nn.Module):
    """Image -> out_dim features (2d for (mu, logvar); K for a GMVAE's q(y|x))."""

    def __init__(self, in_shape: tuple[int, int, int], hidden: int, out_dim: int) -> None:
        super().__init__()
        n_in = math.prod(in_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, out_dim)


class MLPDecoderBody(nn.Module):
    """Maps the first hidden activation (B, hidden) to pixel logits."""

    def __init__(self, out_shape: tuple[int, int, int], hidden: int) -> None:
        super().__init__()
        self.out_shape = out_shape
        self.net = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, math.prod(out_shape)))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h).view(-1, *self.out_shape)  # (B, C, H, W)


def _conv_stages(size: int) -> int:
    """Stride-2 stages that take a size x size image down to 4 x 4."""
    stages = int(math.log2(size)) - 2
    if size < 8 or 2 ** (stages + 2) != size:
        raise ValueError(f"conv backbone needs a power-of-two image size >= 8, got {size}")
    return stages


def _widths(channels: int, stages: int) -> list[int]:
    return [channels * min(2**i, 4) for i in range(stages)]


class ConvEncoder(nn.Module):
    """Image -> out_dim features through stride-2 convolutions down to 4 x 4."""

    def __init__(self, in_shape: tuple[int, int, int], channels: int, out_dim: int) -> None:
        super().__init__()
        c_in, size, _ = in_shape
        widths = _widths(channels, _conv_stages(size))
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 4, stride=2, padding=1), nn.ReLU()]
            c_in = w
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * 16, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, out_dim)


class ConvDecoderBody(nn.Module):
    """Maps the first hidden activation (B, w*16) to pixel logits (B, C, size, size)."""

    def __init__(self, out_shape: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        c_out, size, _ = out_shape
        widths = _widths(channels, _conv_stages(size))[::-1]
        self.top = widths[0]
        layers: list[nn.Module] = [nn.ReLU()]
        for w_in, w_out in zip(widths, widths[1:] + [widths[-1]]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(widths[-1], c_out, 3, padding=1))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h.view(-1, self.top, 4, 4))  # (B, w, 4, 4) -> (B, C, H, W)


@dataclass
class LatentSpec:
    """The latent structure: Gaussian (the paper's VAE), a VQ codebook or a GMVAE mixture prior."""

    kind: str = "gaussian"
    """gaussian | vq | gmm."""
    n_codes: int = 128
    """VQ-VAE codebook size."""
    ema: bool = False
    """VQ-VAE: update the codebook by exponential moving averages instead of its loss."""
    decay: float = 0.99
    """VQ-VAE EMA decay."""
    n_mixture: int = 10
    """GMVAE: number of mixture components y."""


class CertVAE(nn.Module):
    """Encoder, decoder (optionally teacher-aware), raw z-only witness, optional used head, and the
    latent structure of a baseline where one is asked for."""

    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, int, int], n_components: int = 0,
                 latent: LatentSpec | None = None) -> None:
        super().__init__()
        self.cfg, self.in_shape, self.n_components = cfg, tuple(in_shape), n_components
        self.latent = latent or LatentSpec()
        self.encoder = self._image_net(2 * cfg.latent_dim)
        if cfg.arch == "mlp":
            self.decoder_body: nn.Module = MLPDecoderBody(in_shape, cfg.hidden)
            first = cfg.hidden
        else:
            self.decoder_body = ConvDecoderBody(in_shape, cfg.channels)
            first = self.decoder_body.top * 16
        self.decoder_in = nn.Linear(cfg.latent_dim, first)
        self.teacher_in: nn.Linear | None = None
        self.witness: Witness | None = None
        self.used_head: UsedHead | None = None
        self.quantizer = self.qy = self.prior = None
        self.backbone_dtype: torch.dtype | None = None  # bfloat16: encoder and decoder under autocast
        if self.latent.kind == "vq":
            self.quantizer = VectorQuantizer(self.latent.n_codes, cfg.latent_dim, self.latent.ema, self.latent.decay)
        elif self.latent.kind == "gmm":
            self.qy = self._image_net(self.latent.n_mixture)  # q(y|x) reads the image, not z
            self.prior = MixturePrior(self.latent.n_mixture, cfg.latent_dim)
        if n_components:
            self._attach(n_components, first)

    def _image_net(self, out_dim: int) -> nn.Module:
        if self.cfg.arch == "mlp":
            return MLPEncoder(self.in_shape, self.cfg.hidden, out_dim)
        return ConvEncoder(self.in_shape, self.cfg.channels, out_dim)

    def _attach(self, k: int, first: int) -> None:
        cfg = self.cfg
        if cfg.decoder_uses_teacher:
            self.teacher_in = nn.Linear(k, first, bias=False)
            nn.init.zeros_(self.teacher_in.weight)  # starts as the warm-up decoder exactly
        if cfg.witness == "head":
            self.witness = LearnedHead(cfg.latent_dim, k, cfg.head_hidden)
        else:
            self.witness = SimplexWitness(cfg.latent_dim, k, cfg.simplex_beta)
        if cfg.used_head:
            self.used_head = UsedHead(k)

    def backbone(self, x: Tensor) -> contextlib.AbstractContextManager:
        """Autocast of the encoder and decoder bodies (train.precision: bf16), else nothing: the
        code mu, the witness, the KL and every certificate number stay float32."""
        if self.backbone_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=self.backbone_dtype)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each (B, d), float32."""
        with self.backbone(x):
            h = self.encoder(x)
        mu, logvar = h.float().chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)  # keeps exp(logvar) finite early in training

    def decode(self, z: Tensor, t: Tensor | None = None) -> Tensor:
        """Pixel logits (B, C, H, W), float32, from z and, when the decoder is teacher-aware, t (B, K)."""
        h = self.decoder_in(z)
        if self.teacher_in is not None:
            if t is None:
                raise ValueError("this decoder is teacher-aware: pass the teacher rows t")
            h = h + self.teacher_in(t)
        with self.backbone(h):
            return self.decoder_body(h).float()

    def forward(self, x: Tensor, t: Tensor | None = None, generator: torch.Generator | None = None) -> VAEOutput:
        mu, logvar = self.encode(x)
        if self.quantizer is not None:  # deterministic encoder: z_e = mu
            z, z_q = self.quantizer(mu)
            return VAEOutput(mu, logvar, z, self.decode(z, t), z_q=z_q)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * (0.5 * logvar).exp()
        qy = self.qy(x) if self.qy is not None else None
        return VAEOutput(mu, logvar, z, self.decode(z, t), qy_logits=qy)

    def mean_code(self, mu: Tensor) -> Tensor:
        """What the decoder sees for the deterministic code mu (its quantised code for VQ)."""
        if self.quantizer is None:
            return mu
        return self.quantizer.codebook[self.quantizer.assign(mu)]

    def witness_logits(self, mu: Tensor) -> Tensor:
        """Raw witness logits (B, K) at the deterministic code z = mu(x)."""
        if self.witness is None:
            raise RuntimeError("this model has no witness yet (warm-up model, n_components=0)")
        return self.witness.logits(LatentCode(mu))

    def load_warmup(self, state: dict[str, Tensor]) -> None:
        """Load warm-up weights; only the post-teacher modules may be missing from them.

        Checked before anything is copied (load_state_dict would raise RuntimeError on a shape
        mismatch after loading the other tensors), so a refused state leaves the model untouched.

        Raises:
            ValueError: a backbone tensor is missing, unexpected or of another shape.
        """
        own = self.state_dict()
        new = ("witness.", "teacher_in.", "used_head.")
        bad = [k for k in own if k not in state and not k.startswith(new)]
        bad += [k for k in state if k not in own]
        bad += [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state.items()
                if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(f"warm-up checkpoint does not fit this model: {bad[:5]}")
        self.load_state_dict(state, strict=False)


def build(cfg: ModelConfig, in_shape: tuple[int, int, int], n_components: int = 0,
          latent: LatentSpec | None = None) -> CertVAE:
    """Model from its config, checking that the backbone suits the image shape."""
    c, h, w = in_shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    if cfg.arch == "conv":
        _conv_stages(h)
    with torch.device("meta"):  # sizes only, no memory: a model torch cannot allocate fails here, clearly
        n_params = sum(p.numel() for p in CertVAE(cfg, in_shape, n_components, latent).parameters())
    if n_params > MAX_PARAMETERS:
        raise ValueError(f"model: {n_params:,} parameters (model.latent_dim {cfg.latent_dim}, model.hidden "
                         f"{cfg.hidden}, model.channels {cfg.channels}, model.head_hidden {cfg.head_hidden}) "
                         f"exceed the {MAX_PARAMETERS:,} this code trains; choose smaller sizes")
    return CertVAE(cfg, in_shape, n_components, latent)
