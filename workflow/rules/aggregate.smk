# Aggregate: every cell into the grid's tables.


rule aggregate:
    input:
        evaluation_outputs(config),
    output:
        table=PATHS["accuracy_table"],
        paper=PATHS["paper_table"],
        predictions=PATHS["predictions_table"],
    log:
        "logs/aggregate.log",
    params:
        code=code_hash("aggregate"),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))


# The run's headline findings from its tables, and their provenance (fi.report.summary).
rule summary:
    input:
        unpack(summary_inputs),
    output:
        summary=report(PATHS["summary"], caption="../report/summary.rst", category="0 Summary"),
        provenance=PATHS["provenance"],
    log:
        "logs/summary.log",
    params:
        code=code_hash("summary"),
        seeds=seeds_of(config),
    run:
        run_job(rule, Job(input, output, params, wildcards, threads, resources, log))
