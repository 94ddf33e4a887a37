# FI heads per model: from the discovery cell's attribution, or given in config.


rule discover_heads:
    input:
        unpack(discovery_inputs),
    output:
        PATHS["heads"],
    log:
        "logs/discover_heads/{model}.log",
    priority: CIRCUIT_CHAIN_PRIORITY
    resources:
        **model_resources("discover_heads"),
    params:
        code=code_hash("discover_heads"),
        model=model_params,
        discovery=config_slice("discovery", "heads"),
        explicit=explicit_heads,
        min_ld_gap=config["min_ld_gap"],
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
