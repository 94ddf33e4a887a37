from fi.stages import from_snakemake
from fi.summary import write_summary

sm = snakemake  # noqa: F821 (injected by Snakemake)
from_snakemake(sm, write_summary, output=sm.output.summary, provenance_output=sm.output.provenance,
               seeds=sm.params.seeds, accuracy=sm.input.accuracy, heads_files=list(sm.input.heads),
               ablation=sm.input.get("ablation"), circuit_heads=sm.input.get("circuit_heads"),
               circuit_evaluation=sm.input.get("circuit_evaluation"),
               circuit_overlap=sm.input.get("circuit_overlap"),
               circuit_evaluations=list(sm.input.get("circuit_evaluations", [])),
               function_vector_effects=sm.input.get("function_vector_effects"),
               tables=list(sm.input.get("tables", [])))
