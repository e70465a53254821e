"""Per-trial logs: TensorBoard scalars by namespace, metrics.jsonl, config.json and result.json.

Tags are grouped as cleanrl does: certificate/ (the theorem quantities of the raw witness), loss/
(objective terms, reconstruction, PSNR, lambda), collapse/ (symptoms: active units, E||mu||^2, escape
force, probe accuracy). The step axis is the optimizer step; a rescue continues its parent's axis.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from sweep.files import append_line, write_atomic

NAMESPACE = {
    **{k: "certificate" for k in ("I_T", "L_align", "G", "G_tau", "G_fix", "G_lower", "G_upper", "G_fix_lower",
                                  "G_fix_upper", "student_mi", "balance")},
    **{k: "loss" for k in ("recon", "kl", "psnr", "lam", "train_total", "train_recon", "train_kl",
                           "train_align", "train_balance")},
    **{k: "collapse" for k in ("active_units", "mu_sq", "escape_force", "probe_acc")},
}


def namespace(metric: str) -> str | None:
    """certificate / loss / collapse, or None for a metric that is not a TensorBoard scalar."""
    if metric.startswith("G_tau@"):  # the extra taus of eval.taus
        return "certificate"
    return NAMESPACE.get(metric)


def tag(metric: str) -> str:
    """TensorBoard tag of a metric, e.g. 'G_tau' -> 'certificate/G_tau'."""
    return f"{namespace(metric)}/{metric}"


def jsonable(value: Any) -> Any:
    """NaN / inf become None so the JSON files stay standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TrialLog:
    """Writes one trial's event file and JSON files into its directory."""

    def __init__(self, trial_dir: Path, config: dict[str, Any], purge_step: int | None = None) -> None:
        self.dir = Path(trial_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        # purge_step drops events past a resumed checkpoint, so a resumed trial has no duplicate steps
        self.writer = SummaryWriter(str(self.dir), purge_step=purge_step)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        """One report point: scalars to TensorBoard, one line to metrics.jsonl."""
        step = int(metrics["step"])
        for key, value in metrics.items():
            if namespace(key) and value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(tag(key), float(value), step)
        self.writer.flush()
        append_line(self.dir / "metrics.jsonl", json.dumps({k: jsonable(v) for k, v in metrics.items()}) + "\n")

    def close(self, result: dict[str, Any]) -> None:
        """The trial's endpoint row as result.json."""
        write_atomic(self.dir / "result.json",
                     json.dumps({k: jsonable(v) for k, v in result.items()}, indent=1, sort_keys=True))
        self.writer.close()
