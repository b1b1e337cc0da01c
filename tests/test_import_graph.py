"""The package reads in one direction: no import cycles (function-level imports included, which would only hide
one), and every module imports on its own in a fresh interpreter."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "landscape_widgets"


def _modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _targets(module, node):
    """The package modules an import statement names (``from . import x`` names the module ``x`` where it is
    one, else the package)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if node.level:
        base = package
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    found = []
    for alias in node.names:
        full = f"{base}.{alias.name}"
        found.append(full if full in MODULES else base)
    return [m for m in found if m in MODULES and m != module]


def import_graph() -> dict:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[module] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for t in _targets(module, node)}
    return graph


def cycles(graph) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    # the engine imports the driver at module level; demo.dashboard imports the widgets inside the function
    assert "landscape_widgets.driver" in graph["landscape_widgets.engine"]
    assert "landscape_widgets.widgets" in graph["landscape_widgets.demo"]  # a function-level import


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_engine_does_not_know_landscape_or_widgets():
    graph = import_graph()
    low = [m for m in MODULES if m.split(".")[1:2] and m.split(".")[1] in
           ("engine", "driver", "executor", "chooser", "loop", "accelerations", "runtime", "batched", "store",
            "distributed", "gpu", "directions", "hessian", "results")]
    for module in low:
        bad = {t for t in graph[module] if t in ("landscape_widgets", "landscape_widgets.landscape")
               or t.startswith("landscape_widgets.widgets")}
        assert not bad, f"{module} imports {bad}"


ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "landscape_widgets" or m.startswith("landscape_widgets.")]:
        del sys.modules[loaded]  # each module from a clean slate (torch and numpy stay loaded: they are not ours)
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_alone():
    names = sorted(m for m in MODULES if m != "landscape_widgets.__main__")
    result = subprocess.run([sys.executable, "-c", ALONE, *names], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
