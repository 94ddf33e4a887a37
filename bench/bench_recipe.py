"""Does the built-in model's recipe learn both functions with margin, whatever the seed and the
machine's float rounding? Trains the recipe of a config's built-in model (default: config.yaml's
fi-toy) at several seeds and under numerical perturbation, then scores every cell the default grid
scores at 8 and 16 shots, side by side in one run.

Runs:
  seed s, --threads t   for every s in --seeds and t in --threads (1 vs 2 threads changes the float
                        reduction order of every matmul)
  data_seed             seed --seeds[0] with another data seed (`train.data_seed`): the same
                        initialisation, other batches in another order
Per run: seconds and steps/s, the cipher's (letter_shift) training loss at 60% of the steps (mean of
the logged steps in [55%, 65%]) and at the end, and the lowest cf_acc over addition (settings
normal / setting1 / setting2, nmax 9, k = +-1, +-2) and over the one-letter cipher (k = +-1, +-2) at
8 and 16 shots, and the copy accuracy (k = 0) of both. PASS when every lowest accuracy is >= --bar.

    OMP_WAIT_POLICY=PASSIVE python -m bench.bench_recipe [--config config.yaml] [--model fi-toy]
        [--seeds 0 1 2] [--threads 1 2] [--bar 0.95] [--set steps=1200 lr=0.003 ...]

`--timing N` instead times the recipe with --set against the config's own, side by side: N steps
of each, alternating, --rounds times, at the first --threads; prints the best seconds per step of
each and the whole training's estimated seconds (steps x seconds per step) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fi.build.training import train_model
from fi.engine.models import load_model
from fi.methods.evaluation import evaluate_task
from fi.plan.config import validate_config
from fi.plan.tasks import get_family

REPO = Path(__file__).resolve().parents[1]
SHOTS = (8, 16)
CELLS = ([("addition", f"{s}_nmax9_offset{k}") for s in ("normal", "setting1", "setting2") for k in (-2, -1, 0, 1, 2)]
         + [("cipher", f"maxlen1_offset{k}") for k in (-2, -1, 0, 1, 2)])


def train_cfg(config: str, model: str, overrides: list[str]) -> dict:
    cfg = yaml.safe_load(Path(config).read_text())
    validate_config(cfg, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    train = dict(cfg["models"][model]["train"])
    for item in overrides:
        key, value = item.split("=", 1)
        train[key] = yaml.safe_load(value)
    train["checkpoints"] = []  # the bench needs the final weights only
    return train


def score(path: Path, batch_size: int = 100) -> pd.DataFrame:
    loaded = load_model("recipe", path=str(path), device="cpu")
    rows = []
    for task, variant in CELLS:
        family = get_family(task)
        v = family.parse_variant(variant)
        records = family.generate(v, {"n_examples": 100, "n_demos": 32, "seed": 42})
        for shots in SHOTS:
            df = evaluate_task(loaded, family, v, records, shots, batch_size=batch_size)
            rows.append({"task": task, "variant": variant, "offset": v.fields["offset"], "shots": shots,
                         "cf_acc": float(df["cf_correct"].mean()), "orig_acc": float(df["orig_correct"].mean())})
    return pd.DataFrame(rows)


def one_run(name: str, train: dict, threads: int, bar: float, curves: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        curve = train_model(train, Path(tmp) / "m", threads=threads, progress=False)
        if curves is not None:
            curves.mkdir(parents=True, exist_ok=True)
            curve.to_csv(curves / f"{name.replace('/', '_')}.csv", index=False)
        seconds = time.perf_counter() - t0
        torch.set_num_threads(threads)
        acc = score(Path(tmp) / "m")
    steps = train["steps"]
    window = curve[(curve["step"] >= 0.55 * steps) & (curve["step"] <= 0.65 * steps)]
    shifted = acc[acc["offset"] != 0]
    low = {f"min_{t}": float(shifted[shifted["task"] == t]["cf_acc"].min()) for t in ("addition", "cipher")}
    copy = {f"copy_{t}": float(acc[(acc["offset"] == 0) & (acc["task"] == t)]["cf_acc"].min())
            for t in ("addition", "cipher")}
    worst = acc.loc[shifted["cf_acc"].idxmin()] if len(shifted) else None
    out = {"run": name, "seed": train["seed"], "data_seed": train.get("data_seed"), "threads": threads,
           "seconds": round(seconds, 1), "steps_per_s": round(steps / seconds, 2),
           "cipher_loss_60pct": float(window["loss_letter_shift"].mean()) if "loss_letter_shift" in window else None,
           "cipher_loss_end": float(curve["loss_letter_shift"].iloc[-1]) if "loss_letter_shift" in curve else None,
           **low, **copy,
           "worst_cell": f"{worst['variant']} {int(worst['shots'])} shots" if worst is not None else ""}
    out["pass"] = all(v >= bar for v in (*low.values(), *copy.values()))
    return out


def timing(config_recipe: dict, new_recipe: dict, steps: int, rounds: int, threads: int) -> None:
    recipes = {"config.yaml's recipe": config_recipe, "with --set": new_recipe}
    best = {name: float("inf") for name in recipes}
    for _ in range(rounds):
        for name, train in recipes.items():
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                # the learning-rate schedule is cut short; the cost of a step is what is timed
                train_model({**train, "steps": steps}, Path(tmp) / "m", threads=threads, progress=False)
                best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    whole = {name: best[name] * recipes[name]["steps"] for name in recipes}
    for name, train in recipes.items():
        print(f"{name}: {1 / best[name]:.2f} steps/s, {train['steps']} steps: {whole[name]:.0f} s")
    print(f"whole training, with --set / config.yaml's: {whole['with --set'] / whole[next(iter(recipes))]:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "config.yaml"))
    ap.add_argument("--model", default="fi-toy")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-data-seed", action="store_true", help="skip the other-data-order run")
    ap.add_argument("--bar", type=float, default=0.95)
    ap.add_argument("--set", nargs="*", default=[], help="train overrides, key=value (YAML values)")
    ap.add_argument("--out", default=None, help="also write the table as CSV here")
    ap.add_argument("--curves", default=None, help="write each run's training curve as CSV into this folder")
    ap.add_argument("--timing", type=int, default=0, help="time N steps of each recipe instead (see above)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = train_cfg(args.config, args.model, args.set)
    if args.timing:
        return timing(train_cfg(args.config, args.model, []), base, args.timing, args.rounds, args.threads[0])
    print(f"recipe ({args.config} {args.model}{' + ' + ' '.join(args.set) if args.set else ''}): "
          f"{ {k: v for k, v in base.items() if k != 'checkpoints'} }", flush=True)
    runs = [(f"seed{s}/t{t}", {**base, "seed": s}, t) for s in args.seeds for t in args.threads]
    if not args.no_data_seed:
        runs.append((f"seed{args.seeds[0]}/data_seed", {**base, "seed": args.seeds[0],
                                                         "data_seed": args.seeds[0] + 1000}, args.threads[0]))
    rows = []
    for name, train, threads in runs:
        rows.append(one_run(name, train, threads, args.bar, Path(args.curves) if args.curves else None))
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"\n{int(table['pass'].sum())} of {len(table)} runs reach {args.bar} on every cell "
          f"(lowest addition {table['min_addition'].min():.2f}, cipher {table['min_cipher'].min():.2f}, "
          f"copy {min(table['copy_addition'].min(), table['copy_cipher'].min()):.2f}); "
          f"cipher loss at 60% of the steps: max {table['cipher_loss_60pct'].max():.3f}")


if __name__ == "__main__":
    main()
