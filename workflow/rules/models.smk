# The built-in model: a small HF checkpoint trained on synthetic function-induction data.


rule train_model:
    output:
        directory("results/models/{model}"),
    params:
        code=script_code("train_model"),
        train=lambda wc: MODELS[wc.model].cfg["train"],
    wildcard_constraints:
        model=BUILTIN_MODELS,
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        "logs/train_model/{model}.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/train_model.py"
