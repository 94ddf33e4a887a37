"""Aggregation of per-cell results into the grid's tables.

accuracy.parquet: one row per model x task x variant x shots with n, the accuracies and their Wilson
95% intervals. accuracy_paper_format.csv: the addition rows in exactly the paper's columns.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

PAPER_COLUMNS = ["model_name", "setting", "nmax", "offset", "n_icl_example", "cf_acc", "orig_acc"]
# per-example flag -> accuracy column in the table
ACCURACIES = {"cf_correct": "cf_acc", "orig_correct": "orig_acc", "normal_correct": "normal_acc",
              "normal_on_contrast_correct": "normal_on_contrast_acc"}


def wilson_interval(successes, n, z: float = 1.959963984540054):
    """Wilson score interval for a binomial proportion (vectorised); (nan, nan) where n == 0."""
    successes = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = successes / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return centre - half, centre + half


def summarise_cell(per_example: pd.DataFrame, keys: dict) -> dict:
    """One table row from a cell's per-example scores."""
    row = dict(keys)
    n = len(per_example)
    row["n"] = n
    for flag, col in ACCURACIES.items():
        k = int(per_example[flag].sum())
        lo, hi = wilson_interval(k, n)
        row[col] = k / n if n else math.nan
        row[f"{col}_lo"], row[f"{col}_hi"] = float(lo), float(hi)
    row["contrast_logit_diff"] = float(per_example["contrast_logit_diff"].mean())
    row["normal_logit_diff"] = float(per_example["normal_logit_diff"].mean())
    return row


def to_paper_format(table: pd.DataFrame) -> pd.DataFrame:
    """Addition rows in the paper's CSV columns (`model_name` is the configured model name)."""
    add = table[table["task"] == "addition"]
    out = pd.DataFrame({
        "model_name": add["model_name"], "setting": add["setting"], "nmax": add["nmax"].astype(int),
        "offset": add["offset"].astype(int), "n_icl_example": add["shots"].astype(int),
        "cf_acc": add["cf_acc"], "orig_acc": add["orig_acc"],
    })
    return out[PAPER_COLUMNS].reset_index(drop=True)


def from_paper_format(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's CSV (index column tolerated) in this project's column names."""
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"not a table in the paper's format: missing columns {missing}")
    out = df[PAPER_COLUMNS].rename(columns={"n_icl_example": "shots"}).copy()
    out["model"] = out["model_name"]
    out["task"] = "addition"
    return out
