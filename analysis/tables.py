"""The paper's tables from a sweep's endpoint rows (docs/method.md, "Reference numbers").

  per_seed         Table 1: seed, teacher QC, variant, I_T, L_align, G_tau (G_fix), student MI
  aggregate        Table 2: mean ± std over seeds of G_tau (G_fix), student MI, L_align per variant
  baselines        Table 3: raw G_tau, raw MI, post-hoc G_tau, post-hoc MI per baseline method
  tau_sensitivity  Table 5: G at tau' = G (bare, logged) - tau' for a list of tau', no retraining
  diagnostics      Table 6: PSNR, active units, KL, E||mu||^2, probe accuracy
  trials           every trial on disk with its status (finished / running) and last margin

Tables 1, 2, 5 and 6 hold the teacher-guided rows (method certificate, or rst with the simplex
witness, `sweep.variants.method_name`); Table 3 every method other than certificate (the baselines, and RST as in the
companion paper's table), grouped by method and variant. Aggregates pool only strict-feasible seeds (docs/method.md, "Protocol" step 2): each stress-case (or
unknown-QC) seed gets its own row after the feasible rows, never entering a feasible mean. The std is
the sample std over seeds (ddof = 1), empty for a single seed. Fixed-target rows report G_fix
(= I_Ttilde - L - tau) where teacher-search rows report G_tau. Every table is a numeric frame
(`Table.values`) and its text (`Table.text`: numbers to 4 decimals, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.collect import Sweep
from sweep import schema
from sweep.variants import variant_rank
from teachers.certificate import at_tau

DEFAULT_TAUS = (0.0, 0.05, 0.15)
GUIDED_METHODS = ("certificate", "rst")  # teacher-guided training, learned head or simplex witness
DIAGNOSTICS = {"PSNR (dB)": "psnr", "active units": "active_units", "KL": "kl", "E||mu||^2": "mu_sq",
               "probe acc": "probe_acc"}


@dataclass
class Table:
    """One table: its file stem, title, numbers and printed text.

    Attributes:
        name: File stem in DIR/analysis/, e.g. "per_seed".
        title: Heading, naming the paper table it mirrors.
        values: Labels and float numbers (what tests assert on).
        text: The same table as strings: 4 decimals, "mean ± std", "" where there is no number.
    """

    name: str
    title: str
    values: pd.DataFrame
    text: pd.DataFrame


def fmt(value: object) -> str:
    """A cell as text: floats to 4 decimals (never '-0.0000'), integers plain, missing empty."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_, str)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    text = f"{float(value):.4f}"
    return "0.0000" if text == "-0.0000" else text


def fmt_label(value: object) -> str:
    """A group label or sweep parameter as given: 2.0 -> '2', 0.001 -> '0.001' (no padding to 4 decimals)."""
    if isinstance(value, (float, np.floating)) and not np.isnan(value):
        return f"{float(value):g}"
    return fmt(value)


def fmt_p(value: object) -> str:
    """A p-value: to 4 decimals, or in scientific notation under 1e-4 (where 0.0000 would hide it)."""
    if isinstance(value, (float, np.floating)) and 0 < value < 1e-4:
        return f"{float(value):.1e}"
    return fmt(value)


def fmt_pm(mean: float, std: float) -> str:
    """'mean ± std' to 4 decimals; the mean alone when std is missing; '' when the mean is."""
    if np.isnan(mean):
        return ""
    return fmt(mean) if np.isnan(std) else f"{fmt(mean)} ± {fmt(std)}"


def certificate_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of teacher-guided training (GUIDED_METHODS), in (seed, variant) order."""
    rows = results[results["method"].isin(GUIDED_METHODS)]
    order = sorted(rows.index, key=lambda i: (rows.at[i, "seed"], variant_rank(rows.at[i, "variant"])))
    return rows.loc[order]


def margin_label(rows: pd.DataFrame) -> str:
    """The name of the rows' margin (`sweep.schema.margin_label` of their targets)."""
    return schema.margin_label(rows["target"])


def has_bounds(rows: pd.DataFrame) -> bool:
    """Whether the rows carry the statistical certificate (results.csv written since it exists)."""
    return bool(len(rows)) and bool(rows["G_lower"].notna().any())


STATISTICAL = {"G_lower": "G_lower", "G_upper": "G_upper", "certified": "certified", "p": "p_certified",
               "p (BH)": "p_bh", "certified (FDR)": "certified_fdr"}
