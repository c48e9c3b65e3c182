"""The package's layers: the core never imports the experiments or benchmarks, and `import spon` stays light."""

import ast
import subprocess
import sys
from pathlib import Path

import spon

PACKAGE = Path(spon.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the spon modules a file imports (relative imports resolved)."""
    pkg = ".".join(("spon", *path.relative_to(PACKAGE).parent.parts))
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                out.add(".".join([*base, node.module] if node.module else base))
                out.update(".".join([*base, a.name]) for a in node.names if not node.module)
            elif node.module and node.module.startswith("spon"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("spon"))
    return out


def test_core_never_imports_experiments_or_benchmarks():
    core = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("experiments", "bench")]
    assert len(core) > 15
    bad = {str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith(("spon.experiments", "spon.bench")))
           for p in core}
    assert not {k: v for k, v in bad.items() if v}


def test_import_spon_loads_neither_plotting_nor_the_harness_nor_the_runners():
    code = ("import sys, spon; heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'lm_eval') "
            "or m.startswith(('spon.experiments', 'spon.bench'))); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_no_import_circles_among_the_experiments():
    graph = {p.stem: {m.rsplit(".", 1)[1] for m in _imports(p) if m.startswith("spon.experiments.")}
             for p in (PACKAGE / "experiments").glob("*.py")}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph.get(start, ()))

    assert not [m for m in graph if reaches(m, m)]
