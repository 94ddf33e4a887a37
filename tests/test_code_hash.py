"""The code each rule's jobs run (fi_workflow.codehash): what its hash covers, and what an edit changes.
tests/test_incremental.py checks the same on a finished run: which jobs `snakemake -n` plans."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from fi_workflow import codehash
from tests.conftest import REPO


def rule_blocks() -> dict[str, str]:
    """Each rule of workflow/rules/*.smk -> its text."""
    blocks = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for m in re.finditer(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(), re.M | re.S):
            blocks[m.group(1)] = m.group(2)
    return blocks


RULES = sorted(rule for rule in rule_blocks() if rule != "all")
# the stages that run fi.methods.evaluation
MODEL_STAGES = {"evaluate", "evaluate_task", "discover_heads", "ablate", "circuit_overlap", "measure_checkpoint"}


def covered(rule: str) -> list[str]:
    return [codehash.describe(u) for u in codehash.adapter_units(rule)]


def test_every_rule_runs_its_adapter_and_carries_its_hash():
    """Each rule runs the adapter of its own name (fi_workflow.jobs) and carries that adapter's
    hash: a rule that ran another rule's adapter, or hashed another's, would rerun on the wrong
    edits."""
    own_process = '"../scripts/own_process.py"'
    for rule, text in rule_blocks().items():
        if rule == "all":
            continue
        assert f'code=code_hash("{rule}")' in text, rule
        assert "run_job(rule, Job(input, output, params, wildcards, threads, resources, log))" in text or (
            own_process in text), rule
        assert codehash.code_hash(rule).startswith("sha256:")
    with pytest.raises(KeyError, match="no_such_rule"):
        codehash.code_hash("no_such_rule")


def test_a_stage_is_covered_as_its_function_and_the_modules_it_imports():
    units = covered("evaluate")
    # the stage function and what it names in fi/stages.py; not the other stages
    assert {"fi/stages.py:evaluate", "fi/stages.py:model_in_use"} <= set(units)
    assert not {u for u in units if u.startswith("fi/stages.py:") and u.split(":")[1] in RULES} - {
        "fi/stages.py:evaluate"}
    # function-local imports (fi.methods.evaluation, fi.engine.models) and what those modules import, transitively
    assert {"fi/methods/evaluation.py", "fi/engine/models.py", "fi/plan/models_check.py", "fi/engine/answers.py",
            "fi/plan/tasks.py", "fi/io.py"} <= set(units)
    assert "fi/stages.py" not in units and "fi/__init__.py" not in units
    # `from fi.build.training import train_model as fit` inside fi.stages.train_model
    assert "fi/build/training.py" in covered("train_model")


def test_which_rules_reach_the_evaluation_module():
    reach = {rule for rule in RULES if "fi/methods/evaluation.py" in covered(rule)}
    assert reach == MODEL_STAGES
    assert not any("fi/methods/evaluation.py" in covered(r) for r in ("dataset", "plot_accuracy", "plot_heads", "plot_ablation"))


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the fi package that fi.codehash reads instead of the installed one."""
    shutil.copytree(codehash.package_root() / "fi", tmp_path / "fi", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "package_root", lambda: tmp_path)
    return tmp_path / "fi"


def hashes() -> dict[str, str]:
    return {rule: codehash.code_hash(rule) for rule in RULES}


def changed_by(edit) -> set[str]:
    before = hashes()
    edit()
    after = hashes()
    return {rule for rule in RULES if before[rule] != after[rule]}


def append(path: Path, text: str):
    return lambda: path.write_text(path.read_text() + text)


def test_an_edit_changes_the_hashes_of_exactly_the_rules_that_run_it(package_copy):
    assert changed_by(append(package_copy / "methods" / "evaluation.py", "\nEDITED = 1\n")) == MODEL_STAGES
    assert changed_by(append(package_copy / "report" / "plots.py", "\nEDITED = 1\n")) == {
        "plot_accuracy", "plot_heads", "plot_ablation", "plot_circuits", "plot_function_vectors", "draw_circuit"}
    assert changed_by(append(package_copy / "io.py", "\nEDITED = 1\n")) == set(RULES)  # every stage writes with it

    stages = package_copy / "stages.py"

    def edit_plot_heads():
        text = stages.read_text()
        assert text.count("plots: PlotParams) -> None:\n    from fi.report.plots import plot_head_heatmaps") == 1
        old = "plots: PlotParams) -> None:\n    from fi.report.plots import plot_head_heatmaps"
        stages.write_text(text.replace(old, old.replace("PlotParams)", "PlotParams, edited=None)"), 1))
    assert changed_by(edit_plot_heads) == {"plot_heads"}


def test_comments_docstrings_and_layout_rerun_nothing(package_copy):
    """Only what runs counts: a comment, a docstring or a line break changes no rule's hash."""
    io = package_copy / "io.py"
    assert changed_by(append(io, "\n# a comment\n")) == set()
    stages = package_copy / "stages.py"

    def reword_and_rewrap():
        text = stages.read_text()
        text = text.replace('"""Score one cell;', '"""Scores one cell;', 1)
        text = text.replace("def plot_heads(", "def plot_heads(\n    ", 1)
        stages.write_text(text)
    assert changed_by(reword_and_rewrap) == set()


def test_a_new_module_is_picked_up_where_it_is_imported(package_copy):
    (package_copy / "engine" / "probe.py").write_text("def run():\n    return 1\n")
    assert not any("fi/engine/probe.py" in covered(r) for r in RULES)  # nothing imports it yet
    ablation = package_copy / "methods" / "ablation.py"
    uses_probe = "\n\ndef _uses_probe():\n    from fi.engine.probe import run\n\n    return run()\n"
    ablation.write_text(ablation.read_text() + uses_probe)
    assert {r for r in RULES if "fi/engine/probe.py" in covered(r)} == {"discover_heads", "ablate", "circuit_overlap"}
    assert changed_by(append(package_copy / "engine" / "probe.py", "EDITED = 1\n")) == {
        "discover_heads", "ablate", "circuit_overlap"}


@pytest.mark.parametrize("init", ["__init__.py", "plan/__init__.py", "engine/__init__.py", "build/__init__.py",
                                  "methods/__init__.py", "report/__init__.py"])
def test_the_package_inits_hold_no_code(init):
    """fi.codehash leaves the packages' __init__.py out of every hash (fi's docstring lists the
    modules and changes with them); that is sound only while they run nothing: a docstring and
    constants."""
    tree = ast.parse((codehash.package_root() / "fi" / init).read_text())
    for stmt in tree.body:
        is_doc = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        is_constant = isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
        assert is_doc or is_constant, ast.dump(stmt)


def test_the_adapters_module_holds_adapters_only():
    """A rule's hash covers its adapter's own body and what it imports there; a module-level helper
    or import in fi_workflow/jobs.py that an adapter used would be left out of every hash. So the
    module holds a docstring, `from __future__ import annotations` and one function per rule, each
    taking the job alone."""
    tree = ast.parse(codehash.adapters_file().read_text())
    body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) else tree.body
    assert isinstance(body[0], ast.ImportFrom) and body[0].module == "__future__"
    functions = body[1:]
    assert all(isinstance(f, ast.FunctionDef) for f in functions), [ast.dump(f)[:80] for f in functions]
    assert sorted(f.name for f in functions) == RULES
    assert all([a.arg for a in f.args.args] == ["job"] and not f.decorator_list for f in functions)
