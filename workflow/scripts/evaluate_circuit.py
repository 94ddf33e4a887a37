from fi.stages import evaluate_circuit, from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, evaluate_circuit, model=sm.params.model, circuit_file=sm.input.circuit, dataset=sm.input.dataset,
               output=sm.output.evaluation, paper_json=sm.output.completeness, circuit=sm.params.circuit,
               generation=sm.params.generation, min_ld_gap=sm.params.min_ld_gap,
               device=sm.resources.device, threads=sm.threads)
