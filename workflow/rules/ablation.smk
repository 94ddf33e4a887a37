# FI-head ablation across task families: one job per ablation cell, all head sets and modes inside.


rule ablate:
    input:
        unpack(model_inputs),
        dataset=PATHS["dataset"],
        heads=PATHS["heads"],
    output:
        PATHS["ablation"],
    log:
        "logs/ablate/{model}/{task}/{variant}/shots{shots}.log",
    conda:
        "../../envs/fi.yaml"
    threads: 1
    resources:
        **model_resources("ablate", batched=True),
    params:
        code=code_hash("ablate"),
        model=model_params,
        ablation=config_slice("ablation", "shots", "variants"),
    script:
        "../scripts/ablate.py"


rule aggregate_ablation:
    input:
        [ablation_path(c) for c in ABLATION_CELLS],
    output:
        PATHS["ablation_table"],
    log:
        "logs/aggregate_ablation.log",
    conda:
        "../../envs/fi.yaml"
    params:
        code=code_hash("aggregate_ablation"),
    script:
        "../scripts/aggregate_ablation.py"


rule plot_ablation:
    input:
        PATHS["ablation_table"],
    output:
        report(
            PATHS["ablation_plot"],
            caption="../report/ablation.rst",
            category="Task generalization",
        ),
    log:
        "logs/plot_ablation.{ext}.log",
    wildcard_constraints:
        ext="png|pdf|svg",
    conda:
        "../../envs/fi.yaml"
    params:
        code=code_hash("plot_ablation"),
        plots=PLOT_DPI,
    script:
        "../scripts/plot_ablation.py"
