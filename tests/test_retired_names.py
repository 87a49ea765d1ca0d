"""Retired names of the run and certificate side still work for a release, with a DeprecationWarning naming
the new name (multiguard.deprecation); the rest of the tests use the new names."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from multiguard import MultiGuard, certify, pipeline, runs, sequential
from multiguard.acceleration import SamplingMode
from multiguard.runspec import RunSpec


def _toy() -> tuple[MultiGuard, list]:
    model = torch.nn.Linear(2, 3, bias=False)
    model.weight.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    data = [(torch.tensor([float(i % 3), 1.0 - (i % 2)]), torch.tensor([1.0, 0.0, float(i % 2)])) for i in range(4)]
    return MultiGuard(model, 3, sigma=0.5), data


def test_certify_run_and_the_keyword_form_of_sample_run_warn_and_sample_the_same_counts(tmp_path: Path) -> None:
    smoother, data = _toy()
    spec = RunSpec(n=200, max_k_prime=2, num_inputs=0, chunk_size=2, sigma=0.5, dataset="toy")
    new = runs.sample_run(tmp_path / "new", spec, sampler=smoother, dataset=data)
    with pytest.warns(DeprecationWarning, match="multiguard.runs.sample_run"):
        certify_run = runs.certify_run
    with pytest.warns(DeprecationWarning, match=r"sample_run\(run_dir, RunSpec"):
        old = certify_run(tmp_path / "old", sampler=smoother, dataset=data, n=200, max_k_prime=2, num_inputs=0,
                          chunk_size=2, metadata={"sigma": 0.5, "dataset": "toy"})
    assert old.complete and new.complete
    np.testing.assert_array_equal(runs.load_run(old.run_dir).counts, runs.load_run(new.run_dir).counts)
    assert old.metadata["dataset"] == "toy" and runs.load_run(old.run_dir).metadata["sigma"] == 0.5


def test_the_sequential_procedure_is_still_served_from_certify_with_a_warning() -> None:
    for name in ("sample_size_schedule", "sequential_stopping_rule", "sequential_certification",
                 "anytime_label_probability_bounds", "FUTILITY_RULES"):
        with pytest.warns(DeprecationWarning, match=f"multiguard.sequential.{name}"):
            assert getattr(certify, name) is getattr(sequential, name)
    with pytest.warns(DeprecationWarning):
        assert certify.sample_size_schedule(1000).tolist() == [100, 200, 500, 1000]
    with pytest.raises(AttributeError):
        certify.no_such_name  # noqa: B018


def test_autocast_dtype_warns_and_means_the_precision() -> None:
    with pytest.warns(DeprecationWarning, match="precision"):
        guard = MultiGuard(torch.nn.Linear(4, 3), num_classes=3, sigma=0.5, autocast_dtype=torch.float16)
    assert guard.mode == SamplingMode("fp16")


def test_certify_checkpoint_warns_and_samples_the_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    shutil.copyfile(Path(__file__).parent / "data" / "old_run" / "model.pt", checkpoint)
    with pytest.warns(DeprecationWarning, match="multiguard.pipeline.sample_checkpoint"):
        certify_checkpoint = pipeline.certify_checkpoint
    result = certify_checkpoint(checkpoint, tmp_path / "run", n=100, num_inputs=2, chunk_size=2, device="cpu")
    assert result.complete and runs.load_run(result.run_dir).n == 100
