"""Seaborn figures: accuracy against shots (the paper's Figure 1 style)."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from fi.io import atomic_path
from fi.report.figures import one_figure_at_a_time  # (also selects matplotlib's file-only backend)

log = logging.getLogger(__name__)
METRICS = {"cf_acc": "contrast answer (cf_acc)", "orig_acc": "plain answer (orig_acc)"}
# variant columns that split a figure into panels, in order of preference
PANEL_COLUMNS = ("setting", "nmax", "maxlen", "ndigits", "base")


def _panel_label(df: pd.DataFrame) -> pd.Series:
    cols = [c for c in PANEL_COLUMNS if c in df.columns and df[c].nunique(dropna=True) > 0]
    if not cols:
        return pd.Series("all", index=df.index)
    def value(v) -> str:  # a table of several tasks holds its int columns as floats (NaN elsewhere)
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    return df[cols].apply(lambda r: ", ".join(f"{c}={value(v)}" for c, v in zip(cols, r) if pd.notna(v)), axis=1)


def _long(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for metric, label in METRICS.items():
        part = df.copy()
        part["metric"] = label
        part["accuracy"] = df[metric]
        part["lo"] = df.get(f"{metric}_lo", df[metric])
        part["hi"] = df.get(f"{metric}_hi", df[metric])
        rows.append(part)
    out = pd.concat(rows, ignore_index=True)
    out["panel"] = _panel_label(out)
    return out


def save_figure(fig, output: str, dpi: int) -> None:
    """Write `fig` in the format of `output`'s suffix, atomically (no half-written figure), and close it."""
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=output.rsplit(".", 1)[-1])
    plt.close(fig)


@one_figure_at_a_time()
def plot_accuracy(df: pd.DataFrame, output: str, task: str = "addition", dpi: int = 120,
                  reference: pd.DataFrame | None = None) -> None:
    """Accuracy vs shots: one row of panels per model, one panel per setting; colour = offset,
    line style = which answer is counted; bands are the Wilson 95% intervals where known.

    `df` is this project's accuracy table or a table in the paper's CSV format after
    `fi.report.tables.from_paper_format`. `reference` (same format) is overlaid as thin grey-edged lines
    on the panels whose model and setting match."""
    if df.empty:
        raise ValueError(f"no rows to plot for task {task!r}")
    data = _long(df)
    ref = _long(reference[reference["task"] == task]) if reference is not None else None
    models = list(dict.fromkeys(data["model"]))
    panels = sorted(data["panel"].unique())
    hue_order = sorted(data["offset"].unique()) if "offset" in data.columns else None
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(models), len(panels), figsize=(3.4 * len(panels), 2.8 * len(models)),
                             sharex=True, sharey=True, squeeze=False)
    # diverging colours centred on k = 0 (grey), so +k and -k of equal size share a saturation
    span = max((abs(o) for o in hue_order or []), default=1) or 1
    cmap = sns.color_palette("coolwarm", as_cmap=True)
    palette = {o: cmap(0.5 + 0.5 * o / span) for o in (hue_order or [])}
    if 0 in palette:  # the map's centre is near-white: k = 0 (plain copying) in black instead
        palette[0] = (0.1, 0.1, 0.1, 1.0)
    for r, model in enumerate(models):
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            sub = data[(data["model"] == model) & (data["panel"] == panel)]
            sns.lineplot(data=sub, x="shots", y="accuracy", hue="offset" if hue_order else None,
                         hue_order=hue_order, style="metric", style_order=list(METRICS.values()),
                         markers=True, palette=palette or None, ax=ax, legend=(r == 0 and c == 0))
            for (off, _metric), g in sub.groupby(["offset", "metric"]):
                g = g.sort_values("shots")
                color = palette.get(off)
                ax.fill_between(g["shots"], g["lo"], g["hi"], alpha=0.12, color=color, linewidth=0)
            if ref is not None:
                rsub = ref[(ref["model"] == model) & (ref["panel"] == panel)]
                for (off, met), g in rsub.groupby(["offset", "metric"]):
                    if hue_order and off not in hue_order:
                        continue
                    color = palette.get(off, "grey")
                    ax.plot(g["shots"], g["accuracy"], color=color, lw=0.8, alpha=0.6,
                            ls=":" if met == METRICS["orig_acc"] else "-.")
            ax.set_xscale("log", base=2)
            ticks = sorted(data["shots"].unique())
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{model}\n{panel}", fontsize=8)
            ax.set_xlabel("shots")
            ax.set_ylabel("accuracy")
    if ref is not None and ref[ref["model"].isin(models)].empty:
        log.warning("reference has no rows for models %s; nothing overlaid", models)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if axes[0][0].get_legend() is not None:
        axes[0][0].get_legend().remove()
    if ref is not None:
        handles += [plt.Line2D([], [], color="grey", ls="-.", lw=0.8), plt.Line2D([], [], color="grey", ls=":", lw=0.8)]
        labels += ["reference cf_acc", "reference orig_acc"]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, title=None)
    fig.suptitle(f"{task}: accuracy against in-context demos", y=1.0)
    fig.tight_layout()
    save_figure(fig, output, dpi)


