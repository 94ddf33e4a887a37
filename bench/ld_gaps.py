"""The denominator of every normalised score of a cell, |LD_contrast - LD_normal| (the `min_ld_gap`
guard compares it with its floor), for some models and cells, without running their attribution.

    python -m bench.ld_gaps --model gemma3-270m=results/models/gemma3-270m \\
        --datasets results/datasets --cell addition:setting1_nmax9_offset1:4 --max-examples 24

Prints one row per model and cell: prompts kept, mean LD of the normal and contrast prompts, the gap,
and whether the default floor (0.5 logits) refuses it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    from fi.engine.models import load_model
    from fi.engine.pairs import build_patching_data
    from fi.engine.patching import build_cache
    from fi.io import read_jsonl
    from fi.plan.tasks import get_family

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH of a model folder")
    ap.add_argument("--cell", action="append", required=True, help="TASK:VARIANT:SHOTS")
    ap.add_argument("--datasets", default="results/datasets", help="folder of the workflow's datasets")
    ap.add_argument("--max-examples", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--floor", type=float, default=0.5)
    args = ap.parse_args()
    print("| model | cell | prompts | LD normal | LD contrast | gap | below the floor |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in args.model:
        name, path = spec.split("=", 1)
        loaded = load_model(name, path=path, device="cpu")
        for cell in args.cell:
            task, variant, shots = cell.split(":")
            family = get_family(task)
            v = family.parse_variant(variant)
            records = read_jsonl(Path(args.datasets) / task / f"{variant}.jsonl")
            data = build_patching_data(loaded, family, v, records, int(shots), args.max_examples)
            cache = build_cache(loaded, data, batch_size=args.batch_size)
            gap = abs(cache.mean_ld_contrast - cache.mean_ld_normal)
            print(f"| {name} | {task} {variant} {shots} shots | {data.size} | {cache.mean_ld_normal:.3f} | "
                  f"{cache.mean_ld_contrast:.3f} | {gap:.3f} | {'yes' if gap < args.floor else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
