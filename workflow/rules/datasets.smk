# Datasets: one jsonl file per task variant, drawn with the paper's seeded recipe.


rule dataset:
    output:
        PATHS["dataset"],
    log:
        "logs/dataset/{task}/{variant}.log",
    conda:
        "../../envs/fi.yaml"
    params:
        code=code_hash("dataset"),
        generation=dataset_params,
    script:
        "../scripts/dataset.py"
