# Head attribution (activation, path and attribution patching) and head types, per model.


rule attribute:
    input:
        unpack(model_inputs),
        dataset="results/datasets/{task}/{variant}.jsonl",
    output:
        "results/attribution/{model}/{task}/{variant}/shots{shots}.parquet",
    params:
        code=script_code("attribute"),
        model=lambda wc: MODELS[wc.model].load_params,
        attribution={k: v for k, v in config["attribution"].items() if k != "cells"},
    threads: 2
    resources:
        mem_mb=lambda wc: grid.job_resources(MODELS[wc.model], "attribute")["mem_mb"],
        runtime=lambda wc, attempt: grid.job_resources(MODELS[wc.model], "attribute", attempt)["runtime"],
        gpu=lambda wc: grid.job_resources(MODELS[wc.model], "attribute")["gpu"],
        device=lambda wc: MODELS[wc.model].cfg["device"],
    log:
        "logs/attribute/{model}/{task}/{variant}/shots{shots}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/attribute.py"


rule head_types:
    input:
        unpack(model_inputs),
    output:
        "results/head_types/{model}.parquet",
    params:
        code=script_code("head_types"),
        model=lambda wc: MODELS[wc.model].load_params,
        head_types=config["head_types"],
    resources:
        mem_mb=lambda wc: grid.job_resources(MODELS[wc.model], "head_types")["mem_mb"],
        runtime=lambda wc, attempt: grid.job_resources(MODELS[wc.model], "head_types", attempt)["runtime"],
        gpu=lambda wc: grid.job_resources(MODELS[wc.model], "head_types")["gpu"],
        device=lambda wc: MODELS[wc.model].cfg["device"],
    log:
        "logs/head_types/{model}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/head_types.py"


rule aggregate_attribution:
    input:
        cells=[grid.attribution_path(c) for c in ATTRIBUTION_CELLS],
        head_types=[grid.head_types_path(m) for m in MODELS],
        heads=[grid.heads_path(m) for m in MODELS],
    output:
        "results/tables/head_attribution.parquet",
    params:
        code=script_code("aggregate_attribution"),
    log:
        "logs/aggregate_attribution.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/aggregate_attribution.py"


rule plot_heads:
    input:
        "results/tables/head_attribution.parquet",
    output:
        report(
            "results/plots/heads_{model}.{ext}",
            caption="../report/heads.rst",
            category="Head attribution",
        ),
    params:
        code=script_code("plot_heads"),
        model_name=lambda wc: MODELS[wc.model].name,
        plots={"dpi": config["plots"]["dpi"]},  # the reference curves are for accuracy plots only
    wildcard_constraints:
        ext="png|pdf|svg",
    log:
        "logs/plot_heads/{model}.{ext}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/plot_heads.py"
