# Input functions and wildcard constraints shared by every stage.
import fi.grid as grid
from fi.config import validate_config
from fi.tasks import get_family

# Bad config stops here, before any job, with a message naming the bad key and value; the schema
# (workflow/schemas/config.schema.yaml) also fills in every default.
try:
    validate_config(config, workflow.source_path("../schemas/config.schema.yaml"))
except grid.ConfigError as err:
    raise WorkflowError(str(err))


wildcard_constraints:
    **grid.WILDCARDS,


MODELS = {m.id: m for m in grid.models(config)}
CELLS = grid.cells(config)


def all_outputs():
    return [
        "results/tables/accuracy.parquet",
        "results/tables/accuracy_paper_format.csv",
        "results/tables/predictions.parquet",
    ] + accuracy_plots()


def accuracy_plots():
    fmt = config["plots"]["format"]
    return [f"results/plots/accuracy_{task}.{fmt}" for task in grid.task_names(config)]


def model_inputs(wildcards):
    """The built-in model's folder is a job output; a local checkpoint's config.json is tracked."""
    m = MODELS[wildcards.model]
    if m.builtin:
        return {"model": m.path}
    if m.path:
        return {"model": f"{m.path}/config.json"}
    return {}


def task_cfg(task):
    return config["tasks"][task]
