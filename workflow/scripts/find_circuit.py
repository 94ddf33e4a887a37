from fi.stages import find_circuit, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, find_circuit, model=sm.params.model, task=sm.wildcards.task, variant=sm.wildcards.variant,
               shots=int(sm.wildcards.shots), dataset=sm.input.dataset, output=sm.output.circuit,
               diagram=sm.output.diagram, attention_plot=sm.output.attention_plot,
               attention_html=sm.output.attention_html, circuit=sm.params.circuit, explicit=sm.params.explicit,
               device=sm.resources.device, threads=sm.threads)
