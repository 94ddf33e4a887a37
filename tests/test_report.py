"""`snakemake --report`: one self-contained HTML page with every plot, its caption, and the run's
resolved config (workflow/report/workflow.rst)."""

from __future__ import annotations

import base64
import html
import json
import re

import pytest
import yaml

from fi.plan.config import validate_config
from tests.grid_runs import BASE_CONFIG, copy_run
from tests.workflow_helpers import snakemake

pytestmark = pytest.mark.slow

PLOTS = {
    "results/plots/accuracy_addition.png": "for task addition",
    "results/plots/accuracy_cipher.png": "for task cipher",
    "results/plots/heads_fi-toy.png": "Boxed heads are the model's FI heads",
    "results/plots/task_generalization.png": "Task generalization: the four accuracies",
}
# the report's first entry: the run's findings, read from its tables
SUMMARY = {"results/summary.md": "The run's headline findings"}


def _js_value(page: str, name: str, script_id: str | None = None):
    """The json of `<script id="ID"> var NAME = <json>; </script>` in the report's page."""
    m = re.search(rf'<script id="{script_id or name}">\s*var {name} = (.*?);\s*</script>', page, re.S)
    assert m, f"no `var {name}` in the report"
    return json.loads(m.group(1))


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


@pytest.fixture(scope="module")
def report(tmp_path_factory, base_run):
    run = copy_run(base_run, tmp_path_factory.mktemp("report") / "run")
    proc = snakemake(run, "--report", "report.html")
    assert "Report created" in proc.stdout + proc.stderr
    return run, (run / "report.html").read_text()


def test_the_report_has_every_plot_with_its_caption(report):
    run, page = report
    results = _js_value(page, "results")
    assert set(results) == set(PLOTS) | set(SUMMARY)
    for path, caption in {**PLOTS, **SUMMARY}.items():
        entry = results[path]
        assert caption in " ".join(_text(entry["caption"]).split())
        data = entry["data_uri"].split("base64,", 1)[1]
        assert base64.b64decode(data) == (run / path).read_bytes()  # the figure itself is embedded
    categories = _js_value(page, "categories")
    assert set(categories) == {"0 Summary", "Accuracy", "Head attribution", "Task generalization"}


def test_the_report_shows_the_resolved_config(report):
    _, page = report
    text = _text(_js_value(page, "workflow_desc", "workflow-desc"))
    assert "The function-induction grid" in text
    assert "Models: fi-toy;" in text and "tasks: addition, cipher;" in text
    # the whole config with the schema's defaults filled in, as the run used it
    resolved = validate_config(yaml.safe_load(yaml.safe_dump(BASE_CONFIG)))
    block = text[text.index("{"):text.rindex("}") + 1]
    assert json.loads(block) == resolved
    assert '"n_examples": 6' in text and '"steps": 8' in text
