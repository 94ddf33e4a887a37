# Training dynamics of the built-in models (fi/dynamics.py, issue 13): progress measures on every
# checkpoint of the model's own training (run `baseline`) and of the runs in `dynamics.runs`
# (clamps during training, other data settings), at the model's seed and each of dynamics.seeds.
import fi.dynamics as dyn

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
    return ["results/tables/dynamics.parquet", "results/tables/dynamics_formation.parquet"] + [
        f"results/plots/dynamics_{m}.{fmt}" for m in models]


def dyn_train_inputs(wc):
    run = dyn_run(wc)
    inputs = {}
    if dyn.reference_steps(run):
        inputs["baseline"] = run.baseline(DYN_RUNS).folder
    if dyn.needs_fi_heads(run):
        inputs["fi_heads"] = heads_path(run.model)
    return inputs


def dyn_measure_inputs(wc):
    return {"run": dyn_run(wc).folder, "datasets": [dataset_path(c["task"], c["variant"]) for c in DYN_CELLS]}


wildcard_constraints:
    run="[A-Za-z0-9_-]+",
    seed=r"\d+",
    step=r"\d+",


rule train_dynamics_run:
    input:
        unpack(dyn_train_inputs),
    output:
        directory("results/dynamics/{model}/runs/{run}/seed{seed}"),
    params:
        code=code_hash("dynamics_train"),
        train=lambda wc: dyn_run(wc).train,
        clamps=lambda wc: dyn.clamp_entries(dyn_run(wc)),
    threads: 1  # bit-identical to 2 threads, and faster on this model size (bench/bench_training.py)
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        "logs/train_dynamics_run/{model}/{run}/seed{seed}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/dynamics_train.py"


rule measure_checkpoint:
    input:
        unpack(dyn_measure_inputs),
    output:
        "results/dynamics/{model}/measures/{run}/seed{seed}/step{step}.parquet",
    params:
        code=code_hash("dynamics_measure"),
        train=lambda wc: dyn_run(wc).train,
        cells=DYN_CELLS,
        head_types=config["head_types"],
        dynamics={k: config["dynamics"][k] for k in ("max_examples", "batch_size")},
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    log:
        "logs/measure_checkpoint/{model}/{run}/seed{seed}/step{step}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/dynamics_measure.py"


rule aggregate_dynamics:
    input:
        dynamics_measures(),
    output:
        table="results/tables/dynamics.parquet",
        formation="results/tables/dynamics_formation.parquet",
    params:
        code=code_hash("dynamics_aggregate"),
        threshold=config["dynamics"]["threshold"],
        min_gap=config["dynamics"]["min_ld_gap"],
    log:
        "logs/aggregate_dynamics.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/dynamics_aggregate.py"


rule plot_dynamics:
    input:
        table="results/tables/dynamics.parquet",
        formation="results/tables/dynamics_formation.parquet",
    output:
        "results/plots/dynamics_{model}.{ext}",
    params:
        code=code_hash("dynamics_plot"),
        dpi=config["plots"]["dpi"],
    wildcard_constraints:
        ext="png|pdf|svg",
    log:
        "logs/plot_dynamics/{model}.{ext}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/dynamics_plot.py"
