"""Write the Markdown summary of the latest `make bench` run into benchmarks/RESULTS.md
(between the bench:start / bench:end markers; the hand-written history below stays) and the
run's records into results/latest.json.

    python benchmarks/summarize.py [--run RUN_ID] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import records

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
GOALS = {"cox_vs_lifelines": 20.0, "step_over_read_X": 3.0}


def load(run: str | None) -> tuple[str, list[dict]]:
    recs = []
    for f in sorted(records.RESULTS_DIR.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():   # a record without its benchmark's name is its file's
                recs.append({"benchmark": f.stem, **json.loads(line)})
    runs = sorted({r["run"] for r in recs if "run" in r})
    if not runs:
        raise SystemExit("summarize: no records with a run id in " + str(records.RESULTS_DIR))
    run = run or runs[-1]
    # a benchmark this run did not take (a script run alone) is shown from the latest earlier
    # run that took it, and the summary says from which
    have = {r["benchmark"] for r in recs if r.get("run") == run}
    source = {b: run for b in have}
    for r in recs:
        b = r.get("benchmark")
        if b not in have and r.get("run") and r["run"] <= run and r["run"] > source.get(b, ""):
            source[b] = r["run"]
    # a script re-run within the run (after a fix) replaces its earlier records of the same case
    latest: dict = {}
    for r in recs:
        if r.get("run") is not None and r["run"] == source.get(r.get("benchmark")):
            latest[identity(r)] = r
    return run, list(latest.values())


IDENTITY = ("benchmark", "what", "model", "ties", "n", "p", "persons", "event_fraction",
            "times", "outcome_mean", "device", "study", "relaid_copy")


def identity(r) -> tuple:
    """What a record measures: its case and the peers it was compared with (one shape may be
    taken once against lifelines and once against statsmodels in one run)."""
    peers = sorted({k.rsplit("_", 1)[0] for k in r if k.endswith(("_agreement", "_note"))})
    return tuple(str(r.get(k)) for k in IDENTITY) + tuple(peers)


def fmt(s, unit="s", digits=3):
    if not s:
        return "–"
    f = f"{{:.{digits}g}}"
    return f"{f.format(s['median'])} {unit} ({f.format(s['min'])}–{f.format(s['max'])})".strip()


def header(run, recs) -> list[str]:
    own = [r for r in recs if r.get("run") == run]
    r0 = own[0]
    m = r0["machine"]
    loads = [r.get("load_before_bench") for r in own if r.get("load_before_bench") is not None]
    starts = [r["load_at_start"] for r in own]
    before = loads[0] if loads else min(starts)
    out = [f"Run `{run}` at commit `{r0['commit']}`, {r0['date'][:10]}; {m['cores']} cores "
           f"({m['cpu']}), {m['memory_gib']} GiB, Python {m['python']}, NumPy {m['numpy']}. "
           f"Load average before the run: {before:.2f}; at the start of each script "
           f"{min(starts):.2f}–{max(starts):.2f}.", ""]
    older: dict = {}
    for r in recs:
        if r.get("run") != run:
            older.setdefault(r["run"], set()).add(r["benchmark"])
    for other, names in sorted(older.items()):
        out += [f"Not re-taken in this run, shown from run `{other}` (its records name their "
                "commit): " + ", ".join(sorted(names)) + ".", ""]
    if before > 1:
        out += [f"**Noisy:** the load average was {before:.2f} (> 1) before the run started: "
                "other processes shared this machine, so absolute times are inflated and vary; "
                "ratios from interleaved runs are less affected. Re-run `make bench` on a quiet "
                "machine for figures to quote.", ""]
    return out


def example1(r) -> bool:
    """Records of example 1 (those taken before `--study` existed name no study)."""
    return r.get("study", "statins_mi") == "statins_mi"


def cohort(recs) -> list[str]:
    rows = [r for r in recs if r["benchmark"] == "cohort_peers" and example1(r)]
    others = [r for r in recs if r["benchmark"] == "cohort_peers" and not example1(r)]
    out = []
    for study in sorted({r["study"] for r in others}):
        out += cohort_table([r for r in others if r["study"] == study],
                            f"### Cohort building, {study} (cohort_peers.py --study {study})")
    if not rows:
        return out
    return cohort_table(rows, "### Cohort building, example 1 (cohort_peers.py)") + out


def cohort_table(rows, title) -> list[str]:
    out = [title, "",
           "| persons | tool | wall | CPU | cores busy | load | peak RSS | rows / events / PY |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for tool in ("hpcstudy", "duckdb", "polars", "pandas"):
            if tool not in r:
                continue
            t = r[tool]
            load = f"{t['load']['median']:.1f}" if t.get("load") else "–"
            out.append(f"| {r['persons']:,} | {tool} | {fmt(t['wall_s'])} | {fmt(t['cpu_s'])} | "
                       f"{t['cores_busy']['median']:.2f} | {load} | "
                       f"{fmt(t['peak_rss_mib'], 'MiB', 4)} | "
                       f"{r['cohort_rows']:,} / {r['events']:,} / {r['person_years']:,.0f} |")
    out += ["", "Every peer's per-person table equalled hpcstudy's row for row before these "
            "times were recorded. hpcstudy's time includes its analyses and outputs.", ""]
    for r in rows:
        ratios = ", ".join(f"{k.split('_over_')[1].replace('_wall', '')} {v}×"
                           for k, v in r.items() if k.startswith("hpcstudy_over_")
                           and k.endswith("_wall"))
        cpu = ", ".join(f"{k.split('_over_')[1].replace('_cpu', '')} {v}×"
                        for k, v in r.items() if k.startswith("hpcstudy_over_")
                        and k.endswith("_cpu"))
        out.append(f"- {r['persons']:,} persons: hpcstudy's wall time over the peer's: {ratios}"
                   + (f"; CPU time: {cpu}" if cpu else "") + ".")
    big = max(rows, key=lambda r: r["persons"])
    peers = [k for k in ("duckdb", "polars") if k in big]
    if peers and example1(big):
        worst = max(big[f"hpcstudy_over_{k}_wall"] for k in peers)
        mem = big.get("hpcstudy_over_duckdb_peak_rss")
        out.append("- Goal (at least as fast as polars and DuckDB at the largest size, "
                   "peak memory no higher than DuckDB's): "
                   + ("**met** for time and memory" if worst <= 1 and (mem or 0) <= 1
                      else "**missed**")
                   + f" — hpcstudy's wall time is {worst}× the faster peer's and "
                   f"its peak memory {mem}× DuckDB's.")
        ours = big["hpcstudy"]
        if ours.get("load"):
            out.append(f"- Cores busy (CPU / wall) at {big['persons']:,} persons: hpcstudy "
                       f"{ours['cores_busy']['median']:.2f}, "
                       + ", ".join(f"{k} {big[k]['cores_busy']['median']:.2f}" for k in peers)
                       + f", under a load average of {ours['load']['median']:.1f} on "
                       f"{big['machine']['cores']} cores: a share of a shared machine, not "
                       "what the tool would use alone, so 'both cores busy' is not shown here.")
    out.append("")
    return out


def scaling(recs) -> list[str]:
    rows = [r for r in recs if r["benchmark"] == "scaling" and example1(r)]
    if not rows:
        return []
    r = rows[-1]
    pts = "; ".join(f"{p['persons']:,}: {fmt(p['wall_s'])}, CPU {fmt(p['cpu_s'])}, "
                    f"{p['peak_rss_mib']['median']:.0f} MiB" for p in r["points"])
    # CPU time's slope too: under load, wall time is a share of the machine
    cpu = _slope([(p["persons"], p["cpu_s"]["median"]) for p in r["points"]])
    return ["### Scaling, `hpcstudy run` example 1", "", f"{pts}. Fitted slope of log time "
            f"against log persons: **{r['slope_log_time_vs_log_persons']}** (1 = linear); "
            f"of log CPU time: {cpu:.3f}.", ""]


def _slope(points) -> float:
    """Least-squares slope of log y on log x."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / \
        sum((a - mx) ** 2 for a in xs)


