from fi.stages import draw_circuit, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, draw_circuit, model=sm.params.model, circuit_file=sm.input.circuit, dataset=sm.input.dataset,
               diagram=sm.output.diagram, attention_plot=sm.output.attention_plot,
               attention_html=sm.output.attention_html, circuit=sm.params.circuit, device=sm.resources.device,
               threads=sm.threads)
