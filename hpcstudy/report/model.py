"""What a report page is made of: sections holding tables, figures and flow diagrams, each cell
traced to the exported file, row and columns it shows (the gate re-checks every trace)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Cell:
    """One table cell. ``columns`` name the source columns whose values the numbers in ``text``
    are, in order; ``row`` is the source row (1-based, as in the CSV after its header);
    ``scale`` is what the values were multiplied by (100 for a percentage)."""
    text: str
    columns: tuple[str, ...] = ()
    row: int | None = None
    scale: int = 1
    suppressed: str | None = None      # why the cell is not shown (on hover)
    header: bool = False               # a row header (<th>)
    difference: tuple[int, int] | None = None   # persons of row a minus row b (attrition)


@dataclass
class Table:
    id: str
    caption: str
    source: str                        # the manifest-listed file the cells come from
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""
    publish: bool = True               # also as tables/<id>.md and tables/publication/<id>.csv
    totals: list = field(default_factory=list)   # Facts shown under the table (a model's n)


@dataclass
class Figure:
    id: str
    caption: str
    source: str
    svg: str
    table: Table | None                # None: the numbers are in the section's previous figure


@dataclass
class FlowStep:
    """A box of an attrition flow: persons remaining after a step, and the persons that step
    removed (the difference of two consecutive source rows)."""
    label: str
    remaining: Cell
    removed: Cell | None = None
    reasons: list[tuple[int, str]] = field(default_factory=list)   # (source row, step)


@dataclass
class Flow:
    id: str
    caption: str
    source: str
    steps: list[FlowStep]
    table: Table


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    blocks: list = field(default_factory=list)
    notes: list = field(default_factory=list)    # Facts: a design's warnings, withheld models


@dataclass
class Fact:
    """A line of the run's description: a label and a value traced to a field of a file."""
    label: str
    value: str
    source: str = ""
    field: str = ""
    kind: str = "text"                 # text | hash | version


@dataclass
class Page:
    title: str
    description: str
    facts: list[Fact]
    sections: list[Section]
    min_cell: int

    def tables(self) -> list[Table]:
        """Every table of the page, in page order (figures' and flows' tables included)."""
        out = []
        for s in self.sections:
            for b in s.blocks:
                t = b if isinstance(b, Table) else b.table
                if t is not None:
                    out.append(t)
        return out
