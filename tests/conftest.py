"""Shared test setup: the helper modules beside the tests (``clitools``, ``plain_loop``) are importable by
name, and the fixtures the test files share (one copy each):

- ``tiny_model_checkpoint``: a small_cnn trained for one epoch on 200 noisy multidigits images (the CLI's);
- ``tiny_run``: a finished RUN_DIR of a 3-label linear toy model (6 inputs, n = 200, k' <= 2);
- ``small_cnn``: a seeded 5-class CNN whose BatchNorm and Dropout make training-mode outputs depend on the batch;
- ``serve_images``, ``serve_server``: two multidigits test images as PNG files, and one ``multiguard serve`` process
  (n = 200, small limits) on a free local port for the tests of tests/serving.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Idle OpenMP threads sleep instead of spinning (read when torch loads its OpenMP runtime, so set before any test
# imports torch; subprocesses inherit it). `make test` runs one worker per core: with the default policy two
# workers each running torch's two threads on two cores spun against each other, measured here 40 s for a 2 s
# attack test (6.8 s with PASSIVE). It changes scheduling only, not any result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import clitools  # noqa: E402 - needs the path above


@pytest.fixture(scope="session")
def tiny_model_checkpoint(tmp_path_factory) -> Path:
    """A small_cnn trained for one epoch on 200 noisy multidigits images, made once per test session."""
    return clitools.tiny_checkpoint(tmp_path_factory)


def make_tiny_run(run_dir: Path) -> Path:
    """Sample a finished RUN_DIR at ``run_dir`` from a linear toy: scores ``(x0, x1, -x0 - x1)`` of 6 inputs
    ``(2,)``, labels ``(6, 3)``, n = 200 at sigma = 0.5, counts for k' <= 2, chunks of 2."""
    import torch

    from multiguard.runs import job as _job
    from multiguard.runs.spec import RunSpec
    from multiguard.sampling.smoothed import MultiGuard

    model = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    data = [(torch.tensor([float(i % 3), 1.0 - (i % 2)]), torch.tensor([1.0, 0.0, float(i % 2)])) for i in range(6)]
    spec = RunSpec(n=200, max_k_prime=2, num_inputs=0, chunk_size=2, sigma=0.5, dataset="toy")
    result = _job.sample_run(run_dir, spec, sampler=MultiGuard(model, 3, sigma=0.5), dataset=data)
    assert result.complete
    return Path(result.run_dir)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished RUN_DIR of the linear toy of :func:`make_tiny_run`, made once per session (copy it to change it)."""
    return make_tiny_run(tmp_path_factory.mktemp("tiny-run") / "run")


@pytest.fixture
def small_cnn():
    """A 5-class CNN for (N, 3, S, S) inputs with fixed random weights (seed 0), in eval mode."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 5),
    )
    return model.eval()


@pytest.fixture
def register_for_test():
    """``register(registry, name, target, **keywords)``: a registry entry for one test, removed after it."""
    added = []

    def register(registry, name, target, **keywords):
        registry.register(name, target, **keywords)
        added.append((registry, name))
        return target

    yield register
    for registry, name in reversed(added):
        registry.unregister(name)


@pytest.fixture(scope="session")
def serve_images(tmp_path_factory) -> list[Path]:
    """Two multidigits test images written as 8-bit PNG files."""
    from servetools import digit_images

    return digit_images(tmp_path_factory.mktemp("images"), 2)


@pytest.fixture(scope="session")
def serve_server(tmp_path_factory):
    """``multiguard serve`` of the tiny checkpoint (n = 200, --max-n 2000, 3 files, 200 kB bodies, 40000 pixels)."""
    from servetools import Server

    server = Server(clitools.tiny_checkpoint(tmp_path_factory), "--n", "200", "--max-n", "2000", "--max-files", "3",
                    "--max-body-bytes", "200000", "--max-pixels", "40000")
    yield server
    server.stop()
