# What only the gguf stage's rules need (workflow/rules/gguf.smk): kept apart from its rules, as
# Snakemake's linter asks, and from common.smk, which holds what the stages share.
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
