# Datasets: one jsonl file per task variant, drawn with the paper's seeded recipe.


rule dataset:
    output:
        "results/datasets/{task}/{variant}.jsonl",
    params:
        code=script_code("dataset"),
        # only what one file depends on: adding an offset does not touch the other files
        generation=lambda wc: get_family(wc.task).generation_params(task_cfg(wc.task)),
    log:
        "logs/dataset/{task}/{variant}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/dataset.py"
