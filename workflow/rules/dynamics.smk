# Training dynamics of the built-in models (fi/methods/dynamics.py, issue 13): progress measures on every
# checkpoint of the model's own training (run `baseline`) and of the runs in `dynamics.runs`
# (clamps during training, other data settings), at the model's seed and each of dynamics.seeds. A
# clamped run's checkpoints are measured through the clamps active at their step (the run folder's
# clamps.json; fi.engine.clamping.active_at_checkpoint).


wildcard_constraints:
    run="[A-Za-z0-9_-]+",
    seed=r"\d+",
    step=r"\d+",


rule train_dynamics_run:
    input:
        unpack(dyn_train_inputs),
    output:
        directory(PATHS["dynamics_run"]),
    log:
        "logs/train_dynamics_run/{model}/{run}/seed{seed}.log",
    conda:
        "../../envs/fi.yaml"
    threads: 1  # bit-identical to 2 threads, and faster on this model size (bench/bench_training.py)
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_hash("train_dynamics_run"),
        train=lambda wc: dyn_run(wc).train,
        clamps=lambda wc: dyn.clamp_entries(dyn_run(wc)),
        discovery=config["discovery"],
    script:
        "../scripts/own_process.py"


rule measure_checkpoint:
    input:
        unpack(dyn_measure_inputs),
    output:
        PATHS["dynamics_measures"],
    log:
        "logs/measure_checkpoint/{model}/{run}/seed{seed}/step{step}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        code=code_hash("measure_checkpoint"),
        train=lambda wc: dyn_run(wc).train,
        cells=DYN_CELLS,
        head_types=config["head_types"],
        dynamics={k: config["dynamics"][k] for k in ("max_examples", "batch_size")},
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule aggregate_dynamics:
    input:
        dynamics_measures(),
    output:
        table=PATHS["dynamics_table"],
        formation=PATHS["dynamics_formation_table"],
        summary=PATHS["dynamics_summary_table"],
    log:
        "logs/aggregate_dynamics.log",
    params:
        code=code_hash("aggregate_dynamics"),
        threshold=config["dynamics"]["threshold"],
        min_gap=config["dynamics"]["min_ld_gap"],
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule plot_dynamics:
    input:
        table=rules.aggregate_dynamics.output.table,
        formation=rules.aggregate_dynamics.output.formation,
    output:
        PATHS["dynamics_plot"],
    log:
        "logs/plot_dynamics/{model}.{ext}.log",
    wildcard_constraints:
        ext="png|pdf|svg",
    params:
        code=code_hash("plot_dynamics"),
        dpi=config["plots"]["dpi"],
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