"""Table 1's columns of the statistical certificate: the bounds on the population bare margin at
eval.alpha, the claim G_lower > 0, its p-value, and the sweep-wide Benjamini-Hochberg decision."""


def per_seed_table(sweep: Sweep) -> Table:
    """Paper Table 1: one row per finished trial of the certificate method, and beside G_tau the
    statistical certificate where the sweep has it."""
    rows = certificate_rows(sweep.results)
    label = margin_label(rows)
    columns = {"seed": "seed", "QC": "qc", "variant": "variant", **{s: s for s in sweep.settings},
               "I_T": "I_T", "L_align": "L_align", label: "margin", "student MI": "student_mi"}
    if has_bounds(rows):
        columns |= STATISTICAL
    values = pd.DataFrame({name: rows[col].to_numpy() for name, col in columns.items()})
    text = values.astype(object).map(fmt)
    for key in sweep.settings:
        text[key] = values[key].map(fmt_label)
    for key in ("certified", "certified (FDR)"):
        if key in text:
            text[key] = values[key].map(lambda v: "yes" if v is True else "no" if v is False else "")
    for key in ("p", "p (BH)"):
        if key in text:
            text[key] = values[key].map(fmt_p)
    return Table("per_seed", "Table 1: per-seed certificate (raw witness)", values, text)


def _rank(key: str, value: object) -> tuple:
    """Sort key of one group label: variants in protocol order, numbers before text."""
    if key in ("variant", "method"):  # baseline methods are named as their variants
        return variant_rank(str(value))
    return (0, float(value), "") if isinstance(value, (int, float, np.number)) else (1, 0.0, str(value))


def seed_groups(rows: pd.DataFrame, keys: list[str]) -> list[tuple[str, tuple, pd.DataFrame]]:
    """(QC, key values, rows) per group: feasible seeds pooled by `keys`, then every other seed alone."""
    order = sorted(rows.index, key=lambda i: ([_rank(k, rows.at[i, k]) for k in keys], rows.at[i, "seed"]))
    rows = rows.loc[order]
    feasible = rows[rows["qc"] == "feasible"]
    groups = [("feasible", key if isinstance(key, tuple) else (key,), group)
              for key, group in feasible.groupby(keys, sort=False, dropna=False)] if len(feasible) else []
    others = rows[rows["qc"] != "feasible"].sort_values("seed", kind="stable")
    return groups + [(rows.at[i, "qc"], tuple(rows.loc[i, keys]), rows.loc[[i]]) for i in others.index]


