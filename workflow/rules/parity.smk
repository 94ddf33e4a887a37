# Parity (optional target, not part of `all`): our TransformerBridge logits against plain
# transformers for every configured model, in its configured dtype (fi/parity.py).
#   snakemake --cores 1 results/tables/parity.csv


def parity_inputs(wildcards):
    """Every model's folder (built-in: a job output) or local checkpoint's config.json."""
    out = []
    for m in MODELS.values():
        if m.builtin or m.gguf:
            out.append(m.path)
        elif m.path:
            out.append(f"{m.path}/config.json")
    return out


def parity_resources(key, attempt=1):
    per_model = [grid.job_resources(m, "parity", attempt)[key] for m in MODELS.values()]
    # the models are compared one after the other: the largest one's memory and GPUs, all their time
    return sum(per_model) if key == "runtime" else max(per_model)


rule parity:
    input:
        parity_inputs,
    output:
        "results/tables/parity.csv",
    params:
        code=script_code("parity"),
        models=[{**m.load_params, "device": m.cfg["device"]} for m in MODELS.values()],
    threads: 1
    resources:
        mem_mb=lambda wc: parity_resources("mem_mb"),
        runtime=lambda wc, attempt: parity_resources("runtime", attempt),
        gpu=lambda wc: parity_resources("gpu"),
    log:
        "logs/parity.log",
    conda:
        "../../envs/fi.yaml"
    script:
        "../scripts/parity.py"
