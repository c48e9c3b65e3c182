"""The package's layers: folders are the pipeline's stages, imports go from a later stage to an earlier one only,
no module imports another's private names, and `import spon` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import spon

PACKAGE = Path(spon.__file__).resolve().parent

# Each top-level name of the package and its stage; a module may import only from its own stage or an earlier one.
STAGES = {
    "errors": 0, "config": 0, "distributed": 0,  # the base every stage shares
    "sparsity": 1,  # swap linears for sparse wrappers, calibrate thresholds
    "io": 2,  # models, text, artifacts, files, plots
    "evaluation": 3,  # perplexity, intervals
    "training": 4,  # SPON vectors: init, KL, training, fold
    "serving": 5,  # decoding: kernels, output head, greedy loop
    "pipeline": 6,  # the steps the commands share (open, calibrate, train, evaluate, export)
    "bench": 7, "experiments": 7,  # peers: neither imports the other
    "cli": 8,
}


def _stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every spon import in a file, lazy ones inside functions included."""
    pkg = ".".join(("spon", *path.relative_to(PACKAGE).parent.parts))
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module == "spon" or module.startswith("spon."):
                names = [a.name for a in node.names]
                if module == "spon":  # `from spon import distributed`
                    out += [(f"spon.{n}", []) for n in names]
                else:
                    out.append((module, names))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("spon")]
    return out


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("spon", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("spon", *parts))
        out[name] = p
    return out


def test_every_top_level_name_has_a_stage_and_the_top_level_is_small():
    top = [p for p in PACKAGE.iterdir() if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__pycache__"]
    names = {p.stem for p in top} - {"__init__", "__main__"}
    assert names == set(STAGES)
    assert len([p for p in top if p.suffix == ".py"]) <= 8


def test_imports_go_from_later_stages_to_earlier_ones_only():
    bad = []
    for name, path in _modules().items():
        if name == "spon":
            continue  # the facade re-exports the public API of every stage
        own = _stage(name)
        for module, _ in _imports(path):
            other = _stage(module)
            if not other:
                bad.append(f"{name} imports the package facade")
            elif STAGES[other] > STAGES[own] or (STAGES[own] and STAGES[other] == STAGES[own] and other != own):
                bad.append(f"{name} ({own}) imports {module} ({other})")
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = [f"{name}: {module}.{n}" for name, path in _modules().items() for module, names in _imports(path)
           for n in names if n.startswith("_") and module != name]
    assert not bad


def test_no_import_circles():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for module, names in _imports(path):
            deps |= {f"{module}.{n}" for n in names if f"{module}.{n}" in modules} or {module}
        graph[name] = {d for d in deps if d in modules and d != name and d != "spon"}

    def reaches(start, goal, seen):
        for n in graph.get(start, ()):
            if n == goal:
                return True
            if n not in seen:
                seen.add(n)
                if reaches(n, goal, seen):
                    return True
        return False

    circles = [m for m in graph if reaches(m, m, set())]
    assert not circles, circles


def test_import_spon_loads_neither_plotting_nor_the_harness_nor_the_runners():
    code = ("import sys, spon; heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'lm_eval') "
            "or m.startswith(('spon.experiments', 'spon.bench', 'spon.cli'))); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
