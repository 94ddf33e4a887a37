# Head attribution (activation, path and attribution patching) and head types, per model.


rule attribute:
    input:
        unpack(model_inputs),
        dataset=PATHS["dataset"],
    output:
        PATHS["attribution"],
    log:
        "logs/attribute/{model}/{task}/{variant}/shots{shots}.log",
    priority: CIRCUIT_CHAIN_PRIORITY
    # one thread, as every other model job: a 2-thread job waits for both cores to be free, which
    # with dozens of 1-thread evaluate jobs ready happens only after the last of them, and the
    # chain behind it (discover_heads, ablate) then ends the run
    threads: 1
    resources:
        **model_resources("attribute"),
    params:
        code=code_hash("attribute"),
        model=model_params,
        attribution=config_slice("attribution", "cells"),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule head_types:
    input:
        unpack(model_inputs),
    output:
        PATHS["head_types"],
    log:
        "logs/head_types/{model}.log",
    resources:
        **model_resources("head_types"),
    params:
        code=code_hash("head_types"),
        model=model_params,
        head_types=config["head_types"],
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule aggregate_attribution:
    input:
        cells=[attribution_path(c) for c in ATTRIBUTION_CELLS],
        head_types=[head_types_path(m) for m in MODELS],
        heads=[heads_path(m) for m in MODELS],
    output:
        PATHS["head_attribution_table"],
    log:
        "logs/aggregate_attribution.log",
    params:
        code=code_hash("aggregate_attribution"),
        min_ld_gap=config["min_ld_gap"],
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule plot_heads:
    input:
        PATHS["head_attribution_table"],
    output:
        report(
            PATHS["heads_plot"],
            caption="../report/heads.rst",
            category="Head attribution",
        ),
    log:
        "logs/plot_heads/{model}.{ext}.log",
    wildcard_constraints:
        ext="png|pdf|svg",
    params:
        code=code_hash("plot_heads"),
        model_name=model_name,
        plots=PLOT_DPI,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
