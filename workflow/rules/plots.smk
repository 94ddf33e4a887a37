# Plots: accuracy against shots (the paper's Figure 1 style), one figure per task.


rule plot_accuracy:
    input:
        "results/tables/accuracy.parquet",
    output:
        report(
            "results/plots/accuracy_{task}.{ext}",
            caption="../report/accuracy.rst",
            category="Accuracy",
        ),
    params:
        code=script_code("plot_accuracy"),
        plots=config["plots"],
    log:
        "logs/plot_accuracy/{task}.{ext}.log",
    wildcard_constraints:
        ext="png|pdf|svg",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/plot_accuracy.py"
