# Aggregate: every cell into the grid's tables.


rule aggregate:
    input:
        [eval_path(c) for c in CELLS],
    output:
        table=PATHS["accuracy_table"],
        paper=PATHS["paper_table"],
        predictions=PATHS["predictions_table"],
    log:
        "logs/aggregate.log",
    params:
        code=code_hash("aggregate"),
    run:
        in_process("../scripts/aggregate.py", locals())
