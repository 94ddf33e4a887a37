"""Evaluation cells with one model load per cell against one load for all (fi.engine.models.ModelCache),
side by side in one run, alternating, on a local checkpoint folder (a real LM converted by the
real-LM config, e.g. results/models/gemma3-270m, or the built-in model).

Each pass evaluates the same `--cells` addition cells (setting1, nmax 9, offsets -2..2 and more,
`--examples` prompts, `--shots` shots) through `fi.stages.evaluate`, as the workflow's jobs do; the
"load per cell" pass gives every cell a fresh load (capacity 0), the "cached" pass one load for all.
Prints per-cell wall time of each and their ratio, and checks the tables are equal.

    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_model_cache --model results/models/gemma3-270m
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fi.engine.models
from fi import stages
from fi.engine.models import ModelCache
from fi.io import write_jsonl
from fi.plan.params import ModelSpec
from fi.plan.tasks import get_family


def one_pass(entry: ModelSpec, cells: list[tuple[str, Path]], out: Path, capacity: int, shots: int) -> tuple[float, list]:
    fi.engine.models.MODEL_CACHE = ModelCache(capacity=capacity)
    t0 = time.perf_counter()
    tables = [stages.evaluate(entry, "addition", variant, shots, str(data), str(out / f"{variant}.parquet"),
                              batch_size=32, device="cpu") for variant, data in cells]
    return time.perf_counter() - t0, tables


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a local checkpoint folder")
    ap.add_argument("--cells", type=int, default=6)
    ap.add_argument("--examples", type=int, default=20)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    family = get_family("addition")
    tmp = Path(tempfile.mkdtemp())
    offsets = [k for k in range(-6, 7) if k != 0][: args.cells]
    cells = []
    for k in offsets:
        variant = f"setting1_nmax9_offset{k}" if abs(k) <= 2 else f"setting1_nmax99_offset{k}"
        data = tmp / f"{variant}.jsonl"
        params = {"n_examples": args.examples, "n_demos": 32, "seed": 42}
        write_jsonl(family.generate(family.parse_variant(variant), params), data)
        cells.append((variant, data))
    entry = ModelSpec(Path(args.model).name, str(Path(args.model).resolve()))
    times = {"load per cell": [], "cached": []}
    results = {}
    for _ in range(args.rounds):
        for name, capacity in (("load per cell", 0), ("cached", 1)):
            out = tmp / name.replace(" ", "_")
            out.mkdir(exist_ok=True)
            seconds, tables = one_pass(entry, cells, out, capacity, args.shots)
            times[name].append(seconds)
            results[name] = tables
    for a, b in zip(results["load per cell"], results["cached"]):
        pd.testing.assert_frame_equal(a, b)
    per_cell = {name: min(t) / len(cells) for name, t in times.items()}
    print(f"{entry.name}: {len(cells)} cells of {args.examples} prompts at {args.shots} shots, {args.threads} threads, "
          f"best of {args.rounds}")
    for name, t in per_cell.items():
        print(f"  {name:14s} {t:7.2f} s a cell")
    print(f"  ratio {per_cell['load per cell'] / per_cell['cached']:.2f}x; tables equal")


if __name__ == "__main__":
    main()
