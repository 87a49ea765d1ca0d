"""The top-level API: from an in-memory smoothed classifier and a dataset to a RUN_DIR in one call, from the
RUN_DIR to a report in another, and ``import multiguard`` staying torch-free until a torch name is used."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import multiguard


def test_every_top_level_name_resolves_and_is_listed():
    assert set(multiguard.__all__) == {*multiguard._LAZY, "__version__"}
    for name in multiguard._LAZY:
        assert getattr(multiguard, name) is not None, name
    with pytest.raises(AttributeError):
        multiguard.no_such_name  # noqa: B018


def test_import_multiguard_and_load_run_do_not_import_torch(tiny_run):
    code = ("import sys, multiguard\nrun = multiguard.load_run(sys.argv[1])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint(run.counts.shape)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(6, 2, 3)"


def test_certify_dataset_writes_the_run_that_sample_run_writes_and_make_report_reads_it(tmp_path, tiny_run):
    """The one call gives the same counts as the RUN_DIR of conftest.make_tiny_run (built with sample_run and a
    hand-made RunSpec), records the classifier's sigma and classes, resumes, and reports."""
    import torch

    model = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    data = [(torch.tensor([float(i % 3), 1.0 - (i % 2)]), torch.tensor([1.0, 0.0, float(i % 2)])) for i in range(6)]
    smoothed = multiguard.MultiGuard(model, 3, sigma=0.5)
    result = multiguard.certify_dataset(smoothed, data, tmp_path / "run", n=200, num_inputs=0, max_k_prime=2,
                                        chunk_size=2, dataset_name="toy")
    assert result.complete
    run = multiguard.load_run(tmp_path / "run")
    np.testing.assert_array_equal(run.counts, multiguard.load_run(tiny_run).counts)
    assert run.metadata["sigma"] == 0.5 and run.metadata["num_classes"] == 3 and run.metadata["dataset"] == "toy"
    again = multiguard.certify_dataset(smoothed, data, tmp_path / "run", n=200, num_inputs=0, max_k_prime=2,
                                       chunk_size=2, dataset_name="toy", resume=True)
    assert again.chunks_done == 0
    with pytest.raises(Exception, match="sigma"):  # another noise cannot join the run
        multiguard.certify_dataset(multiguard.MultiGuard(model, 3, sigma=0.25), data, tmp_path / "run", n=200,
                                   num_inputs=0, max_k_prime=2, chunk_size=2, dataset_name="toy", resume=True)
    report = multiguard.make_report([tmp_path / "run"], tmp_path / "report", k=[2], k_prime=[1])
    assert (report.out / "summary.md").is_file() and (report.out / "curves.csv").is_file()
