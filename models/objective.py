"""The training objective (docs/method.md, "Objective").

  L_total = vae_weight * (L_rec + R(KL)) + lambda * L_align + gamma * KL(sbar || uniform)

R = alpha_KL * KL is the ONE hook a VAE variant overrides (models/baselines.py: a beta-VAE changes
the weight, free bits floors each dimension, annealing schedules the weight by step, a GMVAE and a
VQ-VAE replace the term) instead of copying the loss.
L_align = mean_i KL(T_i || s(mu_i)) of the raw witness (or of the constancy-preserving used head
when the model has one); the balance term is a student-side regulariser, not part of the theorem.
vae_weight = 0 gives the student-first phase of a rescue (Appendix H): alignment alone. With
lambda = 0 neither alignment nor balance is computed: the balance term regularises the student that
alignment trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from models.vae import CertVAE, VAEOutput
from teachers.certificate import kl_rows_torch


@dataclass
class LossTerms:
    """Scalar terms of one minibatch; `total` is what is differentiated."""

    total: Tensor
    recon: Tensor
    kl: Tensor
    align: Tensor
    balance: Tensor


def reconstruction_loss(x_logits: Tensor, x: Tensor, kind: str) -> Tensor:
    """Negative log-likelihood per image, summed over pixels, mean over the batch."""
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(x_logits, x, reduction="none")
    else:
        per_pixel = 0.5 * (torch.sigmoid(x_logits) - x) ** 2
    return per_pixel.flatten(1).sum(1).mean()


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per latent dimension, (B, d)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def student_log_probs(model: CertVAE, mu: Tensor) -> Tensor:
    """Log-probabilities (B, K) of the student that the alignment term optimises."""
    raw = model.witness_logits(mu)
    if model.used_head is not None:
        return model.used_head(raw)
    return torch.log_softmax(raw, dim=1)


def balance_kl(log_s: Tensor) -> Tensor:
    """KL(sbar || uniform) of the batch-mean student row."""
    sbar = log_s.exp().mean(0)  # (K,)
    return (torch.special.xlogy(sbar, sbar)).sum() + math.log(sbar.numel())


class Objective:
    """The shared objective; subclasses override `regularizer` only."""

    def __init__(self, recon: str, alpha_kl: float, gamma: float) -> None:
        self.recon, self.alpha_kl, self.gamma = recon, alpha_kl, gamma

    def regularizer(self, out: VAEOutput, step: int) -> Tensor:
        """R: alpha_KL times KL(q(z|x) || N(0, I)) per image, mean over the batch."""
        return self.alpha_kl * gaussian_kl_per_dim(out.mu, out.logvar).sum(1).mean()

    def __call__(self, model: CertVAE, x: Tensor, t: Tensor | None, lam: float, step: int,
                 generator: torch.Generator | None = None, vae_weight: float = 1.0) -> LossTerms:
        out = model(x, t if model.teacher_in is not None else None, generator)
        recon = reconstruction_loss(out.x_logits, x, self.recon)
        total = vae_weight * (recon + self.regularizer(out, step))
        align = balance = torch.zeros((), device=x.device)
        # balance regularises the student that alignment trains; with lambda = 0 (noalign, baselines)
        # the head gets no gradient at all and stays exactly the uniform student (Adam would
        # otherwise amplify the ~1e-9 rounding residue of the zero balance gradient into drift)
        if model.witness is not None and t is not None and lam > 0:
            log_s = student_log_probs(model, out.mu)
            align = kl_rows_torch(t, log_s).mean()
            balance = balance_kl(log_s)
            total = total + lam * align + self.gamma * balance
        kl = torch.zeros((), device=x.device)  # a VQ-VAE's encoder is deterministic: no KL to report
        if out.z_q is None:
            kl = gaussian_kl_per_dim(out.mu, out.logvar).sum(1).mean().detach()  # reported, whatever R is
        return LossTerms(total, recon, kl, align, balance)
