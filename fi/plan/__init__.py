"""What to run, torch-free: the config (schema, defaults, checks), the grid of cells and the paths
of every output, the task families, per-job resources and model-name checks. The Snakefile imports
only this layer (and fi_workflow), so planning the DAG loads no model library."""
