"""One function per Snakemake rule. Each takes plain arguments (paths, dicts), so every stage runs
and is tested without Snakemake; `from_snakemake` adapts a rule's `snakemake` object to it."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pandas as pd

from fi.io import read_jsonl, write_csv, write_jsonl, write_parquet
from fi.tasks import get_family

log = logging.getLogger("fi")


def make_dataset(task: str, variant: str, generation: dict, output: str) -> None:
    family = get_family(task)
    records = family.generate(family.parse_variant(variant), generation)
    write_jsonl(records, output)
    log.info("wrote %d records to %s", len(records), output)


def train_model(train: dict, output: str, threads: int | None = None) -> None:
    from fi.training import train_model as fit

    curve = fit(train, output, threads=threads)
    log.info("trained %d steps; final loss %.4f, answer-token accuracy %.3f", train["steps"],
             curve["loss"].iloc[-1], curve["token_acc"].iloc[-1])


def evaluate(model: dict, task: str, variant: str, shots: int, dataset: str, output: str,
             batch_size: int = 64, device: str = "auto", threads: int | None = None) -> pd.DataFrame:
    """Score one cell; writes per-example rows keyed by model, task, variant fields and shots."""
    import torch

    from fi.evaluation import evaluate_task
    from fi.models import load_model

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = load_model(model["name"], path=model["path"], dtype=model["dtype"], device=device)
    t1 = time.perf_counter()
    family = get_family(task)
    v = family.parse_variant(variant)
    df = evaluate_task(loaded, family, v, read_jsonl(dataset), int(shots), batch_size=batch_size)
    t2 = time.perf_counter()
    keys = {"model": model["name"], "task": task, "variant": variant, **v.fields, "shots": int(shots)}
    for i, (k, val) in enumerate(keys.items()):
        df.insert(i, k, val)
    write_parquet(df, output)
    log.info("%s %s %s shots=%s: cf_acc %.3f orig_acc %.3f (load %.1fs, eval %.1fs)", model["name"],
             task, variant, shots, df["cf_correct"].mean(), df["orig_correct"].mean(), t1 - t0, t2 - t1)
    return df


def aggregate(cells: list[str], table: str, paper: str, predictions: str) -> pd.DataFrame:
    from fi.tables import ACCURACIES, summarise_cell, to_paper_format

    per_example = pd.concat([pd.read_parquet(p) for p in cells], ignore_index=True)
    key_cols = [c for c in per_example.columns if c not in ("example", "normal_answer", "contrast_answer",
                "normal_pred", "contrast_pred", "normal_logit_diff", "contrast_logit_diff") and c not in ACCURACIES]
    rows = [summarise_cell(g, dict(zip(key_cols, k))) for k, g in
            per_example.groupby(key_cols, sort=False, dropna=False)]
    summary = pd.DataFrame(rows)
    summary.insert(0, "model_name", summary["model"])
    summary = summary.sort_values(key_cols, kind="stable").reset_index(drop=True)
    write_parquet(summary, table)
    write_csv(to_paper_format(summary), paper)
    write_parquet(per_example, predictions)
    log.info("aggregated %d cells (%d examples)", len(summary), len(per_example))
    return summary


def plot_accuracy(table: str, task: str, output: str, plots: dict) -> None:
    from fi.plots import plot_accuracy as plot

    df = pd.read_parquet(table)
    reference = None
    if plots.get("reference"):
        from fi.tables import from_paper_format

        reference = from_paper_format(pd.read_csv(plots["reference"]))
    plot(df[df["task"] == task], output, task=task, dpi=plots["dpi"], reference=reference)


# ---- Snakemake adapter --------------------------------------------------------------------------

def from_snakemake(snakemake, stage, **kwargs) -> None:
    """Run `stage` with the rule's log file as its stderr and logging target.

    Any error is logged (so the log names it) and re-raised, which makes
    Snakemake fail the job and delete its outputs; the stages write atomically, so nothing
    half-written is ever left in place."""
    log_path = snakemake.log[0] if snakemake.log else None
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "w", buffering=1)
        sys.stderr = stream
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    try:
        stage(**kwargs)
    except BaseException as err:
        # the traceback follows on the same stream when the exception leaves the script
        log.error("%s failed: %s: %s", getattr(stage, "__name__", stage), type(err).__name__, err)
        raise
