"""Everything measured at a report point, on the evaluation split (docs/method.md, Protocol step 5).

Certificate numbers come from the RAW witness at the deterministic code z = mu(x) and the fixed
teacher rows, through teachers.certificate (float64). Secondary diagnostics: KL, reconstruction
loss, PSNR, active units (Var_x mu_j > 0.01), E||mu||^2, escape force and linear-probe accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from models.objective import gaussian_kl_per_dim, reconstruction_loss
from models.vae import CertVAE
from sweep.config import EvalConfig
from sweep.data import ImageData, as_unit
from teachers import certificate as cert
from teachers.artifact import TeacherArtifact

ACTIVE_UNIT_VARIANCE = 0.01


@torch.no_grad()
def encode_all(model: CertVAE, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Posterior means and log-variances (N, d) of a whole split, in batches."""
    parts = [model.encode(as_unit(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def reconstruction_metrics(model: CertVAE, x: Tensor, mu: Tensor, t: Tensor | None,
                           batch_size: int) -> dict[str, float]:
    """Reconstruction NLL per image and PSNR of the mean reconstruction sigmoid(decoder(mu))."""
    nll, sq_err = 0.0, 0.0
    for i in range(0, len(x), batch_size):
        tb = None if t is None else t[i:i + batch_size]
        logits = model.decode(model.mean_code(mu[i:i + batch_size]), tb)
        xb = as_unit(x[i:i + batch_size])
        nll += float(reconstruction_loss(logits, xb, model.cfg.recon)) * len(xb)
        sq_err += float((torch.sigmoid(logits) - xb).double().pow(2).sum())
    mse = sq_err / x.numel()
    return {"recon": nll / len(x), "psnr": 10.0 * math.log10(1.0 / max(mse, 1e-12))}


def escape_force(model: CertVAE, mu: Tensor, targets: Tensor) -> float:
    """mean_i ||g_i - mean_j g_j||^2 with g_i = d KL(T_i || s(mu_i)) / d mu_i (raw witness).

    Each KL_i depends on mu_i alone, so the gradient of their sum gives every g_i at once.
    """
    mu = mu.detach().clone().requires_grad_(True)
    log_s = torch.log_softmax(model.witness_logits(mu), dim=1)
    kl = cert.kl_rows_torch(targets, log_s).sum()
    (g,) = torch.autograd.grad(kl, mu)  # (N, d)
    return cert.escape_force(g)


def certificate_metrics(model: CertVAE, mu: Tensor, teacher: TeacherArtifact, cfg: EvalConfig, fixed_target: bool,
                        look: int) -> dict[str, float]:
    """I_T, L_align, G, G_tau, G_fix, student MI, usage balance and escape force of the raw witness,
    and the statistical certificate at this look: G_lower, G_upper, certified, p_certified (the
    reference is the teacher's training-split marginal, independent of the evaluation rows)."""
    targets = teacher.targets_eval
    with torch.no_grad():
        s = torch.softmax(model.witness_logits(mu).double(), dim=1).cpu().numpy()  # (N, K)
    t = torch.as_tensor(targets, dtype=torch.float32, device=mu.device)
    stats = cert.statistical_certificate(targets, s, cfg.alpha, look, teacher.targets_train.mean(axis=0), cfg.tau,
                                         fixed_target)
    return cert.certificate(targets, s, cfg.tau, fixed_target) | stats | {
        "student_mi": cert.student_mi(s), "balance": cert.usage_balance(s), "escape_force": escape_force(model, mu, t)}


def probe_accuracy(mu_train: Tensor, y_train: Tensor, mu_eval: Tensor, y_eval: Tensor) -> float:
    """Accuracy of a multinomial logistic regression fitted on frozen train means: scikit-learn's on
    the CPU, the same model fitted by torch on a GPU (`torch_probe_accuracy`: no copy to the host)."""
    if mu_train.device.type == "cuda":
        return torch_probe_accuracy(mu_train, y_train, mu_eval, y_eval)
    from sklearn.linear_model import LogisticRegression  # here: importing scikit-learn costs the Ray driver
    from sklearn.preprocessing import StandardScaler  # about 0.8 s, and it never fits a probe

    scaler = StandardScaler().fit(mu_train.cpu().double().numpy())
    clf = LogisticRegression(max_iter=300)
    clf.fit(scaler.transform(mu_train.cpu().double().numpy()), y_train.cpu().numpy())
    pred = clf.predict(scaler.transform(mu_eval.cpu().double().numpy()))
    return float((pred == y_eval.cpu().numpy()).mean())


def torch_probe_accuracy(mu_train: Tensor, y_train: Tensor, mu_eval: Tensor, y_eval: Tensor,
                         max_iter: int = 300) -> float:
    """scikit-learn's LogisticRegression (multinomial, L2 with C = 1, L-BFGS, standardised inputs)
    fitted with torch where the means are: sum of cross-entropies + ||W||^2 / 2, in float64."""
    z_tr, z_ev = mu_train.detach().double(), mu_eval.detach().double()
    loc, scale = z_tr.mean(0), z_tr.std(0, unbiased=False).clamp_min(1e-12)
    z_tr, z_ev = (z_tr - loc) / scale, (z_ev - loc) / scale
    classes, y = torch.unique(y_train.to(z_tr.device), return_inverse=True)
    weight = torch.zeros(len(classes), z_tr.shape[1], dtype=torch.float64, device=z_tr.device, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, device=z_tr.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z_tr @ weight.T + bias, y, reduction="sum") + 0.5 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = classes[(z_ev @ weight.T + bias).argmax(1)]
    return float((pred == y_eval.to(pred.device)).double().mean())


def posthoc_certificate(mu_train: Tensor, t_train: np.ndarray, mu_eval: Tensor, t_eval: np.ndarray,
                        tau: float, max_iter: int = 200) -> dict[str, float]:
    """Post-hoc certificate (docs/method.md): a FRESH linear z-only head fitted on frozen train means
    against the teacher (mean KL, full-batch L-BFGS, float64, on the means' device), its margin on
    the eval split.

    The head starts at the best constant student (zero weights, bias log Tbar_train), so on the
    training rows it can only improve on the constant baseline. Standardising mu is an affine map
    of z, so the head stays z-only.
    """
    z_tr, z_ev = mu_train.detach().double(), mu_eval.detach().double()  # on the trial's device
    loc, scale = z_tr.mean(0), z_tr.std(0).clamp_min(1e-8)
    z_tr, z_ev = (z_tr - loc) / scale, (z_ev - loc) / scale
    t_tr = torch.as_tensor(t_train, dtype=torch.float64, device=z_tr.device)
    weight = torch.zeros(t_tr.shape[1], z_tr.shape[1], dtype=torch.float64, device=z_tr.device, requires_grad=True)
    bias = torch.log(t_tr.mean(0).clamp_min(1e-12)).requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = cert.kl_rows_torch(t_tr, torch.log_softmax(z_tr @ weight.T + bias, dim=1)).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        s = torch.softmax(z_ev @ weight.T + bias, dim=1).cpu().numpy()
    numbers = cert.certificate(t_eval, s, tau)
    return {"posthoc_L_align": numbers["L_align"], "posthoc_G_tau": numbers["G_tau"],
            "posthoc_student_mi": cert.student_mi(s)}


@torch.no_grad()
def qy_certificate(model: CertVAE, x: Tensor, targets: np.ndarray, tau: float, batch_size: int) -> dict[str, float]:
    """A GMVAE's q(y|x) scored like a student. q(y|x) reads the image, NOT z: no certificate."""
    q = torch.cat([torch.softmax(model.qy(as_unit(x[i:i + batch_size])).double(), 1)
                   for i in range(0, len(x), batch_size)])
    q = q.cpu().numpy()
    return {"qy_G_tau": cert.margin(targets, q, tau), "qy_student_mi": cert.student_mi(q)}


def evaluate(model: CertVAE, data: ImageData, teacher: TeacherArtifact | None, cfg: EvalConfig,
             fixed_target: bool = False, probe: bool = True, posthoc: bool = False, look: int = 1) -> dict[str, float]:
    """All report-point metrics. Certificate numbers need a witness and a teacher; the probe needs
    `probe`, cfg.probe and labels; the post-hoc certificate is fitted only when `posthoc` is set.
    `look` is the index of this report point within the trial (the bounds spend their error over looks)."""
    was_training = model.training
    model.eval()
    mu, logvar = encode_all(model, data.x_eval, cfg.batch_size)
    targets = None if teacher is None else teacher.targets_eval
    t = None
    if targets is not None and model.teacher_in is not None:
        t = torch.as_tensor(targets, dtype=torch.float32, device=mu.device)
    out = reconstruction_metrics(model, data.x_eval, mu, t, cfg.batch_size)
    vq = model.quantizer is not None  # deterministic encoder: KL(q(z|x) || N(0, I)) is undefined
    out["kl"] = float("nan") if vq else float(gaussian_kl_per_dim(mu, logvar).sum(1).mean())
    out["active_units"] = int((mu.double().var(0) > ACTIVE_UNIT_VARIANCE).sum())
    out["mu_sq"] = float(mu.double().pow(2).sum(1).mean())
    if model.witness is not None and targets is not None:
        out.update(certificate_metrics(model, mu, teacher, cfg, fixed_target, look))
    if model.qy is not None and targets is not None and model.latent.n_mixture == targets.shape[1]:
        out.update(qy_certificate(model, data.x_eval, targets, cfg.tau, cfg.batch_size))
    posthoc = posthoc and teacher is not None
    probe = probe and cfg.probe and data.y_train is not None and data.y_eval is not None
    n = len(data.x_train) if posthoc else min(cfg.probe_samples, len(data.x_train))
    if posthoc or probe:  # one pass over the training rows serves both
        mu_train, _ = encode_all(model, data.x_train[:n], cfg.batch_size)
    if probe:
        k = min(cfg.probe_samples, n)
        out["probe_acc"] = probe_accuracy(mu_train[:k], data.y_train[:k], mu, data.y_eval)
    if posthoc:
        out.update(posthoc_certificate(mu_train, teacher.targets_train, mu, targets, cfg.tau))
    model.train(was_training)
    return out
