# The built-in model: a small HF checkpoint trained on synthetic function-induction data.


rule train_model:
    output:
        directory(PATHS["model"]),
    log:
        "logs/train_model/{model}.log",
    wildcard_constraints:
        model=BUILTIN_MODELS,
    conda:
        "../../envs/fi.yaml"
    # two threads: the same weights bit for bit as one (tests/test_dynamics.py), 1.5x faster on
    # an idle machine, and no other job can run before the model exists; the Snakefile makes OpenMP
    # wait passively, so a shared core does not make it spin (bench/bench_training.py)
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_hash("train_model"),
        train=train_params,
    script:
        "../scripts/own_process.py"
