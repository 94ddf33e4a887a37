from fi.stages import evaluate, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, evaluate, model=sm.params.model, task=sm.wildcards.task,
               variant=sm.wildcards.variant, shots=int(sm.wildcards.shots), dataset=sm.input.dataset,
               output=sm.output[0], batch_size=sm.resources.batch_size, device=sm.resources.device,
               threads=sm.threads)
