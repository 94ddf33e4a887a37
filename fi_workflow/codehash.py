"""The code a rule's jobs run, and its content hash (each rule's `params.code`, common.smk).

A rule runs one adapter, the function of fi_workflow/jobs.py named as the rule, which imports the fi
function it calls inside its body. What the rule's jobs run, found statically by parsing with `ast`
(nothing is imported):

* the adapter itself (fi_workflow/jobs.py holds adapters only: tests/test_code_hash.py checks);
* each fi function or class it imports, *as a definition*: its own source, the module-level
  definitions and constants of its module that it names (transitively), and every fi module it
  imports, at module level or inside the function (`from fi.build.training import train_model as fit`);
* every fi module reached from there, *whole*: its source and every fi module it imports anywhere
  in the file (module level or inside functions), transitively.

So an edit inside `def plot_heads` of fi/stages.py changes only plot_heads' hash, and an edit
anywhere in fi/methods/evaluation.py changes the hash of every stage whose code reaches fi.methods.evaluation
(evaluate, discover_heads, ablate) and of no other. A new module is picked up as soon as some
reached code imports it. The package's own `fi/__init__.py` (run by every `import fi.x`) is left
out so that its docstring can change freely; it must hold no code (tests/test_code_hash.py checks).

The hash is of the code's syntax tree without docstrings (`ast.dump`, no line numbers), so editing a
comment or a docstring, or reformatting, reruns nothing; it is keyed by paths relative to the
package's parent, so a clone, or the package installed elsewhere, gives the same hash for the same
code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import cache, lru_cache
from pathlib import Path

PACKAGE = "fi"

# (module, top-level name): one definition of a module; (module, None): the whole module.
Unit = tuple[str, "str | None"]


@lru_cache(maxsize=1)
def package_root() -> Path:
    """The folder holding the `fi` package that jobs import (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {PACKAGE!r} not found")
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def module_file(module: str) -> Path | None:
    """fi.a.b -> <root>/fi/a/b.py (or .../b/__init__.py); None when no such file."""
    base = package_root().joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _in_package(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _parsed(path: Path) -> tuple[str, ast.Module, dict[str, list[ast.stmt]]]:
    """A file's text, syntax tree and top-level bindings (name -> the statements binding it)."""
    return _analyse(path.read_text(), str(path))


@cache
def _analyse(text: str, filename: str) -> tuple[str, ast.Module, dict[str, list[ast.stmt]]]:
    tree = ast.parse(text, filename=filename)
    bindings: dict[str, list[ast.stmt]] = {}
    for stmt in tree.body:
        for name in _bound_names(stmt):
            bindings.setdefault(name, []).append(stmt)
    return text, tree, bindings


def _is_package(module: str) -> bool:
    f = module_file(module)
    return f is not None and f.name == "__init__.py"


def _absolute(node: ast.ImportFrom, module: str) -> str:
    """The module an `ImportFrom` in `module` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    package = parts if _is_package(module) else parts[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _import_targets(node: ast.Import | ast.ImportFrom, module: str, as_definitions: bool) -> set[Unit]:
    """The fi units an import statement in `module` loads. `from fi.x import y`: y itself when
    `as_definitions` (the adapter level) and y is no module, else all of fi.x."""
    out: set[Unit] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if _in_package(alias.name):
                out.add((alias.name, None))
        return out
    source = _absolute(node, module)
    if not _in_package(source):
        return out
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if module_file(sub) is not None:
            out.add((sub, None))  # `from fi import tasks`: a module
        elif as_definitions and alias.name != "*":
            out.add((source, alias.name))
        else:
            out.add((source, None))
    return out


def _bound_names(stmt: ast.stmt) -> set[str]:
    """Names a top-level statement binds (descending into top-level if / try / with blocks)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
        targets = {
            ast.Assign: lambda s: s.targets,
            ast.AnnAssign: lambda s: [s.target],
            ast.AugAssign: lambda s: [s.target],
            ast.For: lambda s: [s.target],
            ast.With: lambda s: [i.optional_vars for i in s.items if i.optional_vars is not None],
        }[type(stmt)](stmt)
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(stmt, (ast.If, ast.Try)):
        blocks = [stmt.body, stmt.orelse]
        if isinstance(stmt, ast.Try):
            blocks += [stmt.finalbody] + [h.body for h in stmt.handlers]
        return {name for block in blocks for s in block for name in _bound_names(s)}
    return set()


_WITH_DOCSTRING = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _code(node: ast.AST) -> str:
    """The node's syntax tree as text, without docstrings or positions: what running it depends on.
    Kept per node: the trees are `_analyse`'s, one per file text, shared by every rule's hash."""
    kept = _CODES.get(id(node))
    if kept is not None and kept[0] is node:
        return kept[1]
    code = _dump_without_docstrings(node)
    _CODES[id(node)] = (node, code)
    return code


_CODES: dict[int, tuple[ast.AST, str]] = {}


def _dump_without_docstrings(node) -> str:
    """`ast.dump(node, include_attributes=False)`, with each module's, class's and function's
    docstring left out."""
    if isinstance(node, list):
        return "[" + ", ".join(_dump_without_docstrings(x) for x in node) + "]"
    if not isinstance(node, ast.AST):
        return repr(node)
    fields = []
    for name, value in ast.iter_fields(node):
        if (name == "body" and isinstance(node, _WITH_DOCSTRING) and value and isinstance(value[0], ast.Expr)
                and isinstance(value[0].value, ast.Constant) and isinstance(value[0].value.value, str)):
            value = value[1:]
        fields.append(f"{name}={_dump_without_docstrings(value)}")
    return f"{type(node).__name__}({', '.join(fields)})"


def _unit_code(unit: Unit) -> tuple[str, set[Unit]]:
    """The source text a unit stands for, and the units it reaches directly."""
    module, name = unit
    path = module_file(module)
    if path is None:
        raise ImportError(f"no source file for module {module!r} (imported as {unit})")
    _, tree, top = _parsed(path)
    deps: set[Unit] = set()
    if name is None:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= {(m, None) for m, _ in _import_targets(node, module, as_definitions=False)}
        return _code(tree), deps
    stmts = top.get(name)
    if not stmts:  # not a plain top-level definition (e.g. made by a loop): the whole module
        return _unit_code((module, None))
    for stmt in stmts:
        for node in ast.walk(stmt):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= {(m, None) for m, _ in _import_targets(node, module, as_definitions=False)}
            elif isinstance(node, ast.Name) and node.id != name and node.id in top:
                for binding in top[node.id]:
                    if isinstance(binding, (ast.Import, ast.ImportFrom)):
                        deps |= {(m, None) for m, _ in _import_targets(binding, module, as_definitions=False)}
                    else:
                        deps.add((module, node.id))
    return "".join(_code(s) for s in stmts), deps


def adapters_file() -> Path:
    """fi_workflow/jobs.py, where each rule's adapter is defined (found without importing it)."""
    spec = importlib.util.find_spec("fi_workflow.jobs")
    if spec is None or spec.origin is None:
        raise ImportError("module 'fi_workflow.jobs' not found")
    return Path(spec.origin)


def adapter(rule: str) -> ast.FunctionDef:
    """The syntax tree of the rule's adapter, `def <rule>(job)` in fi_workflow/jobs.py."""
    _, _, top = _parsed(adapters_file())
    found = [s for s in top.get(rule, []) if isinstance(s, ast.FunctionDef)]
    if not found:
        raise KeyError(f"no adapter for rule {rule!r}: fi_workflow/jobs.py defines no function of that name")
    return found[0]


def adapter_units(rule: str) -> list[Unit]:
    """Every unit of fi code the rule's adapter runs (sorted): the closure described in the module doc."""
    todo: set[Unit] = set()
    for node in ast.walk(adapter(rule)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            todo |= _import_targets(node, "fi_workflow.jobs", as_definitions=True)
    seen: set[Unit] = set()
    while todo:
        unit = todo.pop()
        if unit in seen:
            continue
        seen.add(unit)
        parts = unit[0].split(".")
        parents = {(".".join(parts[:i]), None) for i in range(2, len(parts))}  # subpackages run too
        todo |= (_unit_code(unit)[1] | parents) - seen
    return sorted(seen, key=lambda u: (u[0], u[1] or ""))


def describe(unit: Unit) -> str:
    """'fi/stages.py:evaluate' or 'fi/methods/evaluation.py'."""
    rel = module_file(unit[0]).relative_to(package_root()).as_posix()
    return rel if unit[1] is None else f"{rel}:{unit[1]}"


def code_hash(rule: str) -> str:
    """The content hash of the rule's adapter and of all fi code it runs (`adapter_units`)."""
    h = hashlib.sha256()
    h.update(b"adapter\0" + _code(adapter(rule)).encode() + b"\0")
    for unit in adapter_units(rule):
        h.update(describe(unit).encode() + b"\0" + _unit_code(unit)[0].encode() + b"\0")
    return "sha256:" + h.hexdigest()[:16]
