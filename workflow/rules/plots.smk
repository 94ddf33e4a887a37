# Plots: accuracy against shots (the paper's Figure 1 style), one figure per task.


rule plot_accuracy:
    input:
        PATHS["accuracy_table"],
    output:
        report(
            PATHS["accuracy_plot"],
            caption="../report/accuracy.rst",
            category="Accuracy",
        ),
    log:
        "logs/plot_accuracy/{task}.{ext}.log",
    wildcard_constraints:
        ext="png|pdf|svg",
    params:
        code=code_hash("plot_accuracy"),
        plots=config["plots"],
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
