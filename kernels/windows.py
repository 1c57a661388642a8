"""Per-person operations over events in a window relative to a per-person date.

Events come sorted by person and then date (as the registers are stored). A window is a pair of
day offsets relative to a per-person reference day ``ref``, both ends included; ``None`` leaves
an end open. Dates are integer days; a missing date is ``NO_DATE``. Ties on a date keep the
stored order, so "first" is deterministic.

Two forms of each operation:

- by person **row** (the engine's form, linear time): each event carries the dense row of its
  person (``ev_row``, 0..n-1, nondecreasing), ``ref`` has one day per row::

      ok = events_in_window(ev_row, ev_day, ref, lo=-365, hi=-1)   # last year before ref
      k = count_per_row(ev_row, ok, n);  i = nth_per_row(ev_row, ok, n, 1)

- by person **id** (``persons`` a sorted array of ids, found by binary search)::

      first_in_window(ev_person, ev_date, persons, ref, lo=-365, hi=-1)
"""

from __future__ import annotations

from ._namespace import array_namespace

NO_DATE = 2**31 - 1  # "no such date" (sorts after every real date)


# -- by person row ---------------------------------------------------------------------------
def events_in_window(ev_row, ev_day, ref, lo=None, hi=None, mask=None):
    """Bool per event: inside its person's window [ref + lo, ref + hi] (``ref`` NO_DATE: no
    window). ``ev_day`` and ``ref`` are int64 days; ``ev_row`` indexes ``ref``."""
    r = ref[ev_row]
    ok = r != NO_DATE
    if lo is not None:
        ok &= ev_day >= r + lo
    if hi is not None:
        ok &= ev_day <= r + hi
    if mask is not None:
        ok &= mask
    return ok


def count_per_row(ev_row, ok, n):
    """Per row 0..n-1: number of events with ``ok``."""
    xp = array_namespace(ev_row)
    return xp.bincount(ev_row[ok], minlength=n)


def nth_per_row(ev_row, ok, n, nth=1):
    """Per row 0..n-1: index of its ``nth`` event with ``ok`` (1 first, −1 last), or −1."""
    xp = array_namespace(ev_row)
    idx = xp.nonzero(ok)[0]
    out = xp.full(n, -1, dtype=xp.int64)
    m = idx.shape[0]
    if m == 0:
        return out
    rows = ev_row[idx]
    change = xp.ones(m, dtype=bool)
    change[1:] = rows[1:] != rows[:-1]
    starts = xp.nonzero(change)[0]
    ends = xp.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1:] = m
    counts = ends - starts
    person = rows[starts]
    if nth > 0:
        has = counts >= nth
        out[person[has]] = idx[starts[has] + nth - 1]
    else:
        has = counts >= -nth
        out[person[has]] = idx[ends[has] + nth]
    return out


def day_at(index, ev_day):
    """Day of event ``index`` (−1: none gives NO_DATE)."""
    xp = array_namespace(index)
    has = index >= 0
    return xp.where(has, ev_day[xp.where(has, index, 0)] if ev_day.shape[0] else NO_DATE,
                    NO_DATE).astype(xp.int64)


def first_day_per_row(ev_row, ev_day, ref, n, lo=None, hi=None, mask=None):
    """Per row: day of the first event in the window, or NO_DATE."""
    ok = events_in_window(ev_row, ev_day, ref, lo, hi, mask)
    return day_at(nth_per_row(ev_row, ok, n, 1), ev_day)


# -- by person id ----------------------------------------------------------------------------
def in_window(ev_person, ev_date, persons, ref, lo=None, hi=None, mask=None):
    """(person row of each event, bool mask of events inside the person's window)."""
    xp = array_namespace(ev_person, persons)
    if persons.shape[0] == 0:
        return xp.zeros(ev_person.shape[0], dtype=xp.int64), xp.zeros(ev_person.shape[0], bool)
    pos = xp.searchsorted(persons, ev_person)
    pos_c = xp.minimum(pos, persons.shape[0] - 1)
    ok = persons[pos_c] == ev_person
    r = ref[pos_c].astype(xp.int64)
    ok &= r != NO_DATE
    d = ev_date.astype(xp.int64)
    if lo is not None:
        ok &= d >= r + lo
    if hi is not None:
        ok &= d <= r + hi
    if mask is not None:
        ok &= mask
    return pos_c, ok


def nth_in_window(ev_person, ev_date, persons, ref, n=1, lo=None, hi=None, mask=None):
    """Per person: index of the n-th event in the window (n = 1 first, −1 last), or −1."""
    row, ok = in_window(ev_person, ev_date, persons, ref, lo, hi, mask)
    return nth_per_row(row, ok, persons.shape[0], n)


def first_in_window(ev_person, ev_date, persons, ref, lo=None, hi=None, mask=None):
    """Per person: date of the first event in the window, or NO_DATE."""
    return _date_of(nth_in_window(ev_person, ev_date, persons, ref, 1, lo, hi, mask), ev_date)


def last_in_window(ev_person, ev_date, persons, ref, lo=None, hi=None, mask=None):
    """Per person: date of the last event in the window, or NO_DATE."""
    return _date_of(nth_in_window(ev_person, ev_date, persons, ref, -1, lo, hi, mask), ev_date)


def _date_of(index, ev_date):
    xp = array_namespace(index)
    out = xp.full(index.shape[0], NO_DATE, dtype=xp.int64)
    has = index >= 0
    out[has] = ev_date[index[has]]
    return out


def count_in_window(ev_person, ev_date, persons, ref, lo=None, hi=None, mask=None):
    """Per person: number of events in the window."""
    xp = array_namespace(ev_person)
    row, ok = in_window(ev_person, ev_date, persons, ref, lo, hi, mask)
    return xp.bincount(row[ok], minlength=persons.shape[0])


def exists_in_window(ev_person, ev_date, persons, ref, lo=None, hi=None, mask=None):
    """Per person: whether any event falls in the window."""
    return count_in_window(ev_person, ev_date, persons, ref, lo, hi, mask) > 0


def sum_in_window(values, ev_person, ev_date, persons, ref, lo=None, hi=None, mask=None):
    """Per person: Σ values of the events in the window (e.g. DDD dispensed)."""
    xp = array_namespace(ev_person)
    row, ok = in_window(ev_person, ev_date, persons, ref, lo, hi, mask)
    return xp.bincount(row[ok], weights=values[ok].astype(xp.float64),
                       minlength=persons.shape[0])


def extreme_in_window(values, ev_person, ev_date, persons, ref, lo=None, hi=None, mask=None,
                      largest=False):
    """Per person: min (or max) of values in the window; NaN where there is none."""
    xp = array_namespace(ev_person)
    row, ok = in_window(ev_person, ev_date, persons, ref, lo, hi, mask)
    r, v = row[ok], values[ok].astype(xp.float64)
    out = xp.full(persons.shape[0], xp.nan)
    if r.shape[0] == 0:
        return out
    key = -v if largest else v
    order = xp.lexsort(xp.stack([key, r.astype(xp.float64)]))
    r, v = r[order], v[order]
    first = xp.ones(r.shape[0], dtype=bool)
    first[1:] = r[1:] != r[:-1]
    out[r[first]] = v[first]
    return out


def washout(ev_person, ev_date, persons, ref, days, mask=None):
    """Per person: True when no event falls in the ``days`` days before ``ref`` (new users)."""
    return ~exists_in_window(ev_person, ev_date, persons, ref, -days, -1, mask)
