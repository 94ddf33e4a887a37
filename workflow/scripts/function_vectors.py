from fi.stages import from_snakemake, function_vectors

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, function_vectors, model=sm.params.model, heads_file=sm.input.heads,
               datasets=list(sm.input.datasets), output=sm.output[0], params=sm.params.function_vectors,
               circuit_file=sm.input.get("circuit"), device=sm.resources.device, threads=sm.threads)
