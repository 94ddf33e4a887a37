"""Training dynamics of the built-in model: clamping heads during training, and progress measures on
its checkpoints (issue 13; the reference is Singh et al. 2024, "What needs to go right for an
induction head?", and its "artificial optogenetics").

Clamping itself (what a `Clamp` is and how clamped steps run) lives in fi.engine.clamping. A clamped run's
checkpoints are measured through the same clamps (those active at the checkpoint's step,
fi.engine.clamping.active_at_checkpoint), so a head zeroed throughout training is measured zeroed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fi.plan.dynamics_runs import (  # noqa: F401
    REF_KINDS,
    Run,
    check_clamp_entry,
    checkpoint_steps,
    clamp_entries,
    needs_fi_heads,
    reference_steps,
    runs,
)

if TYPE_CHECKING:  # pandas is imported where it is used, to keep the DAG's planning light
    import pandas as pd

from fi.engine.clamping import KINDS, Clamp, ClampedForward, active_at_checkpoint, clamped, uniform_pattern  # noqa: F401
from fi.engine.interventions import pattern_hook, z_hook

SOURCE_NAMES = ("addition", "letter_shift", "repeated_tokens")


def heldout_losses(model, train: dict, n_seqs: int = 64, seed: int = 12345) -> dict[str, float]:
    """Mean answer-token loss per data source on a fixed held-out batch of that source alone (drawn
    with the run's own data settings from `seed`, the same batch for every checkpoint)."""
    from fi.build.training import make_batch

    out = {}
    for source in SOURCE_NAMES:
        cfg = dict(train, mix={s: float(s == source) for s in SOURCE_NAMES})
        tokens, mask = make_batch(random.Random(seed), cfg, model.tokenizer, n_seqs)
        with torch.no_grad():
            logits = model.bridge(tokens.to(model.device))[:, :-1].float()
        m = mask[:, 1:].to(logits.device)
        out[source] = float(torch.nn.functional.cross_entropy(logits[m], tokens[:, 1:].to(logits.device)[m]))
    return out


def query_attention_to_answers(model, data) -> torch.Tensor:
    """[layers, heads]: attention mass from the query's last prompt token (addition: the query's '=')
    to the demos' answer tokens, mean over the contrast prompts of `data` (fi.engine.pairs.PatchingData)."""
    names = {pattern_hook(layer) for layer in range(model.n_layers)}
    out = torch.zeros(model.n_layers, model.n_heads)
    for start in range(0, data.size, 32):
        chunk = data.subset(slice(start, start + 32))
        with torch.no_grad():
            _, cache = model.bridge.run_with_cache(chunk.contrast.to(model.device), names_filter=lambda h: h in names)
        rows = torch.arange(chunk.size)
        answers = chunk.groups["demo_answers"].to(model.device).float()  # [B, T]
        for layer in range(model.n_layers):
            pattern = cache[pattern_hook(layer)].float()  # [B, H, T, T]
            at_query = pattern[rows, :, chunk.last]  # [B, H, T]
            out[layer] += (at_query * answers[:, None]).sum(-1).sum(0).cpu()
    return out / data.size


def _unpatchable_heads(cache) -> torch.Tensor:
    """[layers, heads] bool: heads whose output (hook_z) is the same on the normal and the contrast
    prompt of every example at every position (a head a clamp zeroes): there is nothing to patch, so
    their path score is 0 by definition; computed, it would be float rounding (~1e-7: path patching's
    run 1 rebuilt against the contrast run)."""
    out = torch.ones(cache.n_layers, cache.n_heads, dtype=torch.bool)
    for normal, contrast in zip(cache.normal, cache.contrast):
        for layer in range(cache.n_layers):
            n, c = normal[z_hook(layer)], contrast[z_hook(layer)]
            out[layer] &= (n == c).flatten(end_dim=1).all(0).all(-1).cpu()
    return out


def progress_measures(checkpoint: str, train: dict, cells: list[dict], datasets: list[str], head_types: dict,
                      max_examples: int = 100, batch_size: int = 16, eval_batch_size: int = 64,
                      clamps: Sequence[Clamp] = ()) -> pd.DataFrame:
    """Every progress measure of one checkpoint folder, as long rows (measure, task, variant, shots,
    layer, head, value; layer = head = -1 for a model-level measure), every one of them through
    `clamps` (fi.engine.clamping.clamped: the clamped run's forward; column `clamps`, JSON, records them):
      heldout_loss_<source>   loss per data source on a fixed held-out batch (heldout_losses)
      cf_acc, orig_acc        on each cell (fi.methods.evaluation.evaluate_task)
      ld_normal, ld_contrast  the cell's mean logit differences (as attribution reports them)
      path_output             path patching to the output, normalised (the FI-head score, per head)
      attn_query_answers      attention from the query's '=' to the demos' answers (per head)
      previous_token_score, duplicate_token_score, induction_score (fi.methods.heads.head_type_scores)
    A head whose output is the same on the normal and contrast prompts (zeroed) has path score 0."""
    from fi.engine.models import load_model

    model = load_model(Path(checkpoint).name, path=str(checkpoint), device="cpu")
    with clamped(model, clamps):
        df = _measures(model, train, cells, datasets, head_types, max_examples, batch_size, eval_batch_size)
    df["clamps"] = json.dumps([c.describe() for c in clamps if c.heads])
    return df


def _measures(model, train, cells, datasets, head_types, max_examples, batch_size, eval_batch_size):
    import pandas as pd

    from fi.engine.pairs import build_patching_data
    from fi.engine.patching import Patcher
    from fi.io import read_jsonl
    from fi.methods.evaluation import evaluate_task
    from fi.methods.heads import head_type_scores
    from fi.plan.tasks import get_family

    rows = []

    def add(measure, value, cell=None, layer=-1, head=-1):
        c = cell or {"task": "", "variant": "", "shots": -1}
        rows.append({"measure": measure, "task": c["task"], "variant": c["variant"], "shots": int(c["shots"]),
                     "layer": int(layer), "head": int(head), "value": float(value)})

    for source, loss in heldout_losses(model, train).items():
        add(f"heldout_loss_{source}", loss)
    for cell, dataset in zip(cells, datasets):
        family = get_family(cell["task"])
        variant = family.parse_variant(cell["variant"])
        records = read_jsonl(dataset)
        scores = evaluate_task(model, family, variant, records, int(cell["shots"]), batch_size=eval_batch_size)
        add("cf_acc", scores["cf_correct"].mean(), cell)
        add("orig_acc", scores["orig_correct"].mean(), cell)
        data = build_patching_data(model, family, variant, records, int(cell["shots"]), max_examples)
        patcher = Patcher(model, data, batch_size=batch_size)
        add("ld_normal", patcher.ld_normal, cell)
        add("ld_contrast", patcher.ld_contrast, cell)
        path = patcher.path_patching()
        path[_unpatchable_heads(patcher.cache)] = 0.0
        for name, grid in (("path_output", path), ("attn_query_answers", query_attention_to_answers(model, data))):
            for layer in range(grid.shape[0]):
                for head in range(grid.shape[1]):
                    add(name, grid[layer, head], cell, layer, head)
    types = head_type_scores(model, **head_types)
    for r in types.itertuples():
        for k in ("previous_token_score", "duplicate_token_score", "induction_score"):
            add(k, getattr(r, k), None, r.layer, r.head)
    return pd.DataFrame(rows)


def formation_steps(table: pd.DataFrame, threshold: float, min_gap: float = 0.5) -> pd.DataFrame:
    """The step at which each head becomes an FI head, per run, seed and cell: the first checkpoint
    from which, at every later checkpoint, its path score to the output is <= -threshold (NaN: never).
    The normalised score divides by the cell's logit-difference gap (ld_normal - ld_contrast), which is
    ~0 before the model tells the two prompts apart: checkpoints with a gap below `min_gap` logits
    count as no head being an FI head (their scores are noise, e.g. -2.6 at step 50). `first_step` is
    the first valid checkpoint at which the score is <= -threshold at all."""
    import numpy as np
    import pandas as pd

    keys = ["model", "run", "seed", "task", "variant", "shots"]
    ld = table[table["measure"].isin(["ld_normal", "ld_contrast"])].pivot_table(
        index=keys + ["step"], columns="measure", values="value")
    gap = (ld["ld_normal"] - ld["ld_contrast"]).rename("gap").reset_index() if len(ld) else \
        pd.DataFrame(columns=keys + ["step", "gap"])
    path = table[table["measure"] == "path_output"].merge(gap, on=keys + ["step"], how="left")
    rows = []
    for key, g in path.groupby(keys + ["layer", "head"], sort=True):
        g = g.sort_values("step")
        valid = (g["gap"].fillna(np.inf) >= min_gap).to_numpy()
        is_fi = valid & (g["value"] <= -threshold).to_numpy()
        steps = g["step"].to_numpy()
        first = steps[is_fi][0] if is_fi.any() else np.nan
        stays = np.nan
        for i in range(len(steps)):
            if is_fi[i:].all():
                stays = steps[i]
                break
        rows.append(dict(zip(keys + ["layer", "head"], key), formation_step=stays, first_step=first,
                         final_score=float(g["value"].iloc[-1]), threshold=threshold, min_gap=min_gap))
    return pd.DataFrame(rows)


# ---- the stages ------------------------------------------------------------------------------------

def fi_heads_from_measures(measures: str, discovery: dict) -> list[list[int]]:
    """The FI heads of a run from its final checkpoint's measures: path scores to the output on the
    discovery cell, picked by the discovery criterion (as fi.stages.discover_heads picks them from
    the grid's attribution)."""
    import pandas as pd

    from fi.methods.heads import select_heads

    df = pd.read_parquet(measures)
    cell = discovery["cell"]
    sel = df[(df["measure"] == "path_output") & (df["task"] == cell["task"]) & (df["variant"] == cell["variant"])
             & (df["shots"] == int(cell["shots"]))]
    if sel.empty:
        raise ValueError(f"{measures}: no path scores for the discovery cell {cell}")
    chosen = select_heads(sel.rename(columns={"value": "score"})[["layer", "head", "score"]],
                          discovery["criterion"], discovery["top_k"], discovery["threshold"])
    return [[int(a), int(b)] for a, b in zip(chosen["layer"], chosen["head"])]


def train_run(train: dict, clamps: list[dict], output: str, baseline: str | None = None,
              fi_heads: str | None = None, fi_measures: str | None = None, discovery: dict | None = None,
              threads: int | None = None) -> None:
    """Train one dynamics run. `clamps` are config entries; heads 'fi' are the baseline's FI heads:
    the grid's (`fi_heads`, a results/heads/<model>.json) at the model's own seed, else picked from
    the seed's own baseline (`fi_measures`, its final checkpoint's measures, by the `discovery`
    criterion). With a `cell`, they are that cell's FI heads, picked the same way from `fi_measures`
    at every seed. A *_ref clamp's reference is the baseline's checkpoint at its `reference` step
    (null: the baseline's final model). The clamps as applied (heads resolved) are saved in the run
    folder as clamps.json, with each *_ref clamp's reference folder (`reference_path`), which the
    measures of the run's checkpoints apply them from (run_clamps)."""
    import logging

    from fi.build.training import checkpoint_dir, train_model
    from fi.io import write_json

    values, applied = [], []
    for entry in clamps:
        entry = dict(entry)
        if entry.get("heads") == "fi" and entry.get("cell"):  # that cell's FI heads in this seed's baseline
            entry["heads"] = fi_heads_from_measures(fi_measures, {**discovery, "cell": entry["cell"]})
        elif entry.get("heads") == "fi":
            entry["heads"] = (json.loads(Path(fi_heads).read_text())["heads"] if fi_heads
                              else fi_heads_from_measures(fi_measures, discovery))
        check_clamp_entry(entry, train, f"clamp {entry}")  # the resolved heads too
        reference = None
        if entry.get("kind", "zero") in REF_KINDS:
            step = entry.get("reference")
            reference = str(baseline if step is None else checkpoint_dir(baseline, step))
            entry["reference_path"] = reference
        values.append(Clamp.from_config(entry, reference))
        applied.append(entry)
    curve = train_model(train, output, threads=threads, progress=False, clamps=values)
    write_json(applied, str(Path(output) / "clamps.json"))
    logging.getLogger("fi").info("trained %s: %d steps, clamps %s, final loss %.4f", output, train["steps"],
                                 applied, curve["loss"].iloc[-1])


def run_clamps(run_dir: str) -> list[Clamp]:
    """The clamps a run was trained with, as applied (its clamps.json, heads resolved); none for a run
    without one (a baseline: the grid's model folder has none)."""
    path = Path(run_dir) / "clamps.json"
    if not path.exists():
        return []
    out = []
    for entry in json.loads(path.read_text()):
        if entry.get("kind", "zero") in REF_KINDS and not entry.get("reference_path"):
            raise ValueError(f"{path}: clamp {entry} has no reference_path (trained before the measures applied "
                             "clamps); retrain the run")
        out.append(Clamp.from_config(entry, entry.get("reference_path")))
    return out


def measure_checkpoint(run_dir: str, step: int, train: dict, cells: list[dict], datasets: list[str],
                       head_types: dict, params: dict, keys: dict, output: str) -> None:
    """The progress measures of a run's checkpoint at `step`, through the clamps active at that step
    (fi.engine.clamping.active_at_checkpoint: those covering training step `step`, the final checkpoint
    taking the last step's), recorded in the column `clamps`."""
    import logging
    import time

    from fi.build.training import checkpoint_dir
    from fi.io import write_parquet

    t0 = time.perf_counter()
    active = active_at_checkpoint(run_clamps(run_dir), step, train["steps"])
    df = progress_measures(str(checkpoint_dir(run_dir, step)), train, cells, datasets, head_types,
                           params["max_examples"], params["batch_size"], clamps=active)
    for i, (k, v) in enumerate({**keys, "step": int(step)}.items()):
        df.insert(i, k, v)
    df["seconds"] = time.perf_counter() - t0
    write_parquet(df, output)
    logging.getLogger("fi").info("%s step %d: %d measures in %.1fs, clamps %s", run_dir, step, len(df),
                                 df["seconds"].iloc[0], df["clamps"].iloc[0])


def formation_summary(table: pd.DataFrame, formation: pd.DataFrame) -> pd.DataFrame:
    """Per run and cell, over seeds: the step at which the run's first FI head forms (the earliest
    formation step of any head; NaN: none formed), its mean, min and max over the seeds where one
    formed, how many seeds formed one, which head it was at each seed, the shift of the mean from the
    baseline's, and the final checkpoint's cf_acc (mean, min, max)."""
    import numpy as np
    import pandas as pd

    keys = ["model", "run", "task", "variant", "shots"]
    per_seed = []
    for key, g in formation.groupby(keys + ["seed"], sort=True):
        formed = g.dropna(subset=["formation_step"]).sort_values(["formation_step", "final_score", "layer", "head"])
        first = formed.iloc[0] if len(formed) else None
        per_seed.append(dict(zip(keys + ["seed"], key),
                             step=float(first["formation_step"]) if first is not None else np.nan,
                             head=f"L{int(first['layer'])}H{int(first['head'])}" if first is not None else "-"))
    per_seed = pd.DataFrame(per_seed, columns=keys + ["seed", "step", "head"])
    acc = table[table["measure"] == "cf_acc"]
    last = acc[acc["step"] == acc.groupby(["model", "run", "seed"])["step"].transform("max")]
    rows = []
    for key, g in per_seed.groupby(keys, sort=True):
        a = last.merge(g[keys + ["seed"]], on=keys + ["seed"])["value"]
        steps = g["step"].dropna()
        rows.append(dict(zip(keys, key), n_seeds=len(g), n_formed=len(steps),
                         formation_mean=steps.mean() if len(steps) else np.nan,
                         formation_min=steps.min() if len(steps) else np.nan,
                         formation_max=steps.max() if len(steps) else np.nan,
                         fi_head_by_seed=", ".join(f"{s}:{h}" for s, h in zip(g["seed"], g["head"])),
                         final_cf_acc_mean=a.mean(), final_cf_acc_min=a.min(), final_cf_acc_max=a.max()))
    out = pd.DataFrame(rows)
    if len(out):
        base = out[out["run"] == "baseline"].set_index(["model", "task", "variant", "shots"])["formation_mean"]
        out["delay_vs_baseline"] = [r.formation_mean - base.get((r.model, r.task, r.variant, r.shots), np.nan)
                                    for r in out.itertuples()]
    return out


def aggregate_dynamics(measures: list[str], threshold: float, table: str, formation: str, summary: str,
                       min_gap: float = 0.5) -> None:
    import pandas as pd

    from fi.io import write_parquet

    df = pd.concat([pd.read_parquet(p) for p in measures], ignore_index=True)
    df = df.sort_values(["model", "run", "seed", "step", "measure", "task", "variant", "layer", "head"],
                        kind="stable").reset_index(drop=True)
    write_parquet(df, table, sources=measures)
    steps = formation_steps(df, threshold, min_gap)
    write_parquet(steps, formation, sources=measures)
    write_parquet(formation_summary(df, steps), summary, sources=measures)