def models(recs) -> list[str]:
    cox = [r for r in recs if r["benchmark"] == "cox_peers"]
    glm = [r for r in recs if r["benchmark"] == "glm_peers"]
    out = []
    if cox:
        out += ["### Cox fits (cox_peers.py)", "",
                "| ties | N | p | events | times (distinct) | hpcstudy warm | cold | lifelines "
                "| statsmodels | × lifelines (cold) | × lifelines by CPU (cold) | × statsmodels |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in cox:
            ll = r.get("speedup_vs_lifelines")
            ll_text = f"{ll}× ({r['speedup_vs_lifelines_cold']}×)" if ll else "–"
            sm = r.get("speedup_vs_statsmodels")
            llc = r.get("speedup_vs_lifelines_cpu")
            ll_cpu = f"{llc}× ({r['speedup_vs_lifelines_cold_cpu']}×)" if llc else "–"
            out.append(
                f"| {r['ties']} | {r['n']:,} | {r['p']} | {r['event_fraction']:.0%} | "
                f"{r['times']} ({r['distinct_event_times']:,}) | {fmt(r['hpcstudy_s'])} | "
                f"{r['hpcstudy_cold_s']:.3g} s | {fmt(r.get('lifelines_s'))} | "
                f"{fmt(r.get('statsmodels_s'))} | {ll_text} | {ll_cpu} | "
                f"{f'{sm}×' if sm else '–'} |")
        goal = [r for r in cox if r["ties"] == "efron" and r["n"] == 1_000_000 and r["p"] == 10
                and r.get("speedup_vs_lifelines")]
        if goal:
            warm = min(r["speedup_vs_lifelines"] for r in goal)
            cold = min(r["speedup_vs_lifelines_cold"] for r in goal)
            g = GOALS["cox_vs_lifelines"]
            out += ["", f"- Goal (Efron, N = 1e6, p = 10, every shape, ≥ {g:g}× lifelines, cold "
                    f"included): worst shape {warm}× warm, {cold}× cold — " +
                    ("**met**" if min(warm, cold) >= g else
                     f"**missed** by {g / min(warm, cold):.1f}×") + "."]
            by_cpu = [r for r in goal if r.get("speedup_vs_lifelines_cpu")]
            if by_cpu:
                warm = min(r["speedup_vs_lifelines_cpu"] for r in by_cpu)
                cold = min(r["speedup_vs_lifelines_cold_cpu"] for r in by_cpu)
                out.append(f"- By CPU time (user + system): worst shape {warm}× warm, {cold}× "
                           "cold — " + ("**met**" if min(warm, cold) >= g else
                                        f"**missed** by {g / min(warm, cold):.1f}×") + ".")
        out.append("")
    if glm:
        out += ["### Logistic and Poisson fits (glm_peers.py)", "",
                "| model | N | p | outcome mean | hpcstudy warm | cold | scikit-learn | "
                "statsmodels | × sklearn | × statsmodels |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in glm:
            out.append(f"| {r['model']} | {r['n']:,} | {r['p']} | {r['outcome_mean']} | "
                       f"{fmt(r['hpcstudy_s'])} | {r['hpcstudy_cold_s']:.3g} s | "
                       f"{fmt(r.get('sklearn_s'))} | {fmt(r.get('statsmodels_s'))} | "
                       f"{r.get('speedup_vs_sklearn', '–')} | "
                       f"{r.get('speedup_vs_statsmodels', '–')} |")
        big = [r for r in glm if r["n"] == 1_000_000]
        if big:
            worst = min(min(r.get("speedup_vs_sklearn", 0), r.get("speedup_vs_statsmodels", 0))
                        for r in big)
            out += ["", "- Goal (N = 1e6: at least as fast as scikit-learn and statsmodels): "
                    f"worst ratio {worst}× — " + ("**met**" if worst >= 1 else
                                                  f"**missed** by {1 / worst:.1f}×") + "."]
        out.append("")
    return out


def physical(recs) -> list[str]:
    rows = [r for r in recs if r["benchmark"] == "physical"]
    if not rows:
        return []
    out = ["### The physical limit (physical.py)", ""]
    for r in rows:
        if r["what"] == "memory bandwidth":
            out.append(f"- Memory bandwidth: copy {fmt(r['copy_gb_s'], 'GB/s')} (bytes read + "
                       f"written), read {fmt(r['read_gb_s'], 'GB/s')} ({r['array_mib']} MiB).")
    for r in (r for r in recs if r["benchmark"] == "cohort_peers" and example1(r)):
        out.append(f"- Engine at {r['persons']:,} persons: {r['decoded_bytes'] / 1e6:,.0f} MB "
                   f"of decoded Parquet ({r['parquet_bytes'] / 1e6:,.0f} MB on disk) in "
                   f"{r['hpcstudy']['wall_s']['median']:.1f} s = "
                   f"{r['hpcstudy_decoded_bytes_per_s'] / 1e6:,.0f} MB/s.")
    cox = [r for r in rows if r["what"] == "cox parts"]
    if cox:
        how = (f"the compiled C passes on {cox[0].get('threads', 1)} thread(s); risk is "
               "computed inside pass 1" if cox[0].get("compiled") else "the NumPy passes")
        out += ["", "Cox fit at N = {:,}, p = {} taken apart (medians; read X = one pass "
                "over the covariates; {}):".format(cox[0]["n"], cox[0]["p"], how), "",
                "| shape | ties | read X | prepare (once) | risk | pass 1 | grid terms | pass 2 "
                "| step / read X | by CPU | fit | evaluations |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in cox:
            p = r["parts_s"]
            route = f" ({r['route']})" if r.get("route") else ""   # one pass or two per step
            if r.get("relaid_copy"):   # physical.py --relayout: the fit's re-laid copy of X
                route = route[:-1] + ", re-laid copy)" if route else " (re-laid copy)"
            out.append(f"| {r['event_fraction']:.0%}, {r['times']}{route} | {r['ties']} | "
                       + " | ".join(f"{p[k]['median'] * 1e3:.1f} ms" if k in p else
                                    "in pass 1" for k in
                                    ("read_X", "prepare", "risk", "pass1", "grid_terms",
                                     "pass2"))
                       + f" | {r['step_over_read_X']}× | "
                       f"{r.get('step_over_read_X_cpu', '–')}× | {p['fit']['median']:.3f} s | "
                       f"{r['newton_evaluations']} |")
        g = GOALS["step_over_read_X"]
        out.append("")
        for key, what in (("step_over_read_X", "wall"), ("step_over_read_X_cpu", "CPU")):
            got = [r[key] for r in cox if key in r and not r.get("relaid_copy")]
            if got:
                worst = max(got)
                out += [f"- Goal (a Newton step within {g:g}× the time to read X), by {what} "
                        f"time: worst {worst}× — " +
                        ("**met**" if worst <= g else f"**missed** by {worst / g:.1f}×") + "."]
    out.append("")
    return out


def gpu(recs) -> list[str]:
    rows = [r for r in recs if r["benchmark"] == "gpu_models"]
    if not rows:
        return []
    if rows[0].get("skipped"):
        return ["### GPU", "", f"Skipped: no GPU on this machine ({rows[0]['skipped']}).", ""]
    out = ["### GPU (gpu_models.py)", "",
           "| device | model | N | GPU warm | cold | CPU | CPU / GPU |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['device']} | {r['model']} | {r['n']:,} | {fmt(r['gpu_s'])} | "
                   f"{r['gpu_cold_s']:.3g} s | {fmt(r['cpu_s'])} | {r.get('cpu_over_gpu', '–')} |")
    return out + [""]


def render(run, recs) -> str:
    lines = ["## Latest `make bench`", "", *header(run, recs), *cohort(recs), *scaling(recs),
             *models(recs), *physical(recs), *gpu(recs)]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "RESULTS.md")
    a = ap.parse_args()
    run, recs = load(a.run)
    text = render(run, recs)
    old = a.out.read_text() if a.out.exists() else ""
    if START in old and END in old:
        new = old[:old.index(START) + len(START)] + "\n" + text + old[old.index(END):]
    elif old.startswith("# "):
        head, _, rest = old.partition("\n")
        new = f"{head}\n\n{START}\n{text}{END}\n{rest}"
    else:
        new = f"# Benchmark figures\n\n{START}\n{text}{END}\n{old}"
    a.out.write_text(new)
    (records.RESULTS_DIR / "latest.json").write_text(json.dumps(
        {"run": run, "records": recs}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
