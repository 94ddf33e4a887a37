# Aggregate: every cell into the grid's tables.


rule aggregate:
    input:
        [grid.eval_path(c) for c in CELLS],
    output:
        table="results/tables/accuracy.parquet",
        paper="results/tables/accuracy_paper_format.csv",
        predictions="results/tables/predictions.parquet",
    params:
        code=script_code("aggregate"),
    log:
        "logs/aggregate.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/aggregate.py"
