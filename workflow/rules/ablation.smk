# FI-head ablation across task families: one job per ablation cell, all head sets and modes inside.


rule ablate:
    input:
        unpack(model_inputs),
        dataset=PATHS["dataset"],
        heads=PATHS["heads"],
    output:
        PATHS["ablation"],
    log:
        "logs/ablate/{model}/{task}/{variant}/shots{shots}.log",
    threads: 1
    resources:
        **model_resources("ablate", batched=True),
    params:
        code=code_hash("ablate"),
        model=model_params,
        ablation=config_slice("ablation", "shots", "variants"),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule aggregate_ablation:
    input:
        [ablation_path(c) for c in ABLATION_CELLS],
    output:
        PATHS["ablation_table"],
    log:
        "logs/aggregate_ablation.log",
    params:
        code=code_hash("aggregate_ablation"),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule plot_ablation:
    input:
        PATHS["ablation_table"],
    output:
        report(
            PATHS["ablation_plot"],
            caption="../report/ablation.rst",
            category="Task generalization",
        ),
    log:
        "logs/plot_ablation.{ext}.log",
    wildcard_constraints:
        ext="png|pdf|svg",
    params:
        code=code_hash("plot_ablation"),
        plots=PLOT_DPI,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