@one_figure_at_a_time()
def plot_head_heatmaps(df: pd.DataFrame, output: str, dpi: int = 120) -> None:
    """Layer x head heatmaps of one model's attribution scores: one panel per cell, method, receiver
    and position group. FI heads are boxed; scores are normalised (-1 = full restoration)."""
    import numpy as np

    if df.empty:
        raise ValueError("no attribution rows to plot")
    keys = ["task", "variant", "shots", "method", "receiver", "positions"]
    panels = list(df.groupby(keys, sort=False))
    n_layers, n_heads = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.5 * n_heads * cols + 2.5 * cols, 0.4 * n_layers * rows + 1.8 * rows),
                             squeeze=False)
    lim = max(1e-6, float(np.nanmax(np.abs(df["score"]))))
    for ax, ((task, variant, shots, method, receiver, positions), g) in zip(axes.flat, panels):
        grid = g.pivot_table(index="layer", columns="head", values="score").reindex(
            index=range(n_layers), columns=range(n_heads))
        sns.heatmap(grid, ax=ax, cmap="RdBu", vmin=-lim, vmax=lim, center=0, cbar=True,
                    annot=n_layers * n_heads <= 64, fmt=".2f", annot_kws={"fontsize": 6})
        if "fi_head" in g.columns:
            for r in g[g["fi_head"]].itertuples():
                ax.add_patch(plt.Rectangle((r.head, r.layer), 1, 1, fill=False, edgecolor="black", lw=2))
        gap = ""
        if "low_ld_gap" in g.columns and bool(g["low_ld_gap"].iloc[0]):  # the denominator guard
            gap = f"\nLOW LD GAP {float(g['ld_gap'].iloc[0]):.3f}: scores unreliable"
        ax.set_title(f"{method} -> {receiver} ({positions})\n{task} {variant}, {shots} shots{gap}", fontsize=8,
                     color="firebrick" if gap else "black")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{df['model'].iloc[0]}: head attribution (boxed: FI heads)", y=1.0)
    fig.tight_layout()
    save_figure(fig, output, dpi)


ABLATION_METRICS = {
    "normal_acc": "normal prompt -> plain answer",
    "normal_on_contrast_acc": "normal prompt -> shifted answer",
    "cf_acc": "contrast prompt -> shifted answer",
    "orig_acc": "contrast prompt -> plain answer",
}


