# Function vectors (the paper's section 3): the FI heads' mean output at the query of off-by-k
# prompts, added to naive prompts, beside the controls (the same heads on normal prompts, the
# circuit's other groups); per model, then one table and one figure per model.


rule function_vectors:
    input:
        unpack(function_vector_inputs),
        datasets=FV_DATASETS,
    output:
        PATHS["function_vectors"],
    log:
        "logs/function_vectors/{model}.log",
    threads: 1
    resources:
        **model_resources("function_vectors"),
    params:
        code=code_hash("function_vectors"),
        model=model_params,
        function_vectors=config_slice("function_vectors", "enabled"),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule aggregate_function_vectors:
    input:
        [PATHS["function_vectors"].format(model=m) for m in MODELS],
    output:
        table=PATHS["function_vectors_table"],
        effects=PATHS["function_vector_effects_table"],
    log:
        "logs/aggregate_function_vectors.log",
    params:
        code=code_hash("aggregate_function_vectors"),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule plot_function_vectors:
    input:
        PATHS["function_vectors"],
    output:
        report(
            PATHS["function_vectors_plot"],
            caption="../report/function_vectors.rst",
            category="Function vectors",
        ),
    log:
        "logs/plot_function_vectors/{model}.{ext}.log",
    wildcard_constraints:
        ext="png|pdf|svg",
    params:
        code=code_hash("plot_function_vectors"),
        plots=PLOT_DPI,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
