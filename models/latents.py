"""Latent structures of the baselines (paper Table 3): a VQ-VAE codebook and a GMVAE mixture prior.

VQ-VAE (van den Oord et al., 2017): z_e = encoder mean, z_q = its nearest codebook vector, the
decoder sees z_e + sg(z_q - z_e) (straight-through). The codebook is learned by its own loss or, as
an option, by exponential moving averages of the encoder outputs assigned to each code.

Minimal GMVAE (Dilokthanakul et al., 2016): categorical y with uniform p(y), Gaussian p(z|y) =
N(m_y, diag exp(v_y)), and a separate q(y|x) network on the image (so q(y|x) is NOT z-only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient."""

    def __init__(self, n_codes: int, dim: int, ema: bool = False, decay: float = 0.99) -> None:
        super().__init__()
        self.ema, self.decay = ema, decay
        init = torch.randn(n_codes, dim) * 0.5
        if ema:  # codebook moves by averages, not by gradients
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(n_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)

    def assign(self, z_e: Tensor) -> Tensor:
        """Index (B,) of the nearest code of each row."""
        return torch.cdist(z_e.detach(), self.codebook.detach()).argmin(dim=1)

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """(straight-through code for the decoder, z_q) for z_e (B, d)."""
        codes = self.assign(z_e)
        if self.ema and self.training:
            self._ema_update(z_e.detach(), codes)
        z_q = self.codebook[codes]  # (B, d)
        return z_e + (z_q - z_e).detach(), z_q

    @torch.no_grad()
    def _ema_update(self, z_e: Tensor, codes: Tensor) -> None:
        onehot = F.one_hot(codes, len(self.codebook)).to(z_e.dtype)  # (B, M)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.T @ z_e, alpha=1 - self.decay)
        self.codebook.copy_(self.ema_sum / self.ema_count.clamp_min(1e-5).unsqueeze(1))


class MixturePrior(nn.Module):
    """p(z) = sum_y (1/K) N(z; m_y, diag exp(v_y)) with learned means and log-variances."""

    def __init__(self, n_components: int, dim: int) -> None:
        super().__init__()
        # spread the means so that the components start distinguishable
        self.means = nn.Parameter(torch.randn(n_components, dim) * 2.0)
        self.logvars = nn.Parameter(torch.zeros(n_components, dim))

    @property
    def log_weights(self) -> Tensor:
        """log p(y) (K,): uniform."""
        k = len(self.means)
        return torch.full((k,), -math.log(k), device=self.means.device, dtype=self.means.dtype)

    def component_log_prob(self, z: Tensor) -> Tensor:
        """log N(z_b; m_y, diag exp(v_y)) for every row and component, (B, K)."""
        diff = z.unsqueeze(1) - self.means  # (B, K, d)
        per_dim = -0.5 * (math.log(2 * math.pi) + self.logvars + diff.pow(2) / self.logvars.exp())
        return per_dim.sum(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) (B,): a proper mixture density."""
        return torch.logsumexp(self.log_weights + self.component_log_prob(z), dim=1)

    def kl_to_components(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mu, diag exp(logvar)) || N(m_y, diag exp(v_y))) for every row and y, (B, K)."""
        mu, logvar = mu.unsqueeze(1), logvar.unsqueeze(1)  # (B, 1, d)
        ratio = (logvar - self.logvars).exp()
        per_dim = 0.5 * (ratio + (mu - self.means).pow(2) / self.logvars.exp() - 1.0 - logvar + self.logvars)
        return per_dim.sum(-1)
