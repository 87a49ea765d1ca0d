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

import multiguard

PACKAGE_DIR = Path(multiguard.__file__).parent
TORCH_LIBRARIES = ("torch", "torchvision", "timm")
TORCH_FREE = ("multiguard.certify", "multiguard.sequential", "multiguard.report", "multiguard.runs",
              "multiguard.runfolder", "multiguard.runspec", "multiguard.empirical", "multiguard.results",
              "multiguard.shards", "multiguard.data.download", "multiguard.thresholded", "multiguard.thresholds",
              "multiguard.validation", "multiguard.files", "multiguard.seeds", "multiguard.modes",
              "multiguard.denoiser_sources")


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
    importers = sorted(name for name, targets in graph.items()
                       if any(t == "multiguard.cli" or t.startswith("multiguard.cli.") for t in targets)
                       and not name.startswith("multiguard.cli"))
    assert importers in ([], ["multiguard.__main__"]), importers


# The layers, top to bottom: a module imports (at module level or inside a function) only modules of its own
# layer or below. Every module of the package has a place here; a new module is placed when it is added.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("command line", frozenset({"cli", "cli.commands", "cli.options", "__main__"})),
    ("pipeline steps", frozenset({"demo", "attack_run", "predict", "pipeline", "progress", "report"})),
    ("training, attack, checkpoints, data, runs", frozenset({
        "train", "denoise_train", "attack", "checkpoints", "distributed", "models", "denoisers", "diffusion", "losses",
        "runs", "runfolder", "base_classifier", "training", "train_settings", "objectives", "checkpoint_files",
        "shards", "augment",
        "data", "data._common", "data.coco", "data.csvfolder", "data.multidigits", "data.nuswide", "data.summary",
        "data.voc", "data.download", "data.verify"})),
    ("MultiGuard", frozenset({"smoothing", "acceleration"})),
    ("engine", frozenset({"engine"})),
    ("certificate math, registries and utilities", frozenset({
        "", "certify", "sequential", "thresholded", "thresholds", "runspec", "methods", "empirical", "results", "modes",
        "architectures", "registry",
        "deprecation", "settings", "denoiser_sources",
        "validation", "files", "seeds", "devices"})),
)


def _layer_of(module: str) -> int | None:
    short = module.removeprefix("multiguard").removeprefix(".")
    return next((i for i, (_, names) in enumerate(LAYERS) if short in names), None)


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for every import that points to a higher layer than the importer's."""
    found = []
    for name, targets in sorted(graph.items()):
        for target in sorted(t for t in targets if t in graph):
            own, other = _layer_of(name), _layer_of(target)
            if own is not None and other is not None and other < own:
                found.append(f"{name} ({LAYERS[own][0]}) -> {target} ({LAYERS[other][0]})")
    return found


def test_every_module_has_a_layer(graph):
    unplaced = sorted(name for name in graph if _layer_of(name) is None)
    assert not unplaced, f"place these modules in tests/test_structure.py LAYERS: {unplaced}"


def test_no_import_points_up_the_layers(graph):
    """cli -> pipeline steps -> training/attack/checkpoints -> MultiGuard -> engine -> certificate math: an import
    inside a function counts as one at the top of the module."""
    assert not _upward_imports(graph), _upward_imports(graph)


def test_the_layer_check_catches_an_upward_import_inside_a_function(tmp_path):
    """Control: a certificate-math module that imports the sampling engine inside a function is caught."""
    pkg = tmp_path / "multiguard"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "certify.py").write_text("def bound():\n    from .engine import SamplingEngine\n    return SamplingEngine\n")
    (pkg / "engine.py").write_text("from .certify import bound\n")
    modules = {"multiguard", "multiguard.certify", "multiguard.engine"}
    global PACKAGE_DIR
    saved, PACKAGE_DIR = PACKAGE_DIR, pkg
    try:
        fake = {m: _imports(pkg / f"{m.split('.')[-1]}.py", modules)
                for m in ("multiguard.certify", "multiguard.engine")}
    finally:
        PACKAGE_DIR = saved
    assert _upward_imports(fake) == ["multiguard.certify (certificate math, registries and utilities) -> "
                                     "multiguard.engine (engine)"]


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
    from conftest import make_tiny_run

    return make_tiny_run(tmp_path / "run")


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
