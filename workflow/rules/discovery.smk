# FI heads per model: from the discovery cell's attribution, or given in config.


rule discover_heads:
    input:
        unpack(discovery_inputs),
    output:
        "results/heads/{model}.json",
    params:
        model=lambda wc: MODELS[wc.model].load_params,
        discovery={k: v for k, v in config["discovery"].items() if k != "heads"},
        explicit=lambda wc: config["discovery"]["heads"].get(MODELS[wc.model].name),
    resources:
        device=lambda wc: MODELS[wc.model].cfg["device"],
    log:
        "logs/discover_heads/{model}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/discover_heads.py"
