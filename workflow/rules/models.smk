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
    # one thread: bit-identical weights to two (tests/test_dynamics.py) and faster at this model size
    # (bench/bench_training.py: OpenMP threads spin-wait on tiny ops)
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        code=code_hash("train_model"),
        train=train_params,
    script:
        "../scripts/train_model.py"
