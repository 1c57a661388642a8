"""The comparative design for the reference engine, in pandas, sharing no code with the partition
engine's steps: people in both arms, the propensity score (scikit-learn), trimming, matching,
weighting and stratification. The engines are tested to agree on every step."""

from __future__ import annotations

import pandas as pd


def both_arms(table: pd.DataFrame, attrition: dict, labels: dict[int, str],
              mode: str) -> pd.DataFrame:
    """``comparator.both_arms`` on the whole table; appends the attrition step per arm."""
    if mode == "keep":
        return table
    arms_of = table.groupby("pnr")["group"].nunique()
    twice = set(arms_of[arms_of > 1].index)
    if mode == "remove":
        out = table[~table["pnr"].isin(twice)]
        step = "not also in the other arm"
    else:
        dup = table[table["pnr"].isin(twice)]
        first = dup.groupby("pnr")["index_date"].transform("min")
        same_day = dup.groupby("pnr")["index_date"].transform("nunique") == 1
        winners = dup[(dup["index_date"] == first) & ~same_day]
        out = pd.concat([table[~table["pnr"].isin(twice)], winners])
        step = "in the arm entered first"
    for code, label in labels.items():
        attrition[label].append((step, int((out["group"] == code).sum())))
    return out
