# Datasets: one jsonl file per task variant, drawn with the paper's seeded recipe.


rule dataset:
    output:
        PATHS["dataset"],
    log:
        "logs/dataset/{task}/{variant}.log",
    params:
        code=code_hash("dataset"),
        generation=dataset_params,
    run:
        in_process("../scripts/dataset.py", locals())