@one_figure_at_a_time()
def plot_task_generalization(df: pd.DataFrame, output: str, dpi: int = 120) -> None:
    """Grouped bars (the paper's Figure 6 style): for every task cell, the four accuracies with no
    ablation, with the FI heads ablated and with random head sets ablated (random sets pooled), with
    Wilson 95% intervals. One row of panels per model and ablation mode."""
    import numpy as np

    from fi.report.tables import wilson_interval

    if df.empty:
        raise ValueError("no ablation rows to plot")
    df = df.copy()
    df["cell"] = df["task"] + ": " + df["variant"] + ", " + df["shots"].astype(str) + " shots"
    pooled = []
    for (model, mode, cell, kind), g in df.groupby(["model", "mode", "cell", "head_set"], sort=False):
        row = {"model": model, "mode": mode, "cell": cell, "head_set": kind}
        n = int(g["n"].sum())
        for metric in ABLATION_METRICS:
            k = float((g[metric] * g["n"]).sum())
            lo, hi = wilson_interval(k, n)
            row.update({metric: k / n, f"{metric}_lo": float(lo), f"{metric}_hi": float(hi)})
        pooled.append(row)
    data = pd.DataFrame(pooled)
    groups = list(data.groupby(["model", "mode"], sort=False))
    cells = list(dict.fromkeys(data["cell"]))
    kinds = [k for k in ("none", "fi", "random") if k in set(data["head_set"])]
    labels = {"none": "no ablation", "fi": "FI heads ablated", "random": "random heads ablated"}
    colors = dict(zip(("none", "fi", "random"), sns.color_palette("Set2", 3)))
    fig, axes = plt.subplots(len(ABLATION_METRICS), len(groups),
                             figsize=(max(4.0, 0.75 * len(cells) + 1.5) * len(groups), 2.4 * len(ABLATION_METRICS)),
                             squeeze=False, sharey=True)
    width = 0.8 / len(kinds)
    for c, ((model, mode), g) in enumerate(groups):
        for r, (metric, title) in enumerate(ABLATION_METRICS.items()):
            ax = axes[r][c]
            for i, kind in enumerate(kinds):
                sub = g[g["head_set"] == kind].set_index("cell").reindex(cells)
                x = np.arange(len(cells)) + (i - (len(kinds) - 1) / 2) * width
                y = sub[metric].to_numpy()
                # clip: the Wilson bound at 1.0 can come out a rounding error below the estimate
                err = np.clip(np.vstack([y - sub[f"{metric}_lo"].to_numpy(), sub[f"{metric}_hi"].to_numpy() - y]), 0, None)
                ax.bar(x, y, width, yerr=err, capsize=2, color=colors[kind], label=labels[kind])
            ax.set_xticks(np.arange(len(cells)), cells if r == len(ABLATION_METRICS) - 1 else [],
                          fontsize=6, rotation=90)
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("accuracy", fontsize=7)
            ax.set_title(f"{title}  ({model}, mode={mode})", fontsize=8)
    handles, lbls = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, lbls, loc="upper center", ncol=len(kinds), bbox_to_anchor=(0.5, 1.04), fontsize=8)
    fig.tight_layout()
    save_figure(fig, output, dpi)


# ---- circuits (fi.methods.circuit) -------------------------------------------------------------------------

GROUP_COLOURS = {"previous_token": "tab:green", "function_induction": "tab:red", "consolidation": "tab:blue",
                 "other": "tab:gray"}


