"""A table of mostly small cells is withheld whole after a bounded audit, not grown one cell
at a time for many minutes (a measure by month over a few thousand persons never finished)."""
import numpy as np

from hpcstudy.outputs import disclosure as D
from hpcstudy.outputs import protection as P
from hpcstudy.outputs.protection import exposed


def monthly_table(months: int = 168, seed: int = 3) -> list[dict]:
    """Two groups by month: a few hundred persons a month, about one event (like a rare
    outcome's monthly measure at 20 000 persons)."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in (0, 1):
        for t in range(months):
            persons = int(rng.integers(30, 400))
            rows.append({"group": g, "interval": f"{2010 + t // 12}-{t % 12 + 1:02d}",
                         "persons": persons, "events": int(rng.poisson(1.2))})
    return rows


def test_a_table_of_mostly_small_cells_is_withheld_whole_within_the_work_limit(monkeypatch):
    rows = monthly_table()
    small = sum(0 < r["events"] < 5 for r in rows)
    assert small > len(rows) / 2   # the shape that never finished
    built = []
    real = P._Problem

    class Counted(real):
        def __init__(self, values, hidden, groups):
            built.append(sum(hidden) * len(rows))
            # far past the limit: the audit did not stop where it should (fail fast, not after
            # the many minutes the unbounded audit takes)
            assert sum(built) <= 2 * P.WORK_LIMIT, "the audit went past its work limit"
            super().__init__(values, hidden, groups)

    monkeypatch.setattr(P, "_Problem", Counted)
    out = D.suppress(rows, 5, derived=(), keys=("group", "interval"))
    assert all(r.get("suppressed") for r in out)
    assert all(r["persons"] is None and r["events"] is None for r in out)
    assert sum(built) > P.WORK_LIMIT / 2   # it tried before giving up (not withheld at once)


def test_the_limit_does_not_touch_a_table_with_few_small_cells():
    """Most cells large: protected cell by cell as before, far below the limit."""
    rows = monthly_table(months=24)
    for r in rows:
        r["events"] += 20
    rows[5]["events"] = 2
    out = D.suppress(rows, 5, derived=(), keys=("group", "interval"))
    hidden = [bool(r.get("suppressed")) for r in out]
    assert hidden[5] and 2 <= sum(hidden) < len(rows) / 4
    # the audit's verdict on the true counts: no withheld small cell is exposed
    assert exposed(rows, hidden, ("group", "interval"), 5) == []


def test_a_zero_limit_withholds_any_table_with_a_small_cell(monkeypatch):
    """The limit is what decides (not time): at 0 the first audit already exceeds it."""
    monkeypatch.setattr(P, "WORK_LIMIT", 0)
    rows = monthly_table(months=24)
    for r in rows:
        r["events"] += 20
    rows[5]["events"] = 2
    out = D.suppress(rows, 5, derived=(), keys=("group", "interval"))
    assert all(r.get("suppressed") for r in out)
