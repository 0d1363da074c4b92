"""A case's figures and targets, and how they print: a text table for the terminal, Markdown
for ``RESULTS.md``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """One line of the issue's targets and whether this run met it (None: not measured)."""

    case: int
    text: str
    measured: str
    holds: bool | None

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "MISSED", None: "not measured"}[self.holds]


@dataclass
class CaseReport:
    number: int
    title: str
    setup: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add_row(self, *cells: object) -> None:
        self.rows.append([_cell(c) for c in cells])

    def target(self, text: str, measured: str, holds: bool | None) -> None:
        self.targets.append(Target(self.number, text, measured, holds))

    def text(self) -> str:
        lines = [f"== Case {self.number}: {self.title}", f"   {self.setup}", ""]
        lines += ["   " + ln for ln in _text_table(self.columns, self.rows)]
        if self.targets:
            lines.append("")
            lines += [f"   target {t.text}: {t.measured} -> {t.verdict}" for t in self.targets]
        lines += [f"   note: {n}" for n in self.notes]
        lines.append(f"   ({self.seconds:.0f} s)")
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"## Case {self.number}: {self.title}", "", self.setup, ""]
        lines += _md_table(self.columns, self.rows)
        if self.targets:
            lines.append("")
            lines += [f"- target {t.text}: {t.measured}: **{t.verdict}**" for t in self.targets]
        if self.notes:
            lines.append("")
            lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines)


def targets_text(targets: Sequence[Target]) -> str:
    rows = [[str(t.case), t.text, t.measured, t.verdict] for t in targets]
    return "\n".join(_text_table(["case", "target", "measured", "verdict"], rows))


def targets_markdown(targets: Sequence[Target]) -> str:
    rows = [[str(t.case), t.text, t.measured, f"**{t.verdict}**"] for t in targets]
    return "\n".join(_md_table(["case", "target", "measured", "verdict"], rows))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _text_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        right = (c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
        return "  ".join([first.ljust(widths[0]), *right])

    return [line(columns), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = "|" + "|".join([":---", *["---:"] * (len(columns) - 1)]) + "|"
    return [line(columns), align, *(line(r) for r in rows)]
