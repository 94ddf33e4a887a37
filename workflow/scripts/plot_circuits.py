from fi.stages import from_snakemake, plot_circuits

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, plot_circuits, evaluation_table=sm.input.evaluation, overlap_table=sm.input.overlap,
               evaluation_plot=sm.output.evaluation, overlap_plot=sm.output.overlap, plots=sm.params.plots)
