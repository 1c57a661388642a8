"""The synthetic registers: schemas, layout, determinism, realism of the records."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from hpcstudy.registers import codes, schema, store, synth
from hpcstudy.registers.generate import generate
from hpcstudy.registers.store import Dataset


def table(ds: Dataset, reg: str, partition: int | None = None):
    parts = None if partition is None else [partition]
    return {k: v.to_numpy() for k, v in
            zip(ds.read(reg, partitions=parts).column_names,
                ds.read(reg, partitions=parts).columns, strict=True)}


def as_days(a):
    return a.astype("datetime64[D]").astype(np.int64)


def test_every_register_has_its_schema_and_manifest_entry(small_data):
    ds = Dataset.open(small_data)
    m = ds.manifest
    assert m["schema_version"] == schema.SCHEMA_VERSION and m["partitions"] == 3
    assert set(m["registers"]) == set(schema.REGISTERS)
    for name, reg in schema.REGISTERS.items():
        files = ds.files(name)
        assert [f["path"] for f in files] == [f"{name}/part-{p:05d}.parquet" for p in range(3)]
        for f in files:
            pf = pq.ParquetFile(small_data / f["path"])
            assert pf.schema_arrow == reg.arrow_schema()
            assert pf.metadata.num_rows == f["rows"]
            assert store.sha256_file(small_data / f["path"]) == f["sha256"]
        assert m["registers"][name]["rows"] == sum(f["rows"] for f in files)
    assert m["registers"]["bef"]["rows"] == 3000
    for reg in ("lpr_adm", "lpr_diag", "lmdb", "dod", "vnds"):
        assert m["registers"][reg]["rows"] > 0, reg


def test_code_dictionaries_are_sorted_int32_and_danish(small_data):
    ds = Dataset.open(small_data)
    icd = ds.dictionary("icd10")
    assert icd == sorted(icd) and all(c.startswith("D") and c[1].isalpha() for c in icd)
    assert all(len(c) == 7 for c in ds.dictionary("atc"))
    for reg, col in (("lpr_adm", "c_adiag"), ("lpr_diag", "c_diag"), ("lmdb", "atc"),
                     ("dodsaarsag", "c_dodtilgrundl")):
        t = ds.read(reg, columns=[col])
        assert str(t.schema.field(col).type) == "int32"
        v = t.column(col).to_numpy()
        system = schema.REGISTERS[reg].column(col).code_system
        assert v.min() >= 0 and v.max() < len(ds.dictionary(system))
    # A prefix is one contiguous range of codes.
    lo, hi = codes.prefix_range(icd, "DI21")
    assert icd[lo:hi] == ["DI21"] + [f"DI21{d}" for d in range(10)]


def test_rows_are_routed_by_pnr_hash_and_sorted_inside_partitions(small_data):
    ds = Dataset.open(small_data)
    for name, reg in schema.REGISTERS.items():
        for p in range(ds.partitions):
            t = table(ds, name, p)
            if name == "lpr_diag":
                continue
            assert (store.partition_of(t["pnr"], 3) == p).all(), name
            keys = [k for k in reg.sort_by if not k.startswith("_")]
            cols = [as_days(t[k]) if t[k].dtype.kind == "M" else t[k] for k in keys]
            order = np.lexsort(cols[::-1])
            assert (order == np.arange(order.size)).all(), f"{name} part {p} not sorted"


def test_lpr_diag_links_to_contacts_in_the_same_partition(small_data):
    ds = Dataset.open(small_data)
    for p in range(ds.partitions):
        adm, diag = table(ds, "lpr_adm", p), table(ds, "lpr_diag", p)
        assert np.isin(diag["recnum"], adm["recnum"]).all()
        assert np.unique(adm["recnum"]).size == adm["recnum"].size
        # exactly one action diagnosis per contact, equal to c_adiag
        a = diag["c_diagtype"] == 0
        rec_a, diag_a = diag["recnum"][a], diag["c_diag"][a]
        assert np.unique(rec_a).size == rec_a.size == adm["recnum"].size
        order = np.argsort(adm["recnum"])
        pos = order[np.searchsorted(adm["recnum"], rec_a, sorter=order)]
        assert (adm["c_adiag"][pos] == diag_a).all()


def test_records_respect_register_history_residence_and_death(small_data):
    ds = Dataset.open(small_data)
    bef, dod = table(ds, "bef"), table(ds, "dod")
    death = dict(zip(dod["pnr"], as_days(dod["doddato"]), strict=True))
    birth = dict(zip(bef["pnr"], as_days(bef["foed_dag"]), strict=True))
    adm, lmdb = table(ds, "lpr_adm"), table(ds, "lmdb")
    d_in, eksd = as_days(adm["d_inddto"]), as_days(lmdb["eksd"])
    assert d_in.min() >= schema.LPR_START and d_in.max() <= schema.DATA_END
    assert eksd.min() >= schema.LMDB_START and eksd.max() <= schema.DATA_END
    outpatient = adm["c_pattype"] == 2
    assert outpatient.any() and d_in[outpatient].min() >= schema.LPR_OUTPATIENT
    assert (as_days(adm["d_uddto"]) >= d_in).all()
    for pnr, day in zip(adm["pnr"], d_in, strict=True):
        assert birth[pnr] <= day <= death.get(pnr, schema.DATA_END)
    for pnr, day in zip(lmdb["pnr"], eksd, strict=True):
        assert day <= death.get(pnr, schema.DATA_END)
    b = as_days(bef["foed_dag"])
    assert b.min() >= schema.day("1920-01-01") and b.max() <= schema.DATA_END
    assert set(np.unique(bef["koen"])) == {1, 2}
    assert set(np.unique(bef["region"])) == set(schema.REGIONS)


def test_conditions_and_drugs_the_studies_need_are_there(small_data):
    ds = Dataset.open(small_data)
    adm = ds.read("lpr_adm", columns=["c_adiag"], decode=True).column(0).to_pylist()
    cats = {c[:4] for c in adm}
    for c in ("DI21", "DI63", "DI50", "DE11", "DJ44", "DI25", "DZ03"):
        assert c in cats, c
    assert any(c.startswith("DC") for c in cats)
    atc = set(ds.read("lmdb", columns=["atc"], decode=True).column(0).to_pylist())
    for prefix in ("C10AA", "A10BA", "C09", "C10AX", "N02BE"):
        assert any(a.startswith(prefix) for a in atc), prefix
    lmdb = table(ds, "lmdb")
    assert (lmdb["volume"] > 0).all() and (lmdb["packsize"] > 0).all()
    assert set(np.unique(lmdb["apk"])) <= {1, 2}


def test_truth_is_in_the_manifest(small_data):
    truth = Dataset.open(small_data).manifest["truth"]
    assert truth["mi"]["log_hr"]["statin"] == pytest.approx(np.log(0.75))
    assert truth["mi"]["log_hr"]["diabetes"] == pytest.approx(np.log(2.0))
    assert truth["mi"]["per_year"] == pytest.approx(0.07)
    assert "statin_start" in truth and "diabetes" in truth["statin_start"]["log_hr"]


def test_same_seed_n_and_p_give_identical_bytes(tmp_path, small_data):
    again = tmp_path / "again"
    generate(again, persons=3000, seed=11, partitions=3, jobs=2)
    files = sorted(p.relative_to(small_data) for p in small_data.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (small_data / f).read_bytes() == (again / f).read_bytes(), f


def test_another_seed_gives_other_persons(tmp_path, small_data):
    other = tmp_path / "other"
    generate(other, persons=3000, seed=12, partitions=3, jobs=1)
    a = Dataset.open(small_data).read("bef").column("foed_dag").to_numpy()
    b = Dataset.open(other).read("bef").column("foed_dag").to_numpy()
    assert not np.array_equal(np.sort(a), np.sort(b))


def _sorted_rows(ds: Dataset, reg: str) -> list[tuple]:
    t = ds.read(reg)
    return sorted(zip(*(c.to_pylist() for c in t.columns), strict=True))


def test_another_p_gives_the_same_persons_and_records(tmp_path, small_data):
    one = tmp_path / "p1"
    generate(one, persons=3000, seed=11, partitions=1, jobs=1)
    a, b = Dataset.open(small_data), Dataset.open(one)
    for reg in schema.REGISTERS:
        assert _sorted_rows(a, reg) == _sorted_rows(b, reg), reg


def test_fewer_persons_are_a_prefix_of_more(tmp_path, small_data):
    few = tmp_path / "few"
    generate(few, persons=1000, seed=11, partitions=2, jobs=1)
    small, big = Dataset.open(few), Dataset.open(small_data)
    pnr_few = set(small.read("bef").column("pnr").to_pylist())
    assert len(pnr_few) == 1000 and pnr_few <= set(big.read("bef").column("pnr").to_pylist())
    rows_big = [r for r in _sorted_rows(big, "lmdb") if r[0] in pnr_few]
    assert _sorted_rows(small, "lmdb") == rows_big


def test_pseudonyms_are_a_bijection_and_never_cpr_like():
    idx = np.arange(2_000_000, dtype=np.int64)
    p = synth.pseudonym(idx)
    assert np.unique(p).size == idx.size and (p >= 0).all()
    # Ten-digit numbers could be mistaken for CPR numbers: pseudonyms are far larger.
    assert (p > 10**10).mean() > 0.999


def test_partition_hash_spreads_persons_evenly():
    p = store.partition_of(synth.pseudonym(np.arange(100_000)), 8)
    counts = np.bincount(p, minlength=8)
    assert counts.min() > 0.9 * 12_500 and counts.max() < 1.1 * 12_500


def test_manifest_is_stable_json(small_data):
    text = (small_data / "manifest.json").read_text()
    m = json.loads(text)
    assert store.manifest_json(m) == text


def test_the_summary_names_every_planted_effect(small_data):
    """synth / data summary list each outcome's planted hazard ratios (the sglt2 effect on
    heart failure too, not only MI's), from the manifest's truth."""
    import math

    from conftest import run_cli

    truth = json.loads((small_data / "manifest.json").read_text())["truth"]
    r = run_cli("data", "summary", small_data)
    assert r.returncode == 0, r.stderr
    shown = [x.strip() for x in r.stdout.splitlines() if "planted truth" in x]
    want = [f"planted truth ({o.replace('_', ' ')}): " + ", ".join(
        f"HR {k} {math.exp(v):.2f}" for k, v in sorted(t["log_hr"].items()))
        for o, t in sorted(truth.items()) if isinstance(t, dict) and t.get("log_hr")]
    assert shown == want and len(want) >= 5
    assert any(x.startswith("planted truth (sglt2 hf): ") and "HR sglt2 0.60" in x
               for x in shown), shown