def aggregate(rows: pd.DataFrame, keys: list[str], metrics: dict[str, str],
              fractions: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sample std (ddof=1) over seeds of each metric, per `seed_groups` group.

    Args:
        rows: Endpoint rows.
        keys: Columns that define a group besides QC (e.g. variant and the sweep parameters).
        metrics: Display name -> column of `rows`.
        fractions: Display name -> boolean column: the fraction of the group's seeds where it is True.

    Returns:
        The values frame (columns 'QC', *keys, 'seeds', 'n', '<name> mean', '<name> std', then each
        fraction) and the text frame (columns 'QC', *keys, 'seeds', 'n', '<name>' as 'mean ± std',
        each fraction as 'k/n').
    """
    values, text = [], []
    fractions = fractions or {}
    for qc, key, group in seed_groups(rows, keys):
        label = {"QC": qc, **dict(zip(keys, key)), "seeds": ", ".join(str(s) for s in group["seed"]),
                 "n": len(group)}
        stats = {name: (group[col].mean(), group[col].std(ddof=1)) for name, col in metrics.items()}
        claims = {name: (int((group[col] == True).sum()), len(group)) for name, col in fractions.items()}  # noqa: E712
        values.append(label | {f"{n} {s}": v for n, pair in stats.items() for s, v in zip(("mean", "std"), pair)}
                      | {name: k / n for name, (k, n) in claims.items()})
        text.append({k: fmt_label(v) for k, v in label.items()} | {n: fmt_pm(*pair) for n, pair in stats.items()}
                    | {name: f"{k}/{n}" for name, (k, n) in claims.items()})
    value_columns = ["QC", *keys, "seeds", "n", *[f"{n} {s}" for n in metrics for s in ("mean", "std")], *fractions]
    return (pd.DataFrame(values, columns=value_columns),
            pd.DataFrame(text, columns=["QC", *keys, "seeds", "n", *metrics, *fractions]))


def aggregate_table(sweep: Sweep) -> Table:
    """Paper Table 2: feasible mean ± std per variant first, stress-case seeds in their own rows."""
    rows = certificate_rows(sweep.results)
    metrics = {margin_label(rows): "margin", "student MI": "student_mi", "L_align": "L_align"}
    fractions = None
    if has_bounds(rows):  # the fraction of seeds certified, per seed and sweep-wide at the FDR level
        metrics["G_lower"] = "G_lower"
        fractions = {"certified": "certified", "certified (FDR)": "certified_fdr"}
    values, text = aggregate(rows, ["variant", *sweep.settings], metrics, fractions)
    return Table("aggregate", "Table 2: mean ± std over seeds (strict-feasible pooled; stress cases alone)",
                 values, text)


def baseline_table(sweep: Sweep) -> Table:
    """Paper Table 3: raw and post-hoc certificate per method other than certificate; a variant column
    only where a method ran as several variants (e.g. rst as full and prefit)."""
    rows = sweep.results[sweep.results["method"] != "certificate"]
    metrics = {"raw G_tau": "margin", "raw MI": "student_mi", "post-hoc G_tau": "posthoc_G_tau",
               "post-hoc MI": "posthoc_student_mi"}
    if "qy_G_tau" in rows and rows["qy_G_tau"].notna().any():  # a GMVAE ran: its q(y|x) reads x, not z
        metrics["q(y|x) G_tau (not z-only)"] = "qy_G_tau"
    variant = ["variant"] if (rows["variant"] != rows["method"]).any() else []
    values, text = aggregate(rows, ["method", *variant, *sweep.settings], metrics)
    return Table("baselines", "Table 3: baselines, raw vs post-hoc certificate", values, text)


def tau_table(sweep: Sweep, taus: tuple[float, ...] = DEFAULT_TAUS) -> Table:
    """Paper Table 5: G_tau' = G - tau' from the logged bare margin G, for every tau' (no retraining)."""
    rows = certificate_rows(sweep.results)
    label = margin_label(rows)
    shifted = rows.assign(**{f"_tau{i}": at_tau(rows["G"], tau) for i, tau in enumerate(taus)})
    metrics = {f"{label} (tau={tau:g})": f"_tau{i}" for i, tau in enumerate(taus)}
    if has_bounds(rows):  # the data-driven margin beside the fixed taus: G_lower at eval.alpha
        metrics[f"G_lower (alpha={float(rows['alpha'].dropna().iloc[0]):g})"] = "G_lower"
    values, text = aggregate(shifted, ["variant", *sweep.settings], metrics)
    return Table("tau_sensitivity", "Table 5: tau sensitivity, G - tau from the logged bare margin G", values, text)


def diagnostics_table(sweep: Sweep) -> Table:
    """Paper Table 6: secondary diagnostics, mean ± std over seeds as in Table 2."""
    rows = certificate_rows(sweep.results)
    values, text = aggregate(rows, ["variant", *sweep.settings], DIAGNOSTICS)
    return Table("diagnostics", "Table 6: secondary diagnostics (mean ± std over seeds)", values, text)


def trials_table(sweep: Sweep) -> Table:
    """Every trial directory on disk: status, report points, last step and last margin."""
    label = margin_label(sweep.results)
    records = []
    for trial in sweep.trials:
        last = trial.history[-1] if trial.history else {}
        margin = last.get(trial.margin)
        records.append({"trial": trial.trial_id, "seed": trial.seed, "variant": trial.variant,
                        "status": trial.status, "report points": len(trial.history),
                        "last step": last.get("step"), f"last {label}": float(margin) if isinstance(margin, (int, float)) else np.nan})
    columns = ["trial", "seed", "variant", "status", "report points", "last step", f"last {label}"]
    values = pd.DataFrame(records, columns=columns)
    return Table("trials", "Trials on disk (running trials have curves but no endpoint row)", values,
                 values.astype(object).map(fmt))


def all_tables(sweep: Sweep, taus: tuple[float, ...] = DEFAULT_TAUS) -> list[Table]:
    """Tables 1, 2, 3, 5, 6 and the trial listing, in that order."""
    return [per_seed_table(sweep), aggregate_table(sweep), baseline_table(sweep), tau_table(sweep, taus),
            diagnostics_table(sweep), trials_table(sweep)]
