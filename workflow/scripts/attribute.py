from fi.stages import attribute, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, attribute, model=sm.params.model, task=sm.wildcards.task, variant=sm.wildcards.variant,
               shots=int(sm.wildcards.shots), dataset=sm.input.dataset, output=sm.output[0],
               attribution=sm.params.attribution, device=sm.resources.device, threads=sm.threads)
