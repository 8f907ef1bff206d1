"""No import cycle inside attnfast, and every module imports on its own in a fresh interpreter.

The static check reads every ``import`` of every module of the package (``attnfast/**.py`` and
``triton_kernels/*.py``, installed as ``attnfast.triton_kernels``), those inside functions
included, and requires the graph of imports between attnfast modules to be acyclic: a lazy
import inside a function is a cycle too, one that merely has not bitten yet.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ("attnfast._C",)  # the C++ extension: a module, but no .py file to read


def _modules() -> dict:
    """Dotted module name -> (path, is_package) for every module of the installed package."""
    found = {}
    for base, prefix in ((ROOT / "attnfast", "attnfast"),
                         (ROOT / "triton_kernels", "attnfast.triton_kernels")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            package = parts[-1] == "__init__"
            if package:
                parts.pop()
            found[".".join([prefix, *parts])] = (path, package)
    return found


def _graph() -> dict:
    modules = _modules()
    graph = {name: _imports(name, path, pkg, set(modules) | set(COMPILED))
             for name, (path, pkg) in modules.items()}
    graph.update((name, set()) for name in COMPILED)
    return graph


def _imports(name: str, path: Path, package: bool, modules: set) -> set:
    """attnfast modules that module ``name`` imports anywhere in its body."""
    here = name if package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one, else names of pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def _cycle(graph: dict):
    """One cycle of ``graph`` as a list of nodes, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = _graph()
    assert "attnfast.backend" in graph and "attnfast._register" in graph
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_one():
    """The checker itself: the cycle that attnfast once had is found."""
    graph = {"_register": {"ops"}, "ops": {"backend"}, "backend": {"_register"}, "x": set()}
    assert _cycle(graph) == ["_register", "ops", "backend", "_register"]


CORE = ["attnfast", "attnfast._compat", "attnfast._schema", "attnfast._layout",
        "attnfast.reference", "attnfast._eager", "attnfast._register", "attnfast.backend",
        "attnfast.ops"]


@pytest.mark.parametrize("module", CORE)
def test_module_imports_alone(module):
    """Each core module imports first, alone, in a fresh interpreter."""
    run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, f"import {module} failed:\n{run.stderr[-3000:]}"


APPS = ("attnfast.train", "attnfast.bench")


def _app(module):
    """The app (train or bench) that ``module`` belongs to, or None for the library."""
    return next((a for a in APPS if module == a or module.startswith(a + ".")), None)


def test_library_never_imports_its_apps():
    """attnfast outside train/ and bench/ imports nothing from them, and the two apps import
    nothing from each other (issue 21: cam.py drew with train.pictures, bench used
    train.models)."""
    bad = [f"{m} imports {t}" for m, targets in _graph().items() for t in sorted(targets)
           if _app(t) is not None and _app(t) != _app(m)]
    assert not bad, "; ".join(bad)


def test_app_import_check_finds_one():
    """The checker itself: a library module importing the trainer is found."""
    assert _app("attnfast.train.models") == "attnfast.train" and _app("attnfast.cam") is None
    assert _app("attnfast.trainer") is None


def test_import_attnfast_leaves_dynamo_alone():
    """``import attnfast`` (and its wrappers and CAM) does not import torch._dynamo (about 1.6 s);
    the wrappers import it on their first call."""
    code = ("import sys, attnfast, attnfast.cam, attnfast.viz; "
            "print('torch._dynamo' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "False"
