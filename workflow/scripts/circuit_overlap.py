from fi.stages import circuit_overlap, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, circuit_overlap, model=sm.params.model, circuit_files=list(sm.input.circuits),
               datasets=list(sm.input.datasets), output=sm.output[0], ablation=sm.params.ablation,
               batch_size=sm.resources.batch_size, device=sm.resources.device, threads=sm.threads)
