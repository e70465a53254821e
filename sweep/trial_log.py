"""Per-trial logs: TensorBoard scalars by namespace, metrics.jsonl, config.json and result.json.

Tags are grouped by namespace as cleanrl does (certificate/, loss/, collapse/: sweep/schema.py's
metric registry says which metric goes where). The step axis is the optimizer step; a rescue
continues its parent's axis.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sweep.files import append_line, write_atomic
from sweep.layout import VariantMargins
from sweep.schema import METRICS_FILE, RESULT_FILE, SETTINGS_FILE, group_of, tag


def jsonable(value: Any) -> Any:
    """NaN / inf become None so the JSON files stay standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TrialLog:
    """Writes one trial's event file and JSON files into its directory."""

    def __init__(self, trial_dir: Path, config: dict[str, Any], purge_step: int | None = None,
                 variant: str | None = None) -> None:
        self.dir = Path(trial_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / SETTINGS_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))
        # TensorBoard's writer imported here, by the processes that train, not by every one that
        # imports the protocol (the Ray driver among them): about 0.3 s
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events past a resumed checkpoint, so a resumed trial has no duplicate steps
        self.writer = SummaryWriter(str(self.dir), purge_step=purge_step)
        self.margins = VariantMargins(self.writer, variant)  # Custom Scalars: G in [G_lower, G_upper] per variant

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        """One report point: scalars to TensorBoard, one line to metrics.jsonl."""
        step = int(metrics["step"])
        for key, value in metrics.items():
            if group_of(key) and value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(tag(key), float(value), step)
        self.margins.report(metrics, step)
        self.writer.flush()
        append_line(self.dir / METRICS_FILE, json.dumps({k: jsonable(v) for k, v in metrics.items()}) + "\n")

    def close(self, result: dict[str, Any]) -> None:
        """The trial's endpoint row as result.json."""
        write_atomic(self.dir / RESULT_FILE,
                     json.dumps({k: jsonable(v) for k, v in result.items()}, indent=1, sort_keys=True))
        self.writer.close()
