"""Attributes of the index contact (hospital ``c_sgh``, patient type ``c_pattype``) and flags
for a codelist among its diagnoses (``index_contact: diagnoses``, a 0/1 column).

The index contact is the hospital contact that gave a person's index day: among the contacts
matching the index rule on that day, the one with the lowest record number. Each engine finds
it with its own code: pandas and text prefixes for the reference engine, the array kernels
for the partition engine. A person without one (never, for a valid study) gets -1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpcstudy_kernels import array_namespace
from hpcstudy_kernels import windows as W

if TYPE_CHECKING:   # the reference engine's frames: the partition engine never loads pandas
    import pandas as pd

MISSING = -1


def frame_attribute(data, s, index: pd.Series, column: str, codes=None) -> pd.Series:
    """Reference engine: ``index`` is pnr → index day; the attribute per person. ``column``
    ``diagnoses``: 1 where a diagnosis of the contact matches the stream ``codes`` (its
    codelist and diagnosis types), else 0."""
    if column == "diagnoses":
        rec = frame_attribute(data, s, index, "recnum").astype("int64")
        diag = data.t["lpr_diag"]
        hit = diag[diag["c_diagtype"].isin({"AB"[k] for k in codes.diagnosis_types}) &
                   diag["c_diag"].str.startswith(tuple(codes.codes.prefixes))]
        return rec.isin(set(hit["recnum"].astype("int64"))).astype("int8")
    adm, diag = data.t["lpr_adm"], data.t["lpr_diag"]
    types = {"AB"[k] for k in s.diagnosis_types}
    d = diag[diag["c_diagtype"].isin(types)]
    if s.codes is not None:
        d = d[d["c_diag"].str.startswith(tuple(s.codes.prefixes))]
    adm = adm[adm["recnum"].isin(set(d["recnum"]))]
    if s.patient_types:
        adm = adm[adm["c_pattype"].isin(s.patient_types)]
    for col, vals in s.filters:
        adm = adm[adm[col].isin(vals)]
    on_day = adm[adm["pnr"].isin(index.index)]
    on_day = on_day[on_day["d_inddto"] == on_day["pnr"].map(index)]
    first = on_day.sort_values("recnum").groupby("pnr")[column].first()
    kind = "int64" if column == "recnum" else "int32"
    return index.index.to_series().map(first).fillna(MISSING).astype(kind)


def _equals_any(xp, values, wanted):
    """values ∈ wanted for a few host values, without moving them to the device"""
    m = xp.zeros(values.shape[0], dtype=bool)
    for v in wanted:
        m |= values == v
    return m


def _in_ranges(xp, values, ranges):
    m = xp.zeros(values.shape[0], dtype=bool)
    for lo, hi in ranges:
        m |= (values >= lo) & (values < hi)
    return m


def array_attribute(data: dict, s, pnr, index, column: str, codes=None):
    """Partition engine: the attribute per person of ``pnr`` with index days ``index``; for
    ``diagnoses`` the 0/1 flag of a diagnosis of the contact matching ``codes``."""
    adm, diag = data["lpr_adm"], data["lpr_diag"]
    xp = array_namespace(adm["recnum"])
    ok = _equals_any(xp, diag["c_diagtype"], s.diagnosis_types)
    if s.codes is not None:
        ok &= _in_ranges(xp, diag["c_diag"], s.codes.ranges)
    keep = xp.isin(adm["recnum"], xp.unique(diag["recnum"][ok]))
    if s.patient_types:
        keep &= _equals_any(xp, adm["c_pattype"], s.patient_types)
    for col, vals in s.filters:
        keep &= _equals_any(xp, adm[col], vals)
    p, day, rec = adm["pnr"][keep], adm["d_inddto"][keep].astype(xp.int64), adm["recnum"][keep]
    order = xp.lexsort(xp.stack([rec, day, p]))
    pos = W.nth_in_window(p[order], day[order], pnr, index.astype(xp.int64), 1, lo=0, hi=0)
    found = pos >= 0
    if column == "diagnoses":   # the contact's record number among those with a match
        hit = _equals_any(xp, diag["c_diagtype"], codes.diagnosis_types) & \
            _in_ranges(xp, diag["c_diag"], codes.codes.ranges)
        mine = xp.full(pnr.shape[0], -1, dtype=xp.int64)
        mine[found] = rec[order][pos[found]].astype(xp.int64)
        flag = found & xp.isin(mine, xp.unique(diag["recnum"][hit]).astype(xp.int64))
        return flag.astype(xp.int8)
    val = adm[column][keep]
    out = xp.full(pnr.shape[0], MISSING, dtype=xp.int32)
    out[found] = val[order][pos[found]].astype(xp.int32)
    return out
