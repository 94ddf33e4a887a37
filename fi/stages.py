"""One function per Snakemake rule. Each takes plain arguments (paths, and the typed parameters of
fi.plan.params), so every stage runs and is tested without Snakemake; fi_workflow.jobs maps a rule's
job to its arguments."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from fi.io import progress, read_jsonl, write_csv, write_jsonl, write_parquet
from fi.plan.params import (
    AblationParams,
    AttributionParams,
    CircuitParams,
    DiscoveryParams,
    FunctionVectorParams,
    HeadTypeParams,
    HeldOut,
    ModelSpec,
    PlotParams,
)
from fi.plan.tasks import get_family

log = logging.getLogger("fi")


def make_dataset(task: str, variant: str, generation: dict, output: str) -> None:
    family = get_family(task)
    records = family.generate(family.parse_variant(variant), generation)
    write_jsonl(records, output)
    log.info("wrote %d records to %s", len(records), output)


def train_model(train: dict, output: str, threads: int | None = None) -> None:
    from fi.build.training import train_model as fit

    curve = fit(train, output, threads=threads)
    log.info("trained %d steps; final loss %.4f, answer-token accuracy %.3f", train["steps"],
             curve["loss"].iloc[-1], curve["token_acc"].iloc[-1])


def evaluate(model: ModelSpec, task: str, variant: str, shots: int, dataset: str, output: str,
             batch_size: int = 64, device: str = "auto") -> pd.DataFrame:
    """Score one cell; writes per-example rows keyed by model, task, variant fields and shots."""
    t0 = time.perf_counter()
    with model_in_use(model, device) as loaded:
        log.info("%s loaded in %.1fs", model.name, time.perf_counter() - t0)
        df = _evaluate_cell(loaded, model, task, variant, shots, dataset, batch_size)
        write_parquet(df, output)
        return df


def evaluate_task(model: ModelSpec, task: str, cells: list[tuple[str, int]], datasets: dict[str, str], output: str,
                  batch_size: int = 64, device: str = "auto") -> pd.DataFrame:
    """Score every (variant, shots) cell of one task family with one load of the model; writes their
    per-example rows, in the order of `cells`, as one table (the rows `evaluate` writes per cell)."""
    t0 = time.perf_counter()
    with model_in_use(model, device) as loaded:
        log.info("%s loaded in %.1fs; %d cells of %s", model.name, time.perf_counter() - t0, len(cells), task)
        df = pd.concat([_evaluate_cell(loaded, model, task, variant, shots, datasets[variant], batch_size)
                        for variant, shots in progress(cells, f"{task} cells")], ignore_index=True)
        write_parquet(df, output)
        return df


def _evaluate_cell(loaded, model: ModelSpec, task: str, variant: str, shots: int, dataset: str,
                   batch_size: int) -> pd.DataFrame:
    from fi.methods.evaluation import evaluate_task as score

    t0 = time.perf_counter()
    family = get_family(task)
    v = family.parse_variant(variant)
    df = score(loaded, family, v, read_jsonl(dataset), int(shots), batch_size=batch_size)
    keys = {"model": model.name, "task": task, "variant": variant, **v.fields, "shots": int(shots)}
    for i, (k, val) in enumerate(keys.items()):
        df.insert(i, k, val)
    log.info("%s %s %s shots=%s: cf_acc %.3f orig_acc %.3f (eval %.1fs)", model.name, task, variant, shots,
             df["cf_correct"].mean(), df["orig_correct"].mean(), time.perf_counter() - t0)
    return df


def aggregate(cells: list[str], table: str, paper: str, predictions: str) -> pd.DataFrame:
    from fi.report.tables import ACCURACIES, summarise_cell, to_paper_format

    per_example = pd.concat([pd.read_parquet(p) for p in cells], ignore_index=True)
    key_cols = [c for c in per_example.columns if c not in ("example", "normal_answer", "contrast_answer",
                "normal_pred", "contrast_pred", "normal_logit_diff", "contrast_logit_diff") and c not in ACCURACIES]
    rows = [summarise_cell(g, dict(zip(key_cols, k))) for k, g in
            per_example.groupby(key_cols, sort=False, dropna=False)]
    summary = pd.DataFrame(rows)
    summary.insert(0, "model_name", summary["model"])
    summary = summary.sort_values(key_cols, kind="stable").reset_index(drop=True)
    write_parquet(summary, table, sources=cells)
    write_csv(to_paper_format(summary), paper)
    write_parquet(per_example, predictions, sources=cells)
    log.info("aggregated %d cells (%d examples)", len(summary), len(per_example))
    return summary


def plot_accuracy(table: str, task: str, output: str, plots: PlotParams) -> None:
    from fi.report.plots import plot_accuracy as plot

    df = pd.read_parquet(table)
    reference = None
    if plots.reference:
        from fi.report.tables import from_paper_format

        reference = from_paper_format(pd.read_csv(plots.reference))
    plot(df[df["task"] == task], output, task=task, dpi=plots.dpi, reference=reference)


# ---- circuit discovery (issue: head attribution) --------------------------------------------------

@contextmanager
def model_in_use(model: ModelSpec, device: str):
    """The model entry's loaded model, for the duration of a job: from the process's model cache
    (`fi.engine.models.MODEL_CACHE`: jobs that share a process load each model once) and held alone (no
    other job hooks it meanwhile). torch's thread count is the process's: set by whoever runs the
    stage (fi_workflow.run for the workflow's jobs), not per stage."""
    from fi.engine.models import MODEL_CACHE

    with MODEL_CACHE.use(model.name, path=model.path, dtype=model.dtype, device=device) as loaded:
        yield loaded


def attribute(model: ModelSpec, task: str, variant: str, shots: int, dataset: str, output: str,
              attribution: AttributionParams, device: str = "auto") -> pd.DataFrame:
    """Every configured attribution method (fi.methods.attribution.METHODS) on one cell -> a long
    layer x head table."""
    from fi.engine.pairs import build_patching_data
    from fi.engine.patching import Patcher
    from fi.methods.attribution import attribution_table

    with model_in_use(model, device) as loaded:
        family = get_family(task)
        v = family.parse_variant(variant)
        data = build_patching_data(loaded, family, v, read_jsonl(dataset), int(shots), attribution.max_examples)
        t0 = time.perf_counter()
        patcher = Patcher(loaded, data, batch_size=attribution.batch_size)
        out = attribution_table(patcher, attribution)
        keys = {"model": model.name, "task": task, "variant": variant, **v.fields, "shots": int(shots)}
        for i, (k, val) in enumerate(keys.items()):
            out.insert(i, k, val)
        out["n_examples"] = data.size
        out["n_dropped"] = data.n_dropped
        out["ld_normal"] = patcher.ld_normal
        out["ld_contrast"] = patcher.ld_contrast
        write_parquet(out, output)
        log.info("%s %s %s shots=%s: %d examples (%d dropped), LD normal %.3f contrast %.3f, %.1fs",
                 model.name, task, variant, shots, data.size, data.n_dropped, patcher.ld_normal,
                 patcher.ld_contrast, time.perf_counter() - t0)
        return out


def head_types(model: ModelSpec, output: str, params: HeadTypeParams, device: str = "auto") -> pd.DataFrame:
    from fi.methods.heads import head_type_scores

    with model_in_use(model, device) as loaded:
        df = head_type_scores(loaded, **dataclasses.asdict(params))
        df.insert(0, "model", model.name)
        write_parquet(df, output)
        return df


def discover_heads(model: ModelSpec, output: str, discovery: DiscoveryParams, explicit: list | None = None,
                   attribution: str | None = None, dataset: str | None = None, min_ld_gap: float = 0.5,
                   device: str = "auto") -> dict:
    """The model's FI heads: explicit from config, or chosen from the discovery cell's scores; in both
    cases checked by patching them together from the normal prompt on the discovery cell and
    counting how often the model then gives the plain answer."""
    from fi.io import write_json
    from fi.methods.ablation import ablated_scores
    from fi.methods.heads import select_heads

    cell = dataclasses.asdict(discovery.cell)
    result = {"model": model.name, "cell": cell}
    if explicit:
        heads = sorted((int(a), int(b)) for a, b in explicit)
        result.update(source="config", heads=[list(h) for h in heads])
    else:
        scores = pd.read_parquet(attribution)
        check_ld_gap(f"{model.name}: FI-head discovery", cell, float(scores["ld_normal"].iloc[0]),
                     float(scores["ld_contrast"].iloc[0]), min_ld_gap)
        sel = scores[(scores["method"] == discovery.method) & (scores["receiver"] == "output")
                     & (scores["positions"] == "all")]
        chosen = select_heads(sel[["layer", "head", "score"]], discovery.criterion, discovery.top_k,
                              discovery.threshold)
        heads = [(int(r.layer), int(r.head)) for r in chosen.itertuples()]
        result.update(source="discovery", criterion=discovery.criterion, top_k=discovery.top_k,
                      threshold=discovery.threshold, method=discovery.method, heads=[list(h) for h in heads],
                      scores=sel.sort_values("score")[["layer", "head", "score"]].to_dict("records"))
    if dataset and heads:
        with model_in_use(model, device) as loaded:
            family = get_family(cell["task"])
            v = family.parse_variant(cell["variant"])
            df = ablated_scores(loaded, family, v, read_jsonl(dataset), int(cell["shots"]), heads, "patch")
            result["patched_gives_plain_answer"] = float(df["orig_correct"].mean())
            result["patched_gives_contrast_answer"] = float(df["cf_correct"].mean())
    write_json(result, output)
    log.info("%s: FI heads %s (%s)", model.name, heads, result["source"])
    return result


def ablate(model: ModelSpec, task: str, variant: str, shots: int, dataset: str, heads_file: str, output: str,
           ablation: AblationParams, batch_size: int = 64, device: str = "auto") -> pd.DataFrame:
    """The paper's four accuracies with no ablation, the FI heads ablated and random head sets of
    the same size ablated, for every configured mode."""

    from fi.methods.ablation import ablated_scores_many, random_head_sets
    from fi.report.tables import summarise_cell

    with model_in_use(model, device) as loaded:
        family = get_family(task)
        v = family.parse_variant(variant)
        records = read_jsonl(dataset)
        fi_heads = [tuple(h) for h in json.loads(Path(heads_file).read_text())["heads"]]
        sets = [("none", 0, [])]
        if fi_heads:
            sets.append(("fi", 0, fi_heads))
            randoms = random_head_sets(loaded.n_layers, loaded.n_heads, fi_heads, ablation.n_random,
                                       ablation.seed, ablation.layer_matched, exclude=fi_heads)
            sets += [("random", i, s) for i, s in enumerate(randoms)]
        keys = {"model": model.name, "task": task, "variant": variant, **v.fields, "shots": int(shots)}
        rows = []
        baseline = None
        for mode in ablation.modes:
            # the unablated scores are the same in every mode: scored with the first
            todo = [heads for kind, _, heads in sets if kind != "none" or baseline is None]
            scored = iter(ablated_scores_many(loaded, family, v, records, int(shots), todo, mode, batch_size))
            for kind, index, heads in sets:
                if kind == "none":
                    baseline = per_example = baseline if baseline is not None else next(scored)
                else:
                    per_example = next(scored)
                row = summarise_cell(per_example, {**keys, "mode": mode, "head_set": kind, "set_index": index,
                                                   "heads": json.dumps([list(h) for h in heads])})
                rows.append(row)
        out = pd.DataFrame(rows)
        write_parquet(out, output)
        log.info("%s %s %s shots=%s: %d head sets x %d modes", model.name, task, variant, shots, len(sets),
                 len(ablation.modes))
        return out


def aggregate_attribution(cells: list[str], head_types_files: list[str], heads_files: list[str], output: str,
                          min_ld_gap: float = 0.5) -> pd.DataFrame:
    """Every attribution cell's scores with the head types, the FI-head flag and the denominator
    guard: `ld_gap` (|LD_contrast - LD_normal|) and `low_ld_gap` (below min_ld_gap: scores are noise)."""
    table = pd.concat([pd.read_parquet(p) for p in cells], ignore_index=True)
    table["ld_gap"] = (table["ld_contrast"] - table["ld_normal"]).abs()
    table["low_ld_gap"] = table["ld_gap"] < min_ld_gap
    types = pd.concat([pd.read_parquet(p) for p in head_types_files], ignore_index=True)
    table = table.merge(types, on=["model", "layer", "head"], how="left")
    fi_heads = {(h["model"], a, b) for h in (json.loads(Path(p).read_text()) for p in heads_files)
                for a, b in h["heads"]}
    table["fi_head"] = [(m, a, b) in fi_heads for m, a, b in zip(table["model"], table["layer"], table["head"])]
    write_parquet(table, output, sources=cells + head_types_files)
    return table


def aggregate_ablation(cells: list[str], output: str) -> pd.DataFrame:
    table = pd.concat([pd.read_parquet(p) for p in cells], ignore_index=True)
    write_parquet(table, output, sources=cells)
    return table


def plot_heads(table: str, model_name: str, output: str, plots: PlotParams) -> None:
    from fi.report.plots import plot_head_heatmaps

    df = pd.read_parquet(table)
    plot_head_heatmaps(df[df["model"] == model_name], output, dpi=plots.dpi)


def plot_ablation(table: str, output: str, plots: PlotParams) -> None:
    from fi.report.plots import plot_task_generalization

    plot_task_generalization(pd.read_parquet(table), output, dpi=plots.dpi)


# ---- the circuit (issue: three head groups, circuit evaluation, cross-task overlap) ---------------

def _circuit_cache(loaded, task: str, variant: str, shots: int, records: list[dict], max_examples: int,
                   batch_size: int):
    from fi.engine.pairs import build_patching_data
    from fi.engine.patching import build_cache

    family = get_family(task)
    v = family.parse_variant(variant)
    data = build_patching_data(loaded, family, v, records, int(shots), max_examples)
    return build_cache(loaded, data, batch_size=batch_size), v


def ld_gap(ld_normal: float, ld_contrast: float) -> float:
    """|LD_contrast - LD_normal|, the denominator of every normalised score of a cell."""
    return abs(ld_contrast - ld_normal)


class LowGapError(ValueError):
    """A cell's normalised scores rest on too small a denominator to select heads by."""


def check_ld_gap(what: str, cell: dict, ld_normal: float, ld_contrast: float, min_ld_gap: float) -> None:
    """Refuse head selection on a cell whose LD gap is below the floor, naming cell and gap: a score
    threshold of 0.05 on a 0.1-logit gap is a 0.005-logit effect, and scores reach several units."""
    gap = ld_gap(ld_normal, ld_contrast)
    if gap < min_ld_gap:
        raise LowGapError(f"{what}: cell {cell['task']} {cell['variant']} shots={cell['shots']} has "
                          f"|LD_contrast - LD_normal| = {gap:.4f} logits (LD normal {ld_normal:.4f}, contrast "
                          f"{ld_contrast:.4f}), below min_ld_gap = {min_ld_gap}: its normalised scores are "
                          "noise. Choose a cell the model does (discovery.cell / attribution.cells, more shots "
                          "or prompts), give the heads in config, or lower min_ld_gap knowingly.")


def find_circuit(model: ModelSpec, task: str, variant: str, shots: int, dataset: str, output: str, circuit: CircuitParams,
                 explicit: dict | None = None, min_ld_gap: float = 0.5, device: str = "auto") -> dict:
    """The circuit of one cell: iterated path patching from the output down, the three head groups
    (or the groups given in config) and every circuit head's numbers (drawn by `draw_circuit`)."""
    from fi.io import write_json
    from fi.methods import circuit as fc

    t0 = time.perf_counter()
    with model_in_use(model, device) as loaded:
        cell = {"task": task, "variant": variant, "shots": int(shots)}
        cache, v = _circuit_cache(loaded, task, variant, shots, read_jsonl(dataset), circuit.max_examples,
                                  circuit.batch_size)
        if not explicit:
            check_ld_gap(f"{model.name}: circuit selection", cell, cache.mean_ld_normal, cache.mean_ld_contrast,
                         min_ld_gap)
        selection = circuit.selection
        stats = fc.attention_statistics(loaded, cache)
        edges, direct = fc.iterated_path_patching(loaded, cache, selection, circuit.depth, circuit.inputs)
        found = fc.classify(edges, stats, circuit.attention_threshold)
        gap = ld_gap(cache.mean_ld_normal, cache.mean_ld_contrast)
        result = {"model": model.name, "cell": cell,
                  "n_layers": loaded.n_layers, "n_heads": loaded.n_heads, "n_examples": cache.data.size,
                  "n_dropped": cache.data.n_dropped, "ld_normal": cache.mean_ld_normal,
                  "ld_contrast": cache.mean_ld_contrast, "ld_gap": gap, "low_ld_gap": gap < min_ld_gap,
                  "route": vars(cache.route),
                  "params": {"selection": vars(selection), "depth": circuit.depth, "inputs": list(circuit.inputs),
                             "attention_threshold": circuit.attention_threshold},
                  "source": "config" if explicit else "discovery",
                  "groups": explicit or found["groups"], "discovered_groups": found["groups"], "other": found["other"],
                  "positions": dict(fc.GROUP_POSITIONS),
                  "edges": [{**e.as_dict(), "tier": selection.tier(e.score)} for e in edges],
                  "heads": [{"layer": layer, "head": head, "direct_effect": float(direct[layer, head]),
                             **stats[(layer, head)]} for layer in range(loaded.n_layers) for head in range(loaded.n_heads)]}
        write_json(result, output)
        log.info("%s %s %s shots=%s: circuit %s (%.1fs)", model.name, task, variant, shots, result["groups"],
                 time.perf_counter() - t0)
        return result


def draw_circuit(model: ModelSpec, circuit_file: str, dataset: str, diagram: str, attention_plot: str,
                 attention_html: str, circuit: CircuitParams, device: str = "auto") -> None:
    """A found circuit's diagram and its heads' attention views (apart from `find_circuit`, so that a
    plot edit reruns no path patching)."""

    from fi.report.plots import plot_circuit

    found = json.loads(Path(circuit_file).read_text())
    plot_circuit(found, diagram)
    with model_in_use(model, device) as loaded:
        cell = found["cell"]
        cache, _ = _circuit_cache(loaded, cell["task"], cell["variant"], cell["shots"], read_jsonl(dataset),
                                  circuit.max_examples, circuit.batch_size)
        _attention_views(loaded, cache, found["groups"], attention_plot, attention_html)


def _attention_views(loaded, cache, groups: dict, static: str, html: str, n_prompts: int = 3) -> None:
    """The circuit heads' attention on the first contrast prompts: a static figure (one panel per
    group, first prompt) and an interactive CircuitsVis page (every circuit head, `n_prompts` prompts)."""
    import circuitsvis as cv
    import torch

    from fi.io import atomic_path
    from fi.methods.circuit import attention_patterns
    from fi.report.plots import plot_attention_by_group

    chunk = cache.chunks[0]
    store = attention_patterns(loaded, chunk.contrast)
    n = int(chunk.last[0]) + 1
    tokens = [loaded.tokenizer.decode([t]) for t in chunk.contrast[0, :n].tolist()]
    per_group = {}
    for g, heads in groups.items():
        mats = [store[a][0, b, :n, :n] for a, b in heads]
        per_group[g] = torch.stack(mats).mean(0).numpy() if mats else None
    plot_attention_by_group(tokens, per_group, static)
    heads = [(g, a, b) for g, hs in groups.items() for a, b in hs]
    parts = [f"<h1>{loaded.name}: circuit heads' attention</h1>"]
    for p in range(min(n_prompts, chunk.size)):
        m = int(chunk.last[p]) + 1
        toks = [loaded.tokenizer.decode([t]) for t in chunk.contrast[p, :m].tolist()]
        if heads:
            pats = torch.stack([store[a][p, b, :m, :m] for _, a, b in heads])
            names = [f"{g} L{a}H{b}" for g, a, b in heads]
            parts.append(f"<h2>prompt {p}</h2>" + str(cv.attention.attention_heads(attention=pats, tokens=toks,
                                                                                      attention_head_names=names)))
    with atomic_path(html) as tmp:
        Path(tmp).write_text("<html><body>" + "\n".join(parts) + "</body></html>")


def heldout_records(task: str, variant: str, generation: dict, heldout: HeldOut, used: list[dict]) -> list[dict]:
    """Prompts for the held-out evaluation: the cell's own recipe drawn with another seed
    (heldout.seed, or the dataset's seed + 1), `heldout.max_examples` of them, none equal to a record
    of the discovery dataset `used`."""
    family = get_family(task)
    seed = heldout.seed if heldout.seed is not None else generation["seed"] + 1
    if seed == generation["seed"]:
        raise ValueError(f"circuit.heldout.seed {seed} is the dataset's own seed: the held-out prompts would be "
                         "the discovery prompts")
    records = family.generate(family.parse_variant(variant),
                              {**generation, "seed": seed, "n_examples": heldout.max_examples})
    seen = {json.dumps(r, sort_keys=True) for r in used}
    return [r for r in records if json.dumps(r, sort_keys=True) not in seen]


def evaluate_circuit(model: ModelSpec, circuit_file: str, dataset: str, output: str, paper_json: str, circuit: CircuitParams,
                     generation: dict, min_ld_gap: float = 0.5, device: str = "auto") -> dict:
    """The circuit of `circuit_file` evaluated as the paper does: faithfulness F(C) in-sample (the
    discovery prompts) and held out (circuit.heldout: by default 16 shots on 100 fresh prompts, the
    paper's setting), and the completeness search and minimality on the held-out prompts."""
    from fi.io import write_json
    from fi.methods import circuit as fc

    t0 = time.perf_counter()
    found = json.loads(Path(circuit_file).read_text())
    cell = found["cell"]
    with model_in_use(model, device) as loaded:
        records = read_jsonl(dataset)
        heldout = circuit.heldout
        in_sample, _ = _circuit_cache(loaded, cell["task"], cell["variant"], cell["shots"], records,
                                      circuit.max_examples, circuit.batch_size)
        held, _ = _circuit_cache(loaded, cell["task"], cell["variant"], heldout.shots,
                                 heldout_records(cell["task"], cell["variant"], generation, heldout, records),
                                 heldout.max_examples, circuit.batch_size)
        groups = found["groups"]
        everything = {"everywhere": [[a, b] for a in range(loaded.n_layers) for b in range(loaded.n_heads)]}

        def faithfulness(cache) -> dict:
            # the circuit, the model, the empty set and each group alone: one stacked call
            named = [g for g, hs in groups.items() if hs]
            f_circuit, f_model, f_empty, *f_groups = fc.faithfulness_many(
                loaded, cache, [(fc.circuit_heads(groups), ()), (fc.circuit_heads(everything), ()), ([], ())]
                + [(fc.circuit_heads({g: groups[g]}), ()) for g in named])
            gap = ld_gap(cache.mean_ld_normal, cache.mean_ld_contrast)
            return {"circuit": f_circuit, "model": f_model, "empty": f_empty, "n_examples": cache.data.size,
                    "by_group": dict(zip(named, f_groups)),
                    "ld_normal": cache.mean_ld_normal, "ld_contrast": cache.mean_ld_contrast, "ld_gap": gap,
                    "low_ld_gap": gap < min_ld_gap}
        search = circuit.completeness
        completeness = fc.completeness_search(loaded, held, groups, search.rollouts, search.steps, search.candidates,
                                              search.seed, search.n_random, search.random_size)
        minimal = fc.minimality(loaded, held, groups, [r["k"] for r in completeness["rollouts"]])
        result = {"model": model.name, "cell": cell,
                  "heldout_cell": {"task": cell["task"], "variant": cell["variant"], "shots": int(heldout.shots)},
                  "groups": groups,
                  "faithfulness": {"in_sample": faithfulness(in_sample), "heldout": faithfulness(held)},
                  "completeness": completeness, "minimality": minimal, "search": dataclasses.asdict(search),
                  "seconds": time.perf_counter() - t0}
        write_json(result, output)
        write_json(fc.paper_completeness_json(completeness["rollouts"]), paper_json)
        f = result["faithfulness"]
        log.info("%s: F(C) %.3f in-sample (%d prompts, %d shots), %.3f held out (%d prompts, %d shots); completeness: "
                 "%d distinct K, max |LD(C\\K) - LD(M\\K)| %.3f (%.1fs)", model.name, f["in_sample"]["circuit"],
                 f["in_sample"]["n_examples"], cell["shots"], f["heldout"]["circuit"], f["heldout"]["n_examples"],
                 heldout.shots, completeness["n_distinct_k"],
                 max([r["difference"] for r in completeness["rollouts"]] or [0.0]), result["seconds"])
        return result


def circuit_overlap(model: ModelSpec, circuit_files: list[str], datasets: list[str], output: str, ablation: AblationParams,
                    batch_size: int = 64, device: str = "auto") -> pd.DataFrame:
    """Per pair of families (A, B) of one model's circuits: the share of A's circuit heads in B's (per
    group and over all), and A's FI heads ablated on B's cell (patch from the normal prompt) against
    `ablation.n_random` random sets of the same size: the drop of cf_acc each causes."""

    from fi.methods import circuit as fc
    from fi.methods.ablation import ablated_scores_many, random_head_sets

    circuits = [json.loads(Path(p).read_text()) for p in circuit_files]
    with model_in_use(model, device) as loaded:
        records = {c["cell"]["task"]: read_jsonl(d) for c, d in zip(circuits, datasets)}
        by_task = {c["cell"]["task"]: c for c in circuits}
        fi_heads, randoms = {}, {}
        for a, ca in by_task.items():
            fi_heads[a] = [tuple(h) for h in ca["groups"].get("function_induction", [])]
            try:
                randoms[a] = (random_head_sets(loaded.n_layers, loaded.n_heads, fi_heads[a], ablation.n_random,
                                               ablation.seed, exclude=fi_heads[a]) if fi_heads[a] else [])
            except ValueError:  # too few heads outside the set (a tiny model): no random baseline
                randoms[a] = []
        rows = []
        for b, cb in by_task.items():
            # every head set ablated on B's cell, with the unablated runs shared: no ablation, then
            # each family A's FI heads and its random sets
            family = get_family(b)
            v = family.parse_variant(cb["cell"]["variant"])
            sets = [[]] + [h for a in by_task for h in ([fi_heads[a]] if fi_heads[a] else []) + randoms[a]]
            cf = iter([float(df["cf_correct"].mean()) for df in
                       ablated_scores_many(loaded, family, v, records[b], cb["cell"]["shots"], sets, "patch", batch_size)])
            cf_base = next(cf)
            for a, ca in by_task.items():
                fi_drop = cf_base - next(cf) if fi_heads[a] else float("nan")
                random_drops = [cf_base - next(cf) for _ in randoms[a]]
                share = fc.overlap(ca["groups"], cb["groups"])
                rows.append({"model": model.name, "family_a": a, "family_b": b, "cell_b": cb["cell"]["variant"],
                             **{f"overlap_{g}": x for g, x in share.items()}, "fi_heads_a": json.dumps(fi_heads[a]),
                             "cf_acc_b": cf_base, "fi_ablation_cf_drop": fi_drop,
                             "random_ablation_cf_drop": sum(random_drops) / len(random_drops) if random_drops
                             else float("nan")})
        # rows in the order of (A, B) pairs, as before
        order = {(a, b): k for k, (a, b) in enumerate((a, b) for a in by_task for b in by_task)}
        out = pd.DataFrame(sorted(rows, key=lambda r: order[r["family_a"], r["family_b"]]))
        write_parquet(out, output)
        return out


def aggregate_circuits(circuits: list[str], evaluations: list[str], overlaps: list[str], heads_table: str,
                       evaluation_table: str, overlap_table: str) -> None:
    """Tables of every circuit head (with group and numbers), every circuit evaluation (long rows:
    kind, subject, measure, value) and every overlap row."""
    heads, evals = [], []
    for p in circuits:
        c = json.loads(Path(p).read_text())
        group_of = {tuple(h): g for g, hs in c["groups"].items() for h in hs}
        for h in c["heads"]:
            heads.append({"model": c["model"], **{f"cell_{k}": v for k, v in c["cell"].items()}, **h,
                          "group": group_of.get((h["layer"], h["head"]), ""), "source": c["source"]})
    for p in evaluations:
        e = json.loads(Path(p).read_text())
        key = {"model": e["model"], "task": e["cell"]["task"], "variant": e["cell"]["variant"]}
        for sample, f in e["faithfulness"].items():
            shots = e["cell"]["shots"] if sample == "in_sample" else e["heldout_cell"]["shots"]
            meta = {**key, "shots": shots, "sample": sample, "n_examples": f["n_examples"], "ld_gap": f["ld_gap"],
                    "low_ld_gap": f["low_ld_gap"]}
            evals += [{**meta, "kind": "faithfulness", "subject": s, "measure": "F", "group": "", "value": f[s]}
                      for s in ("model", "circuit", "empty")]
            evals += [{**meta, "kind": "faithfulness", "subject": g, "measure": "F", "group": g, "value": v}
                      for g, v in f["by_group"].items()]
        held = e["faithfulness"]["heldout"]
        meta = {**key, "shots": e["heldout_cell"]["shots"], "sample": "heldout", "n_examples": held["n_examples"],
                "ld_gap": held["ld_gap"], "low_ld_gap": held["low_ld_gap"]}
        counts: dict[str, int] = {}
        for point in e["completeness"]["points"]:
            i = counts[point["kind"]] = counts.get(point["kind"], -1) + 1
            evals += [{**meta, "kind": "completeness", "subject": f"{point['kind']} {i}", "measure": m,
                       "group": point["kind"], "value": point[m]}
                      for m in ("f_circuit_minus_k", "f_model_minus_k", "ld_circuit_minus_k", "ld_model_minus_k",
                                "difference")]
        evals += [{**meta, "kind": "minimality", "subject": f"L{m['layer']}H{m['head']}", "measure": "change",
                   "group": m["group"], "value": m["change"]} for m in e["minimality"]]
    write_parquet(pd.DataFrame(heads), heads_table, sources=overlaps)
    write_parquet(pd.DataFrame(evals), evaluation_table, sources=overlaps)
    table = pd.concat([pd.read_parquet(p) for p in overlaps], ignore_index=True) if overlaps else pd.DataFrame()
    write_parquet(table, overlap_table, sources=overlaps)


def plot_circuits(evaluation_table: str, overlap_table: str, evaluation_plot: str, overlap_plot: str,
                  plots: PlotParams) -> None:
    from fi.report.plots import plot_circuit_evaluation, plot_circuit_overlap

    plot_circuit_evaluation(pd.read_parquet(evaluation_table), evaluation_plot, dpi=plots.dpi)
    plot_circuit_overlap(pd.read_parquet(overlap_table), overlap_plot, dpi=plots.dpi)


# ---- function vectors (the paper's section 3) -------------------------------------------------------

def function_vectors(model: ModelSpec, heads_file: str, datasets: list[str], output: str, params: FunctionVectorParams,
                     circuit_file: str | None = None, device: str = "auto") -> pd.DataFrame:
    """Function vectors (fi.methods.function_vectors): per offset k in params.offsets (its contrast prompts
    in datasets[i], in the same order), each head's mean output at the query, added at scale
    params.scales to the naive prompts; for every vector set (fi.methods.function_vectors.vector_sets: the
    FI group of `circuit_file`'s circuit, or of `heads_file` where the circuit is off or its FI group
    empty, on the contrast and the normal prompts; the circuit's other groups), one row per (offset,
    head set, scale, input digit, output digit) with the digit logit's shift
    (fi.methods.function_vectors.SHIFT_COLUMNS)."""

    from fi.engine.pairs import build_patching_data
    from fi.methods.function_vectors import SHIFT_COLUMNS, function_vector_shifts, set_vectors, vector_sets

    with model_in_use(model, device) as loaded:
        discovery = json.loads(Path(heads_file).read_text())["heads"]
        groups = json.loads(Path(circuit_file).read_text())["groups"] if circuit_file else None
        sets = vector_sets(discovery, groups)
        family = get_family("addition")
        offsets = [int(k) for k in params.offsets]
        if len(datasets) != len(offsets):
            raise ValueError(f"function_vectors: {len(datasets)} datasets for offsets {offsets}")
        t0 = time.perf_counter()
        vectors: list[dict] = [{} for _ in sets]
        n_prompts = {}
        for k, path in zip(offsets, datasets):
            v = family.parse_variant(f"{params.setting}_nmax{params.nmax}_offset{k}")
            data = build_patching_data(loaded, family, v, read_jsonl(path), params.shots, params.max_examples)
            for i, vecs in enumerate(set_vectors(loaded, data, sets, params.batch_size)):
                vectors[i][k] = vecs
            n_prompts[k] = data.size
        parts = []
        for s, vecs in zip(sets, vectors):
            part = function_vector_shifts(loaded, vecs, s.heads, params.scales)
            part["group"], part["prompts"], part["head_source"] = s.group, s.prompts, s.head_source
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)
        out.insert(0, "model", model.name)
        out["n_prompts"] = out["offset"].map(n_prompts)
        out["setting"], out["nmax"], out["shots"] = params.setting, params.nmax, params.shots
        out = out[SHIFT_COLUMNS]
        write_parquet(out, output)
        log.info("%s: function vectors of %s at offsets %s, scales %s: %d rows, %.1fs", model.name,
                 "; ".join(f"{s.group} ({s.prompts}, {s.head_source}) {list(s.heads)}" for s in sets), offsets,
                 list(params.scales), len(out), time.perf_counter() - t0)
        return out


def aggregate_function_vectors(tables: list[str], output: str, effects_output: str) -> pd.DataFrame:
    """Every model's shift table in one, and the derived +j effects and head shares
    (fi.methods.function_vectors.effects) in `effects_output`."""
    from fi.methods.function_vectors import effects

    table = pd.concat([pd.read_parquet(p) for p in tables], ignore_index=True)
    write_parquet(table, output, sources=tables)
    write_parquet(effects(table), effects_output, sources=tables)
    return table


def plot_function_vectors(table: str, output: str, plots: PlotParams) -> None:
    from fi.methods.function_vectors import effects
    from fi.report.plots import plot_function_vectors as plot

    shifts = pd.read_parquet(table)
    plot(shifts, effects(shifts), output, dpi=plots.dpi)
