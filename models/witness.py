"""Z-only witnesses s(z) in the simplex, and the optional constancy-preserving "used" head.

docs/method.md, "Objects": the certificate is computed from a raw witness whose ONLY input is the
latent code. Two kinds:
  - learned head: s(z) = softmax(h(z)), h linear or a small MLP;
  - fixed simplex witness (companion paper, RST-VAE): s(z) = softmax(beta * V z), V a fixed buffer
    whose K rows are the vertices of a regular simplex.

The interface enforces the z-only property: a witness accepts a `LatentCode` and nothing else, and
has no argument through which the input x or the teacher vector t could reach it. Lemma 2 (equal
codes give equal rows) then holds by construction; tests/test_models.py checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LatentCode:
    """A latent code z (B, d) as produced by the encoder; the only thing a witness accepts."""

    z: Tensor


class Witness(nn.Module):
    """Base class: maps a LatentCode to logits over K components; softmax gives s(z)."""

    def __init__(self, latent_dim: int, n_components: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.n_components = n_components

    def _check(self, code: LatentCode) -> Tensor:
        if not isinstance(code, LatentCode):
            raise TypeError(
                f"a witness takes only the latent code (a LatentCode), got {type(code).__name__}: "
                "the certificate requires a z-only student"
            )
        z = code.z
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latent code must be (B, {self.latent_dim}), got {tuple(z.shape)}")
        return z

    def logits(self, code: LatentCode) -> Tensor:
        """Raw logits (B, K)."""
        raise NotImplementedError

    def forward(self, code: LatentCode) -> Tensor:
        """Raw student rows s(z) (B, K)."""
        return torch.softmax(self.logits(code), dim=1)


class LearnedHead(Witness):
    """s(z) = softmax(h(z)) with h linear (hidden=0) or a one-hidden-layer MLP.

    The last layer starts at zero, so an untrained head is the uniform student: a run that never
    trains it (noalign) reports L = log K - mean H(T_i), the maximum-ignorance witness, rather than
    an arbitrary random one.
    """

    def __init__(self, latent_dim: int, n_components: int, hidden: int = 0) -> None:
        super().__init__(latent_dim, n_components)
        last = nn.Linear(hidden or latent_dim, n_components)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers: list[nn.Module] = [nn.Linear(latent_dim, hidden), nn.ReLU()] if hidden else []
        self.net = nn.Sequential(*layers, last)

    def logits(self, code: LatentCode) -> Tensor:
        return self.net(self._check(code))


def simplex_vertices(n_components: int, latent_dim: int) -> Tensor:
    """K unit vectors in R^d with pairwise inner product -1/(K-1): a regular simplex.

    Built from the Helmert basis of the subspace orthogonal to the all-ones vector, so it is
    deterministic (no SVD sign ambiguity). Needs d >= K - 1.

    Returns:
        V (K, d) float32.
    """
    k = n_components
    if latent_dim < k - 1:
        raise ValueError(f"simplex witness needs latent_dim >= K - 1, got d={latent_dim}, K={k}")
    helmert = torch.zeros(k - 1, k, dtype=torch.float64)  # (K-1, K), rows orthonormal, sum 0
    for j in range(1, k):
        helmert[j - 1, :j] = 1.0
        helmert[j - 1, j] = -float(j)
        helmert[j - 1] /= math.sqrt(j * (j + 1))
    v = helmert.T  # (K, K-1): row k is the centred e_k in the orthonormal basis
    v = v / v.norm(dim=1, keepdim=True)
    out = torch.zeros(k, latent_dim, dtype=torch.float64)
    out[:, : k - 1] = v
    return out.float()


class SimplexWitness(Witness):
    """s(z) = softmax(beta * V z) with V a fixed buffer (never trained): the encoder alone must
    move mu(x) so that the witness matches the teacher."""

    def __init__(self, latent_dim: int, n_components: int, beta: float) -> None:
        super().__init__(latent_dim, n_components)
        self.beta = float(beta)
        self.register_buffer("vertices", simplex_vertices(n_components, latent_dim))

    def logits(self, code: LatentCode) -> Tensor:
        return self.beta * self._check(code) @ self.vertices.T  # (B, K)


class UsedHead(nn.Module):
    """Calibrated head for optimisation only: used = softmax(a * raw_logits + b).

    It sees nothing but the raw witness logits row by row, so equal raw rows give equal used rows
    (constancy-preserving, docs/method.md "Optional used head"). Never used for a certificate number.
    """

    def __init__(self, n_components: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(n_components))

    def forward(self, raw_logits: Tensor) -> Tensor:
        """Used log-probabilities (B, K)."""
        return torch.log_softmax(self.log_scale.exp() * raw_logits + self.bias, dim=1)