@one_figure_at_a_time()
def plot_circuit(circuit: dict, output: str, dpi: int = 120) -> None:
    """The circuit diagram as the paper's Figure 2 draws it: heads by layer, top (layer 0) to
    bottom (the output), coloured by group, edges drawn with width proportional to |score|."""
    n_layers, n_heads = circuit["n_layers"], circuit["n_heads"]
    group_of = {tuple(h): g for g, hs in circuit["groups"].items() for h in hs}
    group_of.update({tuple(h): "other" for h in circuit.get("other", [])})
    nodes = {tuple(e["sender"]) for e in circuit["edges"]} | set(group_of)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * n_heads + 2), max(3.0, 0.45 * (n_layers + 1) + 1)))

    def xy(node):
        if node == "output":
            return (n_heads - 1) / 2, n_layers
        return node[1], node[0]
    top = max([abs(e["score"]) for e in circuit["edges"]] + [1e-9])
    for e in circuit["edges"]:
        target = "output" if e["receiver"] == "output" else tuple(int(x) for x in e["receiver"].split(".")[:2])
        (x0, y0), (x1, y1) = xy(tuple(e["sender"])), xy(target)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops={"arrowstyle": "->", "lw": 0.5 + 5 * abs(e["score"]) / top,
                                "color": "black" if e["score"] < 0 else "tab:orange", "alpha": 0.7})
    for node in nodes:
        x, y = xy(node)
        g = group_of.get(node, "other")
        ax.scatter([x], [y], s=260, color=GROUP_COLOURS[g], zorder=3, edgecolor="black")
        ax.text(x, y, f"L{node[0]}H{node[1]}", ha="center", va="center", fontsize=5, color="white", zorder=4)
    ox, oy = xy("output")
    ax.scatter([ox], [oy], s=400, marker="s", color="black", zorder=3)
    ax.text(ox, oy, "out", ha="center", va="center", fontsize=7, color="white", zorder=4)
    for g, c in GROUP_COLOURS.items():
        ax.scatter([], [], color=c, label=g.replace("_", " "))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(-0.7, n_heads - 0.3)
    ax.set_ylim(n_layers + 0.7, -0.7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{circuit['model']}: circuit on {circuit['cell']['task']} {circuit['cell']['variant']}, "
                 f"{circuit['cell']['shots']} shots\n(edge width: |path-patching score|; black: restores the "
                 "plain answer)", fontsize=8)
    save_figure(fig, output, dpi)


