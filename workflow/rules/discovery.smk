# FI heads per model: from the discovery cell's attribution, or given in config.


rule discover_heads:
    input:
        unpack(discovery_inputs),
    output:
        "results/heads/{model}.json",
    params:
        code=script_code("discover_heads"),
        model=lambda wc: MODELS[wc.model].load_params,
        discovery={k: v for k, v in config["discovery"].items() if k != "heads"},
        explicit=lambda wc: config["discovery"]["heads"].get(MODELS[wc.model].name),
    resources:
        mem_mb=lambda wc: grid.job_resources(MODELS[wc.model], "discover_heads")["mem_mb"],
        runtime=lambda wc, attempt: grid.job_resources(MODELS[wc.model], "discover_heads", attempt)["runtime"],
        gpu=lambda wc: grid.job_resources(MODELS[wc.model], "discover_heads")["gpu"],
        device=lambda wc: MODELS[wc.model].cfg["device"],
    log:
        "logs/discover_heads/{model}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/discover_heads.py"
