"""Baselines of paper Table 3 as hooks on the one shared objective (models/objective.py).

Each overrides `Objective.regularizer` only; reconstruction, alignment (lambda = 0 for baselines:
they are trained without it) and balance stay the shared code.
  - beta-VAE (Higgins et al.): R = beta * KL.
  - KL annealing (Bowman et al.): R = alpha_KL * min(1, step / anneal_steps) * KL (linear warm-up).
  - Free bits (Kingma et al. 2016): R = alpha_KL * sum_j max(E_batch KL_j, floor): a dimension whose
    batch-mean KL is under the floor gets no gradient from R.
  - Minimal GMVAE: R = alpha_KL * (E_q(y|x)[KL(q(z|x) || p(z|y))] + KL(q(y|x) || p(y))), p(y) uniform.
  - VQ-VAE: R = ||sg(z_e) - z_q||^2 (codebook; absent with EMA updates) + c * ||z_e - sg(z_q)||^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from models.objective import Objective, gaussian_kl_per_dim
from models.latents import MixturePrior
from models.vae import CertVAE, LatentSpec, VAEOutput


@dataclass
class BaselineConfig:
    """Settings of the standard baselines (the papers give none of these values; ours are common ones)."""

    beta_a: float = 0.5
    """beta of beta-VAE (a): below 1, a weaker KL pressure."""
    beta_b: float = 4.0
    """beta of beta-VAE (b): above 1, the disentanglement setting."""
    anneal_steps: int = 2000
    """KL annealing: steps of the linear ramp of alpha_KL from 0."""
    free_bits: float = 0.25
    """Free bits: KL floor per latent dimension, in nats."""
    gmm_components: int = 0
    """GMVAE mixture components; 0 = the teacher's K."""
    vq_codes: int = 128
    vq_commitment: float = 0.25
    """VQ-VAE commitment weight c (van den Oord et al.: 0.25)."""
    vq_ema: bool = False
    """VQ-VAE: EMA codebook updates instead of the codebook loss."""
    vq_decay: float = 0.99

    def problems(self) -> list[str]:
        out = [f"baselines.{n}: must be > 0 and finite, got {getattr(self, n)}"
               for n in ("beta_a", "beta_b", "vq_commitment") if not 0 < getattr(self, n) < math.inf]
        out += [f"baselines.{n}: must be >= 1, got {getattr(self, n)}"
                for n in ("anneal_steps", "vq_codes") if getattr(self, n) < 1]
        if not 0 <= self.free_bits < math.inf:  # also NaN
            out.append(f"baselines.free_bits: must be >= 0 and finite, got {self.free_bits}")
        if self.gmm_components < 0 or self.gmm_components == 1:
            out.append(f"baselines.gmm_components: must be 0 (teacher K) or >= 2, got {self.gmm_components}")
        if not 0 < self.vq_decay < 1:
            out.append(f"baselines.vq_decay: must be in (0, 1), got {self.vq_decay}")
        return out


class BetaVAE(Objective):
    def __init__(self, recon: str, beta: float, gamma: float) -> None:
        super().__init__(recon, beta, gamma)  # beta simply is the KL weight


class KLAnnealing(Objective):
    def __init__(self, recon: str, alpha_kl: float, gamma: float, anneal_steps: int) -> None:
        super().__init__(recon, alpha_kl, gamma)
        self.anneal_steps = anneal_steps

    def weight(self, step: int) -> float:
        """alpha_KL * min(1, step / anneal_steps)."""
        return self.alpha_kl * min(1.0, step / self.anneal_steps)

    def regularizer(self, out: VAEOutput, step: int) -> Tensor:
        return self.weight(step) * gaussian_kl_per_dim(out.mu, out.logvar).sum(1).mean()


class FreeBits(Objective):
    def __init__(self, recon: str, alpha_kl: float, gamma: float, floor: float) -> None:
        super().__init__(recon, alpha_kl, gamma)
        self.floor = floor

    def regularizer(self, out: VAEOutput, step: int) -> Tensor:
        kl_dim = gaussian_kl_per_dim(out.mu, out.logvar).mean(0)  # (d,) batch-mean KL per dimension
        return self.alpha_kl * torch.clamp(kl_dim, min=self.floor).sum()


class GMVAEObjective(Objective):
    def __init__(self, recon: str, alpha_kl: float, gamma: float, prior: MixturePrior) -> None:
        super().__init__(recon, alpha_kl, gamma)
        self.prior = prior  # the model's own module: its parameters train with the model

    def regularizer(self, out: VAEOutput, step: int) -> Tensor:
        log_qy = torch.log_softmax(out.qy_logits, dim=1)  # (B, K)
        qy = log_qy.exp()
        kl_z = (qy * self.prior.kl_to_components(out.mu, out.logvar)).sum(1)  # E_q(y)[KL(q(z|x) || p(z|y))]
        kl_y = (qy * log_qy).sum(1) + math.log(qy.shape[1])  # KL(q(y|x) || uniform p(y))
        return self.alpha_kl * (kl_z + kl_y).mean()


class VQObjective(Objective):
    def __init__(self, recon: str, gamma: float, commitment: float, ema: bool) -> None:
        super().__init__(recon, 0.0, gamma)
        self.commitment, self.ema = commitment, ema

    def regularizer(self, out: VAEOutput, step: int) -> Tensor:
        commit = (out.mu - out.z_q.detach()).pow(2).sum(1).mean()
        if self.ema:  # the codebook follows its EMA, not a loss
            return self.commitment * commit
        codebook = (out.mu.detach() - out.z_q).pow(2).sum(1).mean()
        return codebook + self.commitment * commit


def latent_spec(variant: str, cfg: BaselineConfig, teacher_k: int) -> LatentSpec:
    """The latent structure a variant's model needs (Gaussian for all but gmvae and vqvae)."""
    if variant == "vqvae":
        return LatentSpec("vq", n_codes=cfg.vq_codes, ema=cfg.vq_ema, decay=cfg.vq_decay)
    if variant == "gmvae":
        return LatentSpec("gmm", n_mixture=cfg.gmm_components or teacher_k)
    return LatentSpec()


def make_objective(variant: str, recon: str, alpha_kl: float, gamma: float, cfg: BaselineConfig,
                   model: CertVAE) -> Objective:
    """The objective of a variant: the shared one, or a baseline's hook on it."""
    if variant == "beta_vae_a":
        return BetaVAE(recon, cfg.beta_a, gamma)
    if variant == "beta_vae_b":
        return BetaVAE(recon, cfg.beta_b, gamma)
    if variant == "kl_anneal":
        return KLAnnealing(recon, alpha_kl, gamma, cfg.anneal_steps)
    if variant == "free_bits":
        return FreeBits(recon, alpha_kl, gamma, cfg.free_bits)
    if variant == "gmvae":
        return GMVAEObjective(recon, alpha_kl, gamma, model.prior)
    if variant == "vqvae":
        return VQObjective(recon, gamma, cfg.vq_commitment, cfg.vq_ema)
    return Objective(recon, alpha_kl, gamma)
