# Evaluate: one job per (model, task variant, shots) cell; per-example scores. A model with
# `evaluate_jobs: task` evaluates its cells in one job per task family instead (one model load).


rule evaluate:
    input:
        unpack(model_inputs),
        dataset=PATHS["dataset"],
    output:
        PATHS["eval"],
    log:
        "logs/evaluate/{model}/{task}/{variant}/shots{shots}.log",
    wildcard_constraints:
        model=models_evaluated_per("cell"),
    threads: 1
    resources:
        **model_resources("evaluate", batched=True),
    params:
        code=code_hash("evaluate"),
        model=model_params,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


rule evaluate_task:
    input:
        unpack(evaluate_task_inputs),
    output:
        PATHS["eval_task"],
    log:
        "logs/evaluate_task/{model}/{task}.log",
    wildcard_constraints:
        model=models_evaluated_per("task"),
    threads: 1
    resources:
        **model_resources("evaluate_task", batched=True),
    params:
        code=code_hash("evaluate_task"),
        model=model_params,
        # the family's cells: adding one reruns this job (and only this one)
        cells=task_cells_params,
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
