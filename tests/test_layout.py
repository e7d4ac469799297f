"""The repository's layout rules, read from the sources with `ast`: no import cycle among the project's modules,
no `sys.path` editing outside tests/conftest.py, and no script imported as a library (tests may import the scripts
they test)."""

from __future__ import annotations

import ast
import pathlib

import pytest
from conftest import ROOT


SKIPPED_PARTS = {"outputs", "build", "dist"}


def project_files() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every Python file of the repository (not virtual envs, caches, outputs)."""
    files = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part in SKIPPED_PARTS or part.endswith(".egg-info") for part in parts):
            continue
        dotted = ".".join(parts)[: -len(".py")]
        files[dotted.removesuffix(".__init__")] = path
    return files


FILES = project_files()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for name, path in FILES.items()}


def is_test(name: str) -> bool:
    return name.startswith("tests.")


def resolve(importer: str, module: str, level: int) -> str | None:
    """The project module an import refers to, searched the way Python would find it for this file: relative to its
    package, from the repository root (installed editable), next to the file (a script's folder is on sys.path), and
    for tests also from benchmarks/ (tests/conftest.py puts it on sys.path)."""
    folder = importer.rsplit(".", 1)[0] if "." in importer else ""
    if level:
        base = importer.split(".")[:-level] if "." in importer else []
        candidates = [".".join([*base, module] if module else base)]
    else:
        candidates = [module, f"{folder}.{module}" if folder else module]
        if is_test(importer):
            candidates.append(f"benchmarks.{module}")
    return next((name for name in candidates if name in FILES), None)


def imports_of(name: str) -> set[str]:
    """Project modules imported anywhere in the file (functions included: a deferred import still closes a cycle)."""
    found = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            targets = [resolve(name, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = resolve(name, node.module or "", node.level)
            # `from package import module` imports the submodule
            targets = [
                resolve(name, f"{node.module}.{alias.name}" if node.module else alias.name, node.level) for alias in node.names
            ]
            targets = [target or module for target in targets]
        else:
            continue
        found.update(target for target in targets if target is not None and target != name)
    return found


GRAPH = {name: imports_of(name) for name in FILES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_resolver_sees_the_known_edges():
    assert {"configuration_llamo", "featurization_llamo"} <= GRAPH["processing_llamo"]  # relative, with fallback
    assert "llamo.examples" in GRAPH["llamo.baselines"] and "llamo.baselines" in GRAPH["llamo.evaluation"]
    assert "benchmarks.common" in GRAPH["benchmarks.bench_memory"]  # a script's sibling, by plain name
    assert "benchmarks.quality.data" in GRAPH["benchmarks.run_benchmark"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_the_project_modules():
    assert find_cycle(GRAPH) is None


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that change sys.path: `sys.path.insert/append/extend/...`, assignments to it, `site.addsitedir`, and the
    same written inside code strings (snippets run with `python -c`)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend", "remove", "__setitem__"):
            target = node.value
            if isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", None) == "sys":
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(ast.unparse(target).startswith("sys.path") for target in targets):
                lines.append(node.lineno)
        elif (isinstance(node, ast.Attribute) and node.attr == "addsitedir") or (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and "sys.path." in node.value
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_sys_path_check_catches_edits():
    code = "import sys, site\nsys.path.insert(0, 'x')\nsys.path = []\nsite.addsitedir('y')\nsnippet = 'import sys; sys.path.append(1)'\n"
    assert sys_path_edits(ast.parse(code)) == [2, 3, 4, 5]


def test_sys_path_is_edited_only_in_tests_conftest():
    allowed = {"tests.conftest", "tests.test_layout"}  # this file only names it, in the checks above
    offenders = {name: lines for name, tree in TREES.items() if name not in allowed and (lines := sys_path_edits(tree))}
    assert offenders == {}


def is_script(name: str) -> bool:
    """A file run as a program: it has an `if __name__ == "__main__":` block and is not part of a package (modules of
    `llamo` or `benchmarks/quality` may also have a command line; they are libraries first)."""
    in_package = (FILES[name].parent / "__init__.py").is_file()
    if is_test(name) or in_package:
        return False
    return any(
        isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)
        for node in TREES[name].body
    )


SCRIPTS = sorted(name for name in FILES if is_script(name))


def test_scripts_are_found():
    assert {"train_sft", "run_tiny_pipeline", "app", "benchmarks.run_benchmark", "scripts.make_demo_images"} <= set(SCRIPTS)
    assert "benchmarks.common" not in SCRIPTS and "llamo.evaluation" not in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_script_is_imported_as_a_library(script):
    importers = sorted(name for name, targets in GRAPH.items() if script in targets and not is_test(name))
    assert importers == [], f"{script} is imported by {importers}: move what they need into the llamo package"
