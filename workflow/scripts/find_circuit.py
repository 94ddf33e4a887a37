from fi.stages import find_circuit, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, find_circuit, model=sm.params.model, task=sm.wildcards.task, variant=sm.wildcards.variant,
               shots=int(sm.wildcards.shots), dataset=sm.input.dataset, output=sm.output[0],
               circuit=sm.params.circuit, explicit=sm.params.explicit, min_ld_gap=sm.params.min_ld_gap,
               device=sm.resources.device, threads=sm.threads)
