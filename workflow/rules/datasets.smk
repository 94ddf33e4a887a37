# Datasets: one jsonl file per task variant, drawn with the paper's seeded recipe.


rule dataset:
    output:
        PATHS["dataset"],
    log:
        "logs/dataset/{task}/{variant}.log",
    params:
        code=code_hash("dataset"),
        generation=dataset_params,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
