from fi.gguf import convert_gguf
from fi.stages import from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
src = sm.params.source
from_snakemake(sm, convert_gguf, model=sm.params.name, source=sm.input.get("gguf", src.get("file")),
               output=sm.output[0], expected_sha256=src.get("sha256"), package=src.get("package"),
               version=src.get("version"))
