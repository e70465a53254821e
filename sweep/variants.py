"""The names of the protocol's stages, their order and their random streams: defined here once.

docs/method.md, "Protocol": per seed a warm-up (with the teacher search), then the downstream variants
against that teacher: full, noalign, rescue (from a noalign checkpoint), prefit (the companion
paper's RST-prefit), and the baselines of paper Table 3 (trained from scratch, lambda = 0).

`VARIANTS` is also the order in which a seed's variants run and are listed: rescue comes after
noalign, whose checkpoint it starts from, and the baselines follow in Table 3's order. Every other
module (config validation, the plan, both engines, the analysis) imports these names; nothing
else spells them. This module imports nothing of the project, so the analysis' table tool can use
it without torch.

Each stage's batch order and sampling come from its own generator, seeded with
`stage_seed(seed, stage)` = seed * 1009 + STAGE_STREAM[stage]. The stream numbers are fixed data,
not positions in a tuple: adding or reordering variants never changes an existing stage's numbers
(tests/test_variants.py pins them).
"""

from __future__ import annotations

WARMUP = "warmup"
CERTIFICATE_VARIANTS = ("full", "noalign", "rescue", "prefit")
"""Teacher-guided training (the learned head, or the simplex witness as RST)."""
BASELINES = ("vae", "beta_vae_a", "beta_vae_b", "kl_anneal", "free_bits", "gmvae", "vqvae")
"""Paper Table 3's baselines (models/baselines.py implements each as one hook of the objective)."""
VARIANTS = CERTIFICATE_VARIANTS + BASELINES
STAGES = (WARMUP, *VARIANTS)
FROM_WARMUP = ("full", "noalign", "prefit")
"""Variants that start from the warm-up checkpoint (rescue starts from noalign's, baselines from scratch)."""
ALIGNED = ("full", "rescue", "prefit")
"""Variants trained with the alignment term (lambda = train.lam); all others use lambda = 0."""

USED_BY: dict[str, tuple[str, ...]] = {
    "train.lam": ALIGNED,
    **{f"train.{key}": ("full",) for key in ("guard", "guard_value", "guard_factor", "lam_max")},
    "train.rescue_epochs": ("rescue",),
    "train.student_first_steps": ("rescue",),
    "train.prefit_steps": ("prefit",),
    "train.alpha_kl": tuple(v for v in VARIANTS if v not in ("beta_vae_a", "beta_vae_b", "vqvae")),
    "baselines.beta_a": ("beta_vae_a",),
    "baselines.beta_b": ("beta_vae_b",),
    "baselines.anneal_steps": ("kl_anneal",),
    "baselines.free_bits": ("free_bits",),
    "baselines.gmm_components": ("gmvae",),
    **{f"baselines.{key}": ("vqvae",) for key in ("vq_codes", "vq_commitment", "vq_ema", "vq_decay")},
}
"""Config keys that only some variants train with, and those variants: noalign and the baselines
train with lambda = 0, the guarded schedule is full's, beta-VAE and VQ-VAE replace alpha_KL's KL
term, each baseline reads its own section keys. A key not listed applies to every variant (the
warm-up's keys included: the warm-up reads its own). The one rule of which trials are the same."""


def applies(variant: str, key: str) -> bool:
    """Whether `variant` trains with config key `key` (a grid axis of it changes the trial)."""
    return key not in USED_BY or variant not in VARIANTS or variant in USED_BY[key]


def effective_point(variant: str, point: dict[str, object]) -> dict[str, object]:
    """A grid point as `variant` trains with it: the keys it ignores dropped. Two grid points with
    the same effective point (same seed, same warm-up) ask for the same trial, which runs once."""
    return {key: value for key, value in point.items() if applies(variant, key)}


STAGE_STREAM = {"warmup": 0, "full": 1, "noalign": 2, "rescue": 3, "prefit": 4, "vae": 5, "beta_vae_a": 6,
                "beta_vae_b": 7, "kl_anneal": 8, "free_bits": 9, "gmvae": 10, "vqvae": 11}
"""Random stream of each stage. Append new stages with new numbers; never renumber."""
SEED_STRIDE = 1009  # a prime larger than the number of streams: seeds never share a stream


def stage_seed(seed: int, stage: str) -> int:
    """The seed of a stage's own generator (batch order, reparameterisation noise)."""
    return seed * SEED_STRIDE + STAGE_STREAM[stage]


def method_name(variant: str, witness: str) -> str:
    """The method a trial belongs to in results.csv and paper Table 3: a baseline is its own method;
    teacher-guided training is `certificate`, or `rst` with the fixed simplex witness. Any other
    name (an unknown folder in an old sweep) is its own method."""
    if variant not in CERTIFICATE_VARIANTS:
        return variant
    return "rst" if witness == "simplex" else "certificate"


def variant_rank(variant: str) -> tuple[int, str]:
    """Sort key: warmup, then `VARIANTS` in order, then unknown names alphabetically."""
    return (STAGES.index(variant), "") if variant in STAGES else (len(STAGES), variant)
