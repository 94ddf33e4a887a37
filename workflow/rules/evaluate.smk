# Evaluate: one job per (model, task variant, shots) cell; per-example scores.


rule evaluate:
    input:
        unpack(model_inputs),
        dataset="results/datasets/{task}/{variant}.jsonl",
    output:
        "results/eval/{model}/{task}/{variant}/shots{shots}.parquet",
    params:
        code=script_code("evaluate"),
        # device and batch size change no number, so they are resources, not rerun triggers
        model=lambda wc: MODELS[wc.model].load_params,
    threads: 1
    resources:
        mem_mb=lambda wc: grid.job_resources(MODELS[wc.model], "evaluate")["mem_mb"],
        runtime=lambda wc, attempt: grid.job_resources(MODELS[wc.model], "evaluate", attempt)["runtime"],
        gpu=lambda wc: grid.job_resources(MODELS[wc.model], "evaluate")["gpu"],
        batch_size=lambda wc, attempt: max(1, MODELS[wc.model].cfg["batch_size"] // 2 ** (attempt - 1)),
        device=lambda wc: MODELS[wc.model].cfg["device"],
    log:
        "logs/evaluate/{model}/{task}/{variant}/shots{shots}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/evaluate.py"