@one_figure_at_a_time()
def plot_attention_by_group(tokens: list[str], patterns: dict, output: str, dpi: int = 120) -> None:
    """One prompt's attention patterns of the circuit heads, one panel per group (the mean over the
    group's heads), query rows x key columns."""
    groups = [g for g in patterns if patterns[g] is not None]
    if not groups:
        groups = ["none"]
        patterns = {"none": None}
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 5), squeeze=False)
    for ax, g in zip(axes[0], groups):
        if patterns[g] is None:
            ax.axis("off")
            ax.set_title("no circuit head")
            continue
        sns.heatmap(patterns[g], ax=ax, cmap="viridis", vmin=0, vmax=1, cbar=True, square=True,
                    xticklabels=tokens, yticklabels=tokens)
        ax.tick_params(labelsize=5)
        ax.set_title(f"{g.replace('_', ' ')} heads (mean)", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.tight_layout()
    save_figure(fig, output, dpi)


@one_figure_at_a_time()
def plot_circuit_evaluation(table: pd.DataFrame, output: str, dpi: int = 120) -> None:
    """Per model: faithfulness of the circuit, each group, the full and the empty model, in-sample
    and held out; the paper's completeness figure (F(C \\ K) against F(M \\ K) for K empty, each
    group, random sets and the greedy rollouts' K; a complete circuit keeps every point on the
    diagonal); each head's minimality. A cell whose LD gap is below min_ld_gap is marked."""
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 4.2 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        t = table[table["model"] == model]
        f = t[t["kind"] == "faithfulness"]
        low = sorted(set(f.loc[f["low_ld_gap"].astype(bool), "sample"]))
        warn = f"\nLOW LD GAP ({', '.join(low)}): scores unreliable" if low else ""
        sns.barplot(f, x="subject", y="value", hue="sample", ax=row[0],
                    hue_order=[s for s in ("in_sample", "heldout") if s in set(f["sample"])])
        row[0].tick_params(axis="x", labelrotation=30, labelsize=8)
        row[0].set(title=f"{model}: faithfulness F{warn}", ylabel="F", xlabel="",
                   ylim=(min(0, f["value"].min()) - 0.05, max(1.1, f["value"].max() + 0.05)))
        c = t[t["kind"] == "completeness"]
        if not c.empty:
            wide = c.pivot_table(index=["subject", "group"], columns="measure", values="value").reset_index()
            sns.scatterplot(wide, x="f_circuit_minus_k", y="f_model_minus_k", hue="group", style="group",
                            ax=row[1], s=45)
            vals = wide[["f_circuit_minus_k", "f_model_minus_k"]].to_numpy()
            lo, hi = min(0.0, float(vals.min())) - 0.05, max(1.0, float(vals.max())) + 0.05
            row[1].plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
            row[1].set(xlim=(lo, hi), ylim=(lo, hi))
            row[1].legend(fontsize=7, title="K")
        row[1].set(title="completeness (held out)", xlabel="F(C \\ K)", ylabel="F(M \\ K)")
        m = t[t["kind"] == "minimality"]
        if not m.empty:
            sns.barplot(m, x="subject", y="value", hue="group", ax=row[2], dodge=False)
            row[2].tick_params(axis="x", labelrotation=90, labelsize=7)
        row[2].set(title="minimality: max_K |F(C \\ (K+v)) - F(C \\ K)|", xlabel="head v", ylabel="change")
    fig.tight_layout()
    save_figure(fig, output, dpi)


@one_figure_at_a_time()
def plot_circuit_overlap(table: pd.DataFrame, output: str, dpi: int = 120) -> None:
    """Per model, the share of family A's circuit heads that are in family B's (all groups), and
    A's FI heads ablated on B: cf_acc drop against the random sets' mean drop."""
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.8 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        t = table[table["model"] == model]
        grid = t.pivot_table(index="family_a", columns="family_b", values="overlap_all")
        sns.heatmap(grid, ax=row[0], vmin=0, vmax=1, annot=True, fmt=".2f", cmap="Blues")
        row[0].set(title=f"{model}: share of A's circuit heads in B's", xlabel="B", ylabel="A")
        long = t.melt(id_vars=["family_a", "family_b"], value_vars=["fi_ablation_cf_drop", "random_ablation_cf_drop"],
                      var_name="ablated", value_name="cf_acc drop")
        long["pair"] = long["family_a"] + " heads -> " + long["family_b"]
        sns.barplot(long, x="pair", y="cf_acc drop", hue="ablated", ax=row[1])
        row[1].tick_params(axis="x", labelrotation=30, labelsize=7)
        row[1].set(title="ablating A's FI heads on B (patch from normal)")
    fig.tight_layout()
    save_figure(fig, output, dpi)


@one_figure_at_a_time()
def plot_function_vectors(shifts: pd.DataFrame, effects: pd.DataFrame, output: str, dpi: int = 120) -> None:
    """One model's function vectors (fi.methods.function_vectors): per offset k (rows), 10 x 10 input x output
    heatmaps of the digit-logit shift for each FI head and all FI heads together at scale 1 (or the
    scale nearest 1), then the scale sweep of the +k effect (FI heads, contrast prompts only); a last
    row with each FI head's share of the all-heads +k effect, the all-heads effect against the measured
    offset j (does +k move by k), and the +k effect of every vector set's heads together (the FI
    heads on contrast and on normal prompts, the circuit's other groups)."""
    import numpy as np

    if shifts.empty:
        raise ValueError("no function-vector rows to plot")

    def set_label(df: pd.DataFrame) -> pd.Series:
        return df["group"].str.replace("_", " ") + " (" + df["prompts"] + ")"

    def fi_only(df: pd.DataFrame) -> pd.DataFrame:  # a table without the set columns is all FI
        if "group" not in df.columns:
            return df
        return df[(df["group"] == "function_induction") & (df["prompts"] == "contrast")]

    every = effects
    shifts, effects = fi_only(shifts), fi_only(effects)
    scales = sorted(shifts["scale"].unique())
    at = min(scales, key=lambda s: (abs(s - 1.0), -s))
    offsets = sorted(shifts["offset"].unique())
    sets = list(dict.fromkeys(shifts["heads"]))  # single heads first, then "all"
    ncols = max(3, len(sets) + 1)
    sns.set_theme(style="white", context="paper")
    fig, axes = plt.subplots(len(offsets) + 1, ncols, figsize=(3.0 * ncols, 2.7 * (len(offsets) + 1)), squeeze=False)
    sub = shifts[shifts["scale"] == at]
    lim = max(1e-6, float(np.nanmax(np.abs(sub["shift"])))) if not sub.empty else 1.0
    for r, k in enumerate(offsets):
        for c, label in enumerate(sets):
            ax = axes[r][c]
            g = sub[(sub["offset"] == k) & (sub["heads"] == label)]
            grid = g.pivot_table(index="input", columns="output", values="shift").reindex(index=range(10),
                                                                                           columns=range(10))
            sns.heatmap(grid, ax=ax, cmap="RdBu_r", vmin=-lim, vmax=lim, center=0, cbar=c == len(sets) - 1,
                        square=True)
            for i in range(10):  # the +k diagonal
                if 0 <= i + k <= 9:
                    ax.add_patch(plt.Rectangle((i + k, i), 1, 1, fill=False, edgecolor="black", lw=0.8))
            name = "all FI heads" if label == "all" else f"head {label}"
            ax.set_title(f"k={k:+d} vector of {name}, x{at:g}", fontsize=8)
            ax.set_xlabel("output digit", fontsize=7)
            ax.set_ylabel("input i", fontsize=7)
        ax = axes[r][len(sets)]
        e = effects[(effects["offset"] == k) & (effects["measured_offset"] == k)]
        sns.lineplot(data=e, x="scale", y="effect", hue="heads", hue_order=sets, marker="o", ax=ax, legend=r == 0)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(f"+k effect (k={k:+d}) against scale", fontsize=8)
        for ax in axes[r][len(sets) + 1:]:
            ax.axis("off")
    ax = axes[-1][0]
    shares = effects[effects["share"].notna() & (effects["scale"] == at)]
    if not shares.empty:
        sns.barplot(data=shares, x="offset", y="share", hue="heads", ax=ax)
        ax.axhline(1, color="grey", lw=0.6, ls=":")
    ax.set_title(f"share of the all-heads +k effect (x{at:g})", fontsize=8)
    ax = axes[-1][1]
    e = effects[(effects["heads"] == "all") & (effects["scale"] == at)]
    sns.lineplot(data=e, x="measured_offset", y="effect", hue="offset", marker="o", palette="coolwarm", ax=ax)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_title(f"all FI heads (x{at:g}): +j effect of each k vector", fontsize=8)
    ax = axes[-1][2]
    source = ""
    if "group" in every.columns:
        at_k = (every["heads"] == "all") & (every["scale"] == at) & (every["measured_offset"] == every["offset"])
        compared = every[at_k].assign(set=set_label)
        sns.barplot(data=compared, x="offset", y="effect", hue="set", ax=ax)
        ax.legend(fontsize=6, title=None)
        ax.axhline(0, color="grey", lw=0.6)
        source = f", heads from the {shifts['head_source'].iloc[0]}" if not shifts.empty else ""
    ax.set_title(f"+k effect of each vector set's heads together (x{at:g})", fontsize=8)
    for ax in axes[-1][3:]:
        ax.axis("off")
    fig.suptitle(f"{shifts['model'].iloc[0]}: function vectors of the FI heads{source} "
                 f"(digit-logit shift, patched - clean; boxed: input + k)", y=1.0)
    fig.tight_layout()
    save_figure(fig, output, dpi)


# ---- training dynamics -------------------------------------------------------------------------------

@one_figure_at_a_time()
def plot_dynamics(table: pd.DataFrame, formation: pd.DataFrame, output: str, dpi: int = 120) -> None:
    """One model's dynamics: accuracy and held-out loss per source against step (every run, the band
    over seeds), then per head (baseline run): path score to the output with -threshold dashed and
    each head's formation step marked, attention from the query to the demos' answers, and
    previous-token / induction scores."""
    if table.empty:
        raise ValueError("no dynamics rows to plot")
    cells = table[table["measure"] == "cf_acc"][["task", "variant", "shots"]].drop_duplicates()
    cell = cells.iloc[0] if len(cells) else None
    in_cell = table if cell is None else table[(table["task"] == cell["task"]) & (table["variant"] == cell["variant"])
                                                & (table["shots"] == cell["shots"])]
    base = table[table["run"] == "baseline"] if (table["run"] == "baseline").any() else table
    base_cell = in_cell[in_cell["run"].isin(base["run"].unique())]
    head_label = lambda d: d.assign(head_id=[f"L{a}H{b}" for a, b in zip(d["layer"], d["head"])])  # noqa: E731
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    acc = in_cell[in_cell["measure"].isin(["cf_acc", "orig_acc"])]
    sns.lineplot(acc, x="step", y="value", hue="run", style="measure", marker="o", errorbar=("pi", 100), ax=axes[0, 0])
    where = "" if cell is None else f"\n{cell['task']} {cell['variant']}, {cell['shots']} shots"
    axes[0, 0].set(title="discovery cell accuracy" + where,
                   ylabel="accuracy", ylim=(-0.03, 1.03))
    loss = table[table["measure"].str.startswith("heldout_loss_")].assign(
        source=lambda d: d["measure"].str.removeprefix("heldout_loss_"))
    sns.lineplot(loss, x="step", y="value", hue="source", style="run", marker="o", errorbar=("pi", 100), ax=axes[0, 1])
    axes[0, 1].set(title="held-out loss per data source", ylabel="answer-token loss", yscale="log")
    path = head_label(base_cell[base_cell["measure"] == "path_output"])
    sns.lineplot(path, x="step", y="value", hue="head_id", marker="o", errorbar=("pi", 100), ax=axes[0, 2])
    palette = dict(zip(path["head_id"].unique(), sns.color_palette(n_colors=path["head_id"].nunique())))
    if len(formation):
        thr = float(formation["threshold"].iloc[0])
        axes[0, 2].axhline(-thr, ls="--", color="grey", lw=1)
        f = formation[formation["run"].isin(base["run"].unique())]
        if cell is not None:
            f = f[(f["task"] == cell["task"]) & (f["variant"] == cell["variant"]) & (f["shots"] == cell["shots"])]
        for r in head_label(f).dropna(subset=["formation_step"]).groupby("head_id")["formation_step"].median().items():
            axes[0, 2].axvline(r[1], color=palette.get(r[0], "k"), ls=":", lw=1.5)
            axes[0, 2].annotate(f"{r[0]} FI @ {r[1]:g}", (r[1], -thr), rotation=90, fontsize=7, va="top")
    axes[0, 2].set(title="path patching to the output (FI-head score)\n(dotted: formation step)", ylabel="normalised score")
    att = head_label(base_cell[base_cell["measure"] == "attn_query_answers"])
    sns.lineplot(att, x="step", y="value", hue="head_id", marker="o", errorbar=("pi", 100), ax=axes[1, 0], palette=palette)
    axes[1, 0].set(title="attention from the query '=' to the demos' answers", ylabel="attention mass")
    for ax, measure, title in ((axes[1, 1], "previous_token_score", "previous-token score"),
                               (axes[1, 2], "induction_score", "induction score")):
        d = head_label(base[base["measure"] == measure])
        sns.lineplot(d, x="step", y="value", hue="head_id", marker="o", errorbar=("pi", 100), ax=ax, palette=palette)
        ax.set(title=title, ylabel="score", ylim=(-0.03, 1.03))
    for ax in axes.flat:
        if ax.get_legend() is not None:
            ax.legend(fontsize=7)
    fig.suptitle(f"{table['model'].iloc[0]}: training dynamics (bands: range over seeds)")
    fig.tight_layout()
    save_figure(fig, output, dpi)


def plot_model_dynamics(table: str, formation: str, model: str, output: str, dpi: int = 120) -> None:
    """The plot_dynamics rule: one model's rows of the dynamics tables, drawn."""
    df = pd.read_parquet(table)
    f = pd.read_parquet(formation)
    plot_dynamics(df[df["model"] == model], f[f["model"] == model] if len(f) else f, output, dpi)
