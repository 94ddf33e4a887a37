# FI-head ablation across task families: one job per ablation cell, all head sets and modes inside.


rule ablate:
    input:
        unpack(model_inputs),
        dataset="results/datasets/{task}/{variant}.jsonl",
        heads="results/heads/{model}.json",
    output:
        "results/ablation/{model}/{task}/{variant}/shots{shots}.parquet",
    params:
        code=script_code("ablate"),
        model=lambda wc: MODELS[wc.model].load_params,
        ablation={k: v for k, v in config["ablation"].items() if k not in ("shots", "variants")},
    threads: 1
    resources:
        mem_mb=lambda wc: grid.job_resources(MODELS[wc.model], "ablate")["mem_mb"],
        runtime=lambda wc, attempt: grid.job_resources(MODELS[wc.model], "ablate", attempt)["runtime"],
        gpu=lambda wc: grid.job_resources(MODELS[wc.model], "ablate")["gpu"],
        batch_size=lambda wc, attempt: max(1, MODELS[wc.model].cfg["batch_size"] // 2 ** (attempt - 1)),
        device=lambda wc: MODELS[wc.model].cfg["device"],
    log:
        "logs/ablate/{model}/{task}/{variant}/shots{shots}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/ablate.py"


rule aggregate_ablation:
    input:
        [grid.ablation_path(c) for c in ABLATION_CELLS],
    output:
        "results/tables/ablation.parquet",
    params:
        code=script_code("aggregate_ablation"),
    log:
        "logs/aggregate_ablation.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/aggregate_ablation.py"


rule plot_ablation:
    input:
        "results/tables/ablation.parquet",
    output:
        report(
            "results/plots/task_generalization.{ext}",
            caption="../report/ablation.rst",
            category="Task generalization",
        ),
    params:
        code=script_code("plot_ablation"),
        plots={"dpi": config["plots"]["dpi"]},  # the reference curves are for accuracy plots only
    wildcard_constraints:
        ext="png|pdf|svg",
    log:
        "logs/plot_ablation.{ext}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/plot_ablation.py"
