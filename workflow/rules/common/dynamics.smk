# What only the dynamics stage's rules need (workflow/rules/dynamics.smk): kept apart from its rules, as
# Snakemake's linter asks, and from common.smk, which holds what the stages share.
import fi.plan.dynamics_runs as dyn

DYN_RUNS = dyn.runs(config)
DYN_RUN = {(r.model, r.name, r.seed): r for r in DYN_RUNS}
DYN_CELLS = [config["discovery"]["cell"]] + list(config["dynamics"]["cells"])


def dyn_run(wc):
    return DYN_RUN[(wc.model, wc.run, int(wc.seed))]


def dynamics_measures(model=None):
    return [r.measures_path(k) for r in DYN_RUNS if model in (None, r.model) for k in r.steps]


def dynamics_outputs():
    """The dynamics table, formation steps and one figure per built-in model with checkpoints (the
    default target's share; empty when dynamics.enabled is false or no model has checkpoints)."""
    if not config["dynamics"]["enabled"] or not dynamics_measures():
        return []
    fmt = config["plots"]["format"]
    models = sorted({r.model for r in DYN_RUNS if r.steps})
    tables = ["dynamics_table", "dynamics_formation_table", "dynamics_summary_table"]
    return [PATHS[t] for t in tables] + [
        PATHS["dynamics_plot"].format(model=m, ext=fmt) for m in models
    ]


def dyn_train_inputs(wc):
    run = dyn_run(wc)
    inputs = {}
    if dyn.reference_steps(run):
        inputs["baseline"] = run.baseline(DYN_RUNS).folder
    if dyn.needs_fi_heads(run):
        kind, path = dyn.fi_heads_source(run, DYN_RUNS)
        inputs[f"fi_{kind}"] = path
    if dyn.needs_cell_heads(run):
        inputs["fi_measures"] = dyn.baseline_final_measures(run, DYN_RUNS)
    return inputs


def dyn_measure_inputs(wc):
    return {
        "run": dyn_run(wc).folder,
        "datasets": [dataset_path(c["task"], c["variant"]) for c in DYN_CELLS],
    }
