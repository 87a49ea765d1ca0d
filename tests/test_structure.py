"""The package's shape: layers that point one way, torch only where models run, one atomic writer.

The import graph is read from the source (every ``import`` statement, at module level and inside functions;
``if TYPE_CHECKING:`` blocks are skipped because they never run), so an import hidden in a function body
still counts.
"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import multiguard
from multiguard import runs
from multiguard.runspec import RunSpec
from multiguard.smoothing import MultiGuard

PACKAGE_DIR = Path(multiguard.__file__).parent
TORCH_LIBRARIES = ("torch", "torchvision", "timm")
TORCH_FREE = ("multiguard.certify", "multiguard.sequential", "multiguard.report", "multiguard.runs",
              "multiguard.runfolder", "multiguard.runspec", "multiguard.empirical",
              "multiguard.validation", "multiguard.files", "multiguard.seeds", "multiguard.modes")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every module ``path`` imports (ours by full name, others by top-level name)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name if alias.name.startswith("multiguard") else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("multiguard"):
                found.add(target.split(".")[0])
                return
            found.add(target)
            for alias in node.names:  # `from . import report` imports the module multiguard.report
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    modules = {_module_name(path) for path in files}
    return {_module_name(path): _imports(path, modules) for path in files}


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        for target in graph.get(node, ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_import_graph_has_no_cycle(graph):
    ours = {name: {t for t in targets if t in graph} for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(ours[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for name in sorted(ours):
        if name not in state:
            walk(name, [name])


def test_no_torch_reachable_from_the_math_and_the_report(graph):
    for name in TORCH_FREE:
        assert name in graph, name
        reached = _reachable(graph, name)
        bad = sorted(reached & set(TORCH_LIBRARIES))
        via = sorted(m for m in reached if m in graph and set(TORCH_LIBRARIES) & graph[m])
        assert not bad, f"{name} reaches {bad} through {via}"


def test_nothing_imports_the_command_line(graph):
    importers = sorted(name for name, targets in graph.items() if "multiguard.cli" in targets)
    assert importers in ([], ["multiguard.__main__"]), importers


def test_the_checker_finds_a_cycle_and_a_hidden_torch_import(tmp_path):
    """Control: the graph reader sees imports inside functions, so both checks above can fail."""
    pkg = tmp_path / "multiguard"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n")
    (pkg / "b.py").write_text("from .a import f\n\ndef g():\n    import torch.nn\n")
    modules = {"multiguard", "multiguard.a", "multiguard.b"}
    global PACKAGE_DIR
    saved, PACKAGE_DIR = PACKAGE_DIR, pkg
    try:
        found = {m: _imports(pkg / f"{m.split('.')[-1]}.py", modules) for m in ("multiguard.a", "multiguard.b")}
    finally:
        PACKAGE_DIR = saved
    assert "multiguard.b" in found["multiguard.a"] and "multiguard.a" in found["multiguard.b"]
    assert "torch" in found["multiguard.b"]


# A finder placed first on sys.meta_path that refuses torch and its companions: their import raises
# ImportError as on a machine without them (sys.modules stays clean, so libraries probing it are unaffected).
BLOCK_TORCH = (
    "import sys\n"
    "class _NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('torch', 'torchvision', 'timm'):\n"
    "            raise ImportError(f'{name} is not installed (blocked by the test)')\n"
    "        return None\n"
    "sys.meta_path.insert(0, _NoTorch())\n"
)


def _tiny_run(tmp_path: Path) -> Path:
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    model = torch.nn.Linear(2, 3, bias=False)
    model.weight.data.copy_(weights)
    data = [(torch.tensor([float(i % 3), 1.0 - (i % 2)]), torch.tensor([1.0, 0.0, float(i % 2)])) for i in range(6)]
    smoother = MultiGuard(model, 3, sigma=0.5)
    spec = RunSpec(n=200, max_k_prime=2, num_inputs=0, chunk_size=2, sigma=0.5, dataset="toy")
    result = runs.sample_run(tmp_path / "run", spec, sampler=smoother, dataset=data)
    assert result.complete
    return result.run_dir


def test_certify_and_report_run_with_torch_unimportable(tmp_path):
    run_dir = _tiny_run(tmp_path)
    script = (
        BLOCK_TORCH
        + "import multiguard.certify\n"
        "from multiguard.cli import main\n"
        f"code = main(['report', {str(run_dir)!r}, '--k', '2', '--k-prime', '1', '--out', {str(tmp_path / 'rep')!r},"
        " '--quiet'])\n"
        "assert 'torch' not in sys.modules\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rep" / "curves.csv").is_file() and (tmp_path / "rep" / "summary.md").is_file()
    control = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "from multiguard import MultiGuard\n"],
                             capture_output=True, text=True, timeout=120)
    assert control.returncode != 0 and "torch" in control.stderr  # the blocker works: MultiGuard needs torch


def test_a_checkpoint_has_the_mode_of_every_other_output(tmp_path):
    from multiguard.train import train

    previous = os.umask(0o022)
    try:
        train("multidigits", sigma=0.5, epochs=1, train_size=64, test_size=32, out=tmp_path / "model.pt",
              progress=False)
        run_dir = _tiny_run(tmp_path)
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode)
             for path in (tmp_path / "model.pt", run_dir / "counts.npz", run_dir / "metadata.json")}
    assert modes == {"model.pt": 0o644, "counts.npz": 0o644, "metadata.json": 0o644}
    assert np.load(run_dir / "counts.npz")["counts"].shape == (6, 2, 3)
