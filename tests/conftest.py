"""Shared test setup: the helper modules beside the tests (``clitools``, ``plain_loop``) are importable by
name, and the fixtures the test files share (one copy each):

- ``tiny_model_checkpoint``: a small_cnn trained for one epoch on 200 noisy multidigits images (the CLI's);
- ``tiny_run``: a finished RUN_DIR of a 3-label linear toy model (6 inputs, n = 200, k' <= 2);
- ``small_cnn``: a seeded 5-class CNN whose BatchNorm and Dropout make training-mode outputs depend on the batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
