"""Helpers for the command-line tests: run ``multiguard`` as a user does, and a tiny trained checkpoint.

Settings are tiny (1 epoch on 200 multidigits images, 20 inputs x n = 500) so that the whole CLI suite
stays within a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

# One certify setting shared by every test that compares counts (single process, resume, shards, torchrun).
CERTIFY_ARGS = ["--num-samples", "500", "--max-k-prime", "2", "--num-inputs", "20", "--chunk-size", "2", "--seed", "3"]

_CACHE: dict[str, Path] = {}


def command() -> list[str]:
    """The ``multiguard`` console script next to this interpreter, else ``python -m multiguard``."""
    script = Path(sys.executable).parent / "multiguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "multiguard"]


def env() -> dict[str, str]:
    """The environment for subprocesses: CPU only, a fixed thread count (bit-identical sampling)."""
    out = dict(os.environ)
    out["CUDA_VISIBLE_DEVICES"] = ""
    out["OMP_NUM_THREADS"] = "1"
    out["PYTHONUNBUFFERED"] = "1"
    return out


def run(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``multiguard ARGS`` and return the finished process (text output)."""
    proc = subprocess.run(
        [*command(), *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"multiguard {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small_cnn trained for one epoch on 200 noisy multidigits images (made once per test session)."""
    if "checkpoint" not in _CACHE:
        folder = tmp_path_factory.mktemp("model")
        path = folder / "model.pt"
        run("train", "--dataset", "multidigits", "--arch", "small_cnn", "--sigma", "0.5", "--epochs", "1",
            "--train-size", "200", "--test-size", "100", "--quiet", "--device", "cpu", "--out", str(path))
        _CACHE["checkpoint"] = path
    return _CACHE["checkpoint"]


def reference_run(tmp_path_factory) -> Path:
    """A RUN_DIR certified by one uninterrupted process with :data:`CERTIFY_ARGS` (made once per session)."""
    if "run" not in _CACHE:
        checkpoint = tiny_checkpoint(tmp_path_factory)
        out = tmp_path_factory.mktemp("reference") / "run"
        run("certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu", "--quiet", "--out", str(out))
        _CACHE["run"] = out
    return _CACHE["run"]


def copy_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """A copy of the checkpoint in ``folder`` (so a test may delete it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(checkpoint, folder / "model.pt"))


def load_counts(run_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of ``RUN_DIR/counts.npz``."""
    with np.load(run_dir / "counts.npz") as data:
        return {key: data[key] for key in data.files}


def assert_same_counts(a: Path, b: Path) -> None:
    """Two runs hold bit-identical counts, labels and indices."""
    first, second = load_counts(a), load_counts(b)
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def run_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command in this process (cheap: torch is already imported) -> (exit code, stdout, stderr)."""
    from multiguard.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse: --help, usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error_in_process(result: tuple[int, str, str], *needles: str) -> None:
    """:func:`assert_one_line_error` for a :func:`run_in_process` result."""
    code, out, err = result
    assert_one_line_error(subprocess.CompletedProcess([], code, out, err), *needles)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A user error: exit code 2, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("multiguard: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
