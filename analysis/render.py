"""Tables as Markdown (stdout, tables.md), CSV and LaTeX files in DIR/analysis/.

Markdown and LaTeX show `Table.text` (4 decimals, "mean ± std"); the CSV holds the numbers of
`Table.values` to 4 decimals with mean and std in their own columns, ready for a spreadsheet.
LaTeX is a booktabs `tabular` to `\\input` into a paper, numbers in math mode.
"""

from __future__ import annotations

import re
from pathlib import Path

from analysis.readers import Problem, rel
from analysis.tables import Table, fmt

NUMBER = re.compile(r"^-?\d+(\.\d+)?( ± -?\d+(\.\d+)?)?$")
LATEX_TOKENS = {"G_tau": r"$G_\tau$", "G_fix": r"$G_{\mathrm{fix}}$", "G_lower": r"$G_{\mathrm{lower}}$",
                "G_upper": r"$G_{\mathrm{upper}}$", "alpha=": r"$\alpha$=", "I_T": "$I_T$",
                "L_align": r"$L_{\mathrm{align}}$", "E||mu||^2": r"$E\|\mu\|^2$", "tau=": r"$\tau$="}
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def to_markdown(table: Table) -> str:
    """A Markdown heading and pipe table of `table.text` (the header alone when there are no rows)."""
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731  (E||mu||^2 has pipes)
    lines = [f"### {table.title}", "", "| " + " | ".join(cell(c) for c in table.text.columns) + " |",
             "|" + "|".join("---" for _ in table.text.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.text.itertuples(index=False)]
    return "\n".join(lines)


def latex_text(text: str) -> str:
    """Plain text with LaTeX specials escaped and the paper's symbols typeset."""
    pattern = "(" + "|".join(re.escape(t) for t in LATEX_TOKENS) + ")"
    parts = re.split(pattern, text)
    return "".join(LATEX_TOKENS.get(p) or "".join(LATEX_SPECIAL.get(ch, ch) for ch in p) for p in parts)


def latex_cell(text: str) -> str:
    """Numbers (and 'mean ± std') in math mode, anything else escaped."""
    if NUMBER.match(text):
        return "$" + text.replace(" ± ", r" \pm ") + "$"
    return latex_text(text)


def to_latex(table: Table) -> str:
    """A booktabs tabular of `table.text`: numeric columns right-aligned, the title as a comment."""
    text = table.text
    numeric = [bool(len(text)) and all(NUMBER.match(v) or v == "" for v in text[c]) for c in text.columns]
    lines = [f"% {table.title}", r"\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}",
             r"\toprule", " & ".join(latex_text(str(c)) for c in text.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_cell(str(v)) for v in row) + r" \\" for row in text.itertuples(index=False)]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def to_csv(table: Table) -> str:
    """`table.values` as CSV, floats to 4 decimals."""
    return table.values.astype(object).map(fmt).to_csv(index=False)


def write_tables(tables: list[Table], folder: Path, root: Path) -> tuple[list[Path], list[Problem]]:
    """<name>.csv and <name>.tex per table, and tables.md with all of them, into `folder`.

    Args:
        tables: The tables.
        folder: DIR/analysis (created when missing).
        root: The sweep directory (for problem lines).

    Returns:
        The files written, and a problem when the folder cannot be written.
    """
    files = [folder / "tables.md"]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for table in tables:
            (folder / f"{table.name}.csv").write_text(to_csv(table))
            (folder / f"{table.name}.tex").write_text(to_latex(table))
            files += [folder / f"{table.name}.csv", folder / f"{table.name}.tex"]
        (folder / "tables.md").write_text("\n\n".join(to_markdown(t) for t in tables) + "\n")
    except OSError as err:
        return [], [Problem(rel(root, folder), f"cannot write the table files ({err})")]
    return files, []


def markdown_report(tables: list[Table]) -> str:
    """Every table as Markdown, separated by blank lines (what stdout shows)."""
    return "\n\n".join(to_markdown(t) for t in tables)

