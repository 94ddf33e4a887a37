# The script of the rules that run in a process of their own (`script:`): the trainings, GGUF
# conversions and parity seed torch's global generator or hold GBs, and 5 s of imports is nothing
# beside them.
# Every other rule runs the same adapters from `run:` (fi_workflow.run).
from fi_workflow.run import run_script

run_script(snakemake)  # noqa: F821 (injected by Snakemake)
