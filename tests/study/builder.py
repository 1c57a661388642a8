"""Tiny registers written as readable rows, for spec tests."""

from __future__ import annotations

from hpcstudy.registers.tables import write_tables


class Registers:
    def __init__(self):
        self.t = {r: {} for r in ("bef", "dod", "dodsaarsag", "vnds", "lpr_adm", "lpr_diag",
                                  "lmdb")}
        self._rec = 1000

    def _add(self, reg, **row):
        for k, v in row.items():
            self.t[reg].setdefault(k, []).append(v)

    def person(self, pnr, sex, born, region=1084):
        self._add("bef", pnr=pnr, koen=1 if sex == "M" else 2, foed_dag=born, region=region)
        return self

    def death(self, pnr, day, cause="DR99"):
        self._add("dod", pnr=pnr, doddato=day)
        self._add("dodsaarsag", pnr=pnr, doddato=day, c_dodtilgrundl=cause)
        return self

    def move(self, pnr, kind, day):
        self._add("vnds", pnr=pnr, indud_kode=kind, haend_dato=day)
        return self

    def contact(self, pnr, day, adiag, pattype=0, secondary=(), days=1, sgh=1301):
        self._rec += 1
        import numpy as np

        out = str(np.datetime64(day) + days)
        self._add("lpr_adm", pnr=pnr, recnum=self._rec, d_inddto=day, d_uddto=out,
                  c_pattype=pattype, c_adiag=adiag, c_sgh=sgh)
        self._add("lpr_diag", recnum=self._rec, c_diag=adiag, c_diagtype="A")
        for b in secondary:
            self._add("lpr_diag", recnum=self._rec, c_diag=b, c_diagtype="B")
        return self

    def rx(self, pnr, day, atc, apk=1, packsize=100, volume=100.0):
        self._add("lmdb", pnr=pnr, eksd=day, atc=atc, apk=apk, packsize=packsize,
                  volume=volume)
        return self

    def write(self, out, partitions=2):
        write_tables(out, self.t, partitions)
        return out
