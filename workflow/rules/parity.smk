# Parity (optional target, not part of `all`): our TransformerBridge logits against plain
# transformers for every configured model, in its configured dtype (fi/methods/parity.py).
#   snakemake --cores 1 results/tables/parity.csv


rule parity:
    input:
        parity_inputs,
    output:
        PATHS["parity_table"],
    log:
        "logs/parity.log",
    conda:
        "../../envs/fi.yaml"
    threads: 1
    resources:
        **parity_resources(),
    params:
        code=code_hash("parity"),
        models=PARITY_MODELS,
    script:
        "../scripts/own_process.py"
