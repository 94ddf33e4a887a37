# Evaluate: one job per (model, task variant, shots) cell; per-example scores.


rule evaluate:
    input:
        unpack(model_inputs),
        dataset=PATHS["dataset"],
    output:
        PATHS["eval"],
    log:
        "logs/evaluate/{model}/{task}/{variant}/shots{shots}.log",
    threads: 1
    resources:
        **model_resources("evaluate", batched=True),
    params:
        code=code_hash("evaluate"),
        model=model_params,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
