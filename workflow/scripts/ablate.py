from fi.stages import ablate, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, ablate, model=sm.params.model, task=sm.wildcards.task, variant=sm.wildcards.variant,
               shots=int(sm.wildcards.shots), dataset=sm.input.dataset, heads_file=sm.input.heads,
               output=sm.output[0], ablation=sm.params.ablation, batch_size=sm.resources.batch_size,
               device=sm.resources.device, threads=sm.threads)
