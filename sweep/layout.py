"""TensorBoard's "Custom Scalars" tab: one category per variant, a margin chart of G with [G_lower, G_upper].

A custom-scalars chart draws tags, across every run that has them: it cannot pick runs. A chart of
certificate/G would therefore mix full, noalign and rescue. So each trial that knows its variant
also writes its bare margin and the two bounds under variant-scoped tags, variant/<variant>/G,
variant/<variant>/G_lower, variant/<variant>/G_upper (the same numbers as certificate/G, ...), and
a layout with one category, titled <variant>, holding one margin chart of those three tags: the
category of `full` shows exactly the full runs (each seed, each grid point a line with its band).
The prefix is not `margin/`: in the sweep `margin` is the scheduler's G_tau (G_fix for a fixed
target), while these charts show the bare G, on whose zero line the certificate (G_lower > 0) lives.
A G_tau or G_fix chart would be the same picture shifted by tau, so there is none.

TensorBoard merges the layouts of all runs by category title (custom_scalars_plugin.layout_impl):
a category seen again gets the charts it lacks, duplicates skipped. Every trial of a variant writes
the same category, so the merge gives one clean category per variant. The plugin files a later
layout's extra charts under a category first seen in a non-first run into a discarded copy, so the
charts of a category must not differ between trials: here they depend on the variant only.

The layout is written once per writer, at the first report that carries G: a stage that never
reports the certificate (the warm-up) gets no empty category. A resumed trial writes it again at
step 0, below any purge step; the plugin reads one layout per run.
"""

from __future__ import annotations

import math
from typing import Any

from tensorboard.plugins.custom_scalar import layout_pb2

PREFIX = "variant"
MARGIN = ("G", "G_lower", "G_upper")
"""The value and its lower and upper bound, as the trial's metrics name them."""
CHART_TITLE = "G with [G_lower, G_upper]"


def variant_tag(variant: str, metric: str) -> str:
    """The variant-scoped tag of a metric, e.g. ('full', 'G_lower') -> 'variant/full/G_lower'."""
    return f"{PREFIX}/{variant}/{metric}"


def variant_layout(variant: str) -> dict[str, dict[str, list[Any]]]:
    """One category titled `variant` with the margin chart of its G and bounds, in the form of
    SummaryWriter.add_custom_scalars: {category: {chart title: ["Margin", [value, lower, upper]]}}."""
    return {variant: {CHART_TITLE: ["Margin", [variant_tag(variant, m) for m in MARGIN]]}}


def read_layout(content: bytes) -> layout_pb2.Layout:
    """A layout back from the bytes of its summary tensor (tag custom_scalars__config__)."""
    return layout_pb2.Layout.FromString(content)


class VariantMargins:
    """The variant-scoped margin scalars of one trial's writer and, once, the layout that charts them.

    Does nothing without a variant (a writer that does not know which variant it logs).
    """

    def __init__(self, writer: Any, variant: str | None) -> None:
        self.writer, self.variant, self.laid_out = writer, variant, False

    def report(self, metrics: dict[str, Any], step: int) -> None:
        """Write the finite ones of G, G_lower, G_upper under variant/<variant>/ (and the layout first)."""
        if not self.variant or "G" not in metrics:
            return
        if not self.laid_out:
            self.writer.add_custom_scalars(variant_layout(self.variant))  # at step 0
            self.laid_out = True
        for metric in MARGIN:
            value = metrics.get(metric)
            if value is not None and math.isfinite(float(value)):
                self.writer.add_scalar(variant_tag(self.variant, metric), float(value), step)
