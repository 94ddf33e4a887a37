"""The run's headline findings, stated from its tables (`results/summary.md`, the report's first
entry), and where they came from (`results/provenance.json`). Every number here is read from a table
of the same run: the README quotes this file, not the other way round."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fi.io import atomic_path, write_json
from fi.report import provenance


def _heads(heads) -> str:
    return ", ".join(f"L{int(a)}H{int(b)}" for a, b in heads) or "none"


def _accuracy(table: pd.DataFrame) -> list[str]:
    out = ["## Accuracy", "",
           "Lowest cf_acc over the cells with an offset (k != 0), the cell it is in, the copy accuracy (k = 0: "
           "cf_acc on prompts with no shift) and the highest orig_acc (plain answers to shifted prompts), per "
           "model, task and shot count.", "",
           "| model | task | shots | cells | lowest cf_acc (k != 0) | at | copy accuracy (k = 0) | highest orig_acc (k != 0) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (model, task, shots), g in table.groupby(["model", "task", "shots"], sort=True):
        shifted = g[g["offset"] != 0]
        copy = g[g["offset"] == 0]
        worst = shifted.loc[shifted["cf_acc"].idxmin()] if len(shifted) else None
        out.append(f"| {model} | {task} | {shots} | {len(g)} | "
                   + (f"{worst['cf_acc']:.2f} (95% CI {worst['cf_acc_lo']:.2f}-{worst['cf_acc_hi']:.2f}) | "
                      f"{worst['variant']} | " if worst is not None else "- | - | ")
                   + (f"{copy['cf_acc'].min():.2f} | " if len(copy) else "- | ")
                   + (f"{shifted['orig_acc'].max():.2f} |" if len(shifted) else "- |"))
    return out


def _fi_heads(heads_files: list[str]) -> list[str]:
    out = ["## FI heads", ""]
    for p in heads_files:
        h = json.loads(Path(p).read_text())
        line = f"* {h['model']}: {_heads(h['heads'])} ({h['source']}"
        if h["source"] == "discovery":
            scores = {(s["layer"], s["head"]): s["score"] for s in h.get("scores", [])}
            line += ", path scores to the output " + ", ".join(f"{scores.get(tuple(x), float('nan')):.2f}"
                                                               for x in h["heads"])
        line += ")"
        if "patched_gives_plain_answer" in h:
            line += (f"; patched together from the normal prompt on {h['cell']['task']} {h['cell']['variant']} "
                     f"({h['cell']['shots']} shots), the model gives the plain answer on "
                     f"{h['patched_gives_plain_answer']:.0%} of prompts")
        out.append(line)
    return out


def _ablation(table: pd.DataFrame) -> list[str]:
    out = ["## Ablation of the FI heads", "",
           "cf_acc per task (mean over its ablated variants, k != 0), unablated, with the FI heads ablated and "
           "with random head sets of the same size ablated (mean and range over the sets), per mode.", "",
           "| model | task | shots | mode | cf_acc | FI heads ablated | random sets: mean (min-max) "
           "| orig_acc with FI heads ablated |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    t = table[table["offset"] != 0] if "offset" in table else table
    for (model, task, shots, mode), g in t.groupby(["model", "task", "shots", "mode"], sort=True):
        none = g[g["head_set"] == "none"]["cf_acc"].mean()
        fi = g[g["head_set"] == "fi"]
        rand = g[g["head_set"] == "random"].groupby("set_index")["cf_acc"].mean()
        out.append(f"| {model} | {task} | {shots} | {mode} | {none:.2f} | "
                   + (f"{fi['cf_acc'].mean():.2f} | " if len(fi) else "- | ")
                   + (f"{rand.mean():.2f} ({rand.min():.2f}-{rand.max():.2f}) | " if len(rand) else "- | ")
                   + (f"{fi['orig_acc'].mean():.2f} |" if len(fi) else "- |"))
    return out


def _circuits(heads: pd.DataFrame, evaluation: pd.DataFrame, overlap: pd.DataFrame,
              distinct_k: dict[str, int]) -> list[str]:
    out = ["## Circuits", "",
           "| model | cell | previous-token heads | FI heads | consolidation heads |", "| --- | --- | --- | --- | --- |"]
    for (model, task, variant, shots), g in heads.groupby(["model", "cell_task", "cell_variant", "cell_shots"], sort=True):
        groups = {k: _heads(sorted(zip(x["layer"], x["head"]))) for k, x in g[g["group"] != ""].groupby("group")}
        out.append(f"| {model} | {task} {variant} {shots} shots | {groups.get('previous_token', 'none')} | "
                   f"{groups.get('function_induction', 'none')} | {groups.get('consolidation', 'none')} |")
    if len(evaluation):
        out += ["", "Faithfulness F(C) (1: the circuit alone does what the model does; 0: nothing), in-sample "
                "(the discovery prompts) and held out (fresh prompts at the held-out shot count), and the "
                "paper's completeness search on the held-out prompts: the largest |LD(C \\ K) - LD(M \\ K)| "
                "over the greedy rollouts (logits; 0 for a complete circuit) against the largest over the "
                "random sets.", "",
                "| model | cell | sample | prompts | LD gap | F(C) | F(model) | F(empty) | greedy max gap "
                "| random max gap | distinct greedy K |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for (model, task, variant), e in evaluation.groupby(["model", "task", "variant"], sort=True):
            comp = e[e["kind"] == "completeness"]
            gaps = comp[comp["measure"] == "difference"]
            greedy = gaps[gaps["group"] == "greedy"]
            rand = gaps[gaps["group"] == "random"]
            ks = distinct_k.get(model)
            faith = e[e["kind"] == "faithfulness"]
            for sample in [s for s in ("in_sample", "heldout") if s in set(faith["sample"])]:
                f = faith[faith["sample"] == sample]
                v = dict(zip(f[f["group"] == ""]["subject"], f[f["group"] == ""]["value"]))
                low = " (LOW: below min_ld_gap)" if bool(f["low_ld_gap"].iloc[0]) else ""
                held = sample == "heldout"
                out.append(f"| {model} | {task} {variant} | {sample} | {int(f['n_examples'].iloc[0])} "
                           f"({int(f['shots'].iloc[0])} shots) | {f['ld_gap'].iloc[0]:.2f}{low} | {v['circuit']:.2f} | "
                           f"{v['model']:.2f} | {v['empty']:.2f} | "
                           + (f"{greedy['value'].max():.3f} | " if held and len(greedy) else "- | ")
                           + (f"{rand['value'].max():.3f} | " if held and len(rand) else "- | ")
                           + (f"{ks} |" if held and ks is not None else "- |"))
    if len(overlap):
        out += ["", "Cross-task reuse: the share of family A's circuit heads that are in B's, and A's FI heads "
                "ablated on B's cell (patch from the normal prompt): the drop of cf_acc, against random head "
                "sets of the same size.", "",
                "| model | A | B | heads of A in B's circuit | FI heads of A | B's cf_acc "
                "| drop, A's FI heads ablated | drop, random sets (mean) |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in overlap[overlap["family_a"] != overlap["family_b"]].itertuples():
            out.append(f"| {r.model} | {r.family_a} | {r.family_b} | {r.overlap_all:.2f} | "
                       f"{_heads(json.loads(r.fi_heads_a))} | {r.cf_acc_b:.2f} | {r.fi_ablation_cf_drop:.2f} | "
                       f"{r.random_ablation_cf_drop:.2f} |")
    return out


def _function_vectors(effects: pd.DataFrame) -> list[str]:
    out = ["## Function vectors", "",
           "The +k effect (how much a head set's vector from offset-k prompts raises digit i+k on the naive "
           "prompts, in logits; fi.methods.function_vectors) of all heads of each set together, at scale 1.", "",
           "| model | heads | prompts | offset k | +k effect |", "| --- | --- | --- | --- | --- |"]
    e = effects[(effects["heads"] == "all") & (effects["scale"] == 1) & (effects["measured_offset"] == effects["offset"])]
    keys = [c for c in ("model", "group", "prompts", "offset") if c in e.columns]
    for r in e.sort_values(keys).itertuples():
        out.append(f"| {r.model} | {getattr(r, 'group', 'function_induction')} | {getattr(r, 'prompts', 'contrast')} | "
                   f"{r.offset:+d} | {r.effect:.2f} |")
    return out


def write_summary(output: str, provenance_output: str, seeds: dict, accuracy: str, heads_files: list[str],
                  ablation: str | None = None, circuit_heads: str | None = None,
                  circuit_evaluation: str | None = None, circuit_overlap: str | None = None,
                  circuit_evaluations: list[str] | None = None, function_vector_effects: str | None = None,
                  tables: list[str] | None = None) -> str:
    """results/summary.md from the run's tables (those given), and results/provenance.json: the
    distinct provenance records of every table (`tables`, each parquet input) and the config's
    seeds (`seeds_of(config)`)."""
    parquet = [p for p in [accuracy, ablation, circuit_heads, circuit_evaluation, circuit_overlap,
                           function_vector_effects, *(tables or [])] if p]
    records = provenance.sources_of(parquet)
    lines = ["# Results summary", "",
             f"Made by: {provenance.summary_line(records)}. Seeds: {json.dumps(seeds, sort_keys=True)}. "
             "Every number below is read from this run's tables (results/tables/); "
             "results/provenance.json has the full records.", ""]
    lines += _accuracy(pd.read_parquet(accuracy)) + [""]
    lines += _fi_heads(heads_files) + [""]
    if ablation:
        lines += _ablation(pd.read_parquet(ablation)) + [""]
    if circuit_heads:
        distinct = {}
        for p in circuit_evaluations or []:
            e = json.loads(Path(p).read_text())
            distinct[e["model"]] = e["completeness"]["n_distinct_k"]
        lines += _circuits(pd.read_parquet(circuit_heads), pd.read_parquet(circuit_evaluation),
                           pd.read_parquet(circuit_overlap), distinct) + [""]
    if function_vector_effects:
        lines += _function_vectors(pd.read_parquet(function_vector_effects)) + [""]
    text = "\n".join(lines)
    with atomic_path(output) as tmp:
        Path(tmp).write_text(text)
    write_json({"records": records, "seeds": seeds, "tables": sorted(parquet)}, provenance_output)
    return text
