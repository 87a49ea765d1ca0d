"""Runs written by the code before the second structure step (tests/fixtures/old_run, see its README.md) still load,
report the same curves; resuming them is refused since the embedded data's pixels changed (dataset version 2).
The folders are copied first: tests/fixtures is never changed.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from clitools import run_in_process

from multiguard.certificates.stop_rule import StopRule
from multiguard.runs.folder import load_run
from multiguard.runs.spec import IDENTITY_FIELDS, RunSpec

OLD = Path(__file__).parents[1] / "fixtures" / "old_run"
TEXT_COLUMNS = ("run", "method")
# The certify commands that wrote the runs (tests/fixtures/old_run/README.md).
CERTIFY = {
    "run_fixed": ["--num-samples", "300", "--max-k-prime", "2", "--num-inputs", "6", "--chunk-size", "2",
                  "--seed", "3"],
    "run_sequential": ["--num-samples", "500", "--num-inputs", "4", "--chunk-size", "2", "--seed", "3",
                       "--stop-at-radius", "0.25"],
}
REPORT = {"run_fixed": ["--k", "3", "--k-prime", "1", "2"], "run_sequential": []}


@pytest.fixture
def old_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of tests/fixtures/old_run in tmp_path, made the working directory (the runs name model.pt)."""
    folder = tmp_path / "old_run"
    shutil.copytree(OLD, folder)
    monkeypatch.chdir(folder)
    return folder


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_same_curves(actual: Path, expected: Path) -> None:
    """Same columns and rows; text equal, numbers equal to 1e-9 relative."""
    got, want = _rows(actual), _rows(expected)
    assert len(got) == len(want) > 0
    assert list(got[0]) == list(want[0])
    for row, (a, b) in enumerate(zip(got, want, strict=True)):
        for column in want[0]:
            if column in TEXT_COLUMNS:
                assert a[column] == b[column], (row, column)
            else:
                assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-9, abs=1e-12), (row, column)


@pytest.mark.parametrize("name", ["run_fixed", "run_sequential"])
def test_an_old_run_loads_with_its_spec(old_copy: Path, name: str) -> None:
    run = load_run(old_copy / name)
    meta = json.loads((old_copy / name / "metadata.json").read_text())
    assert run.counts.shape[0] == meta["num_inputs"] and run.sigma == 0.5
    spec = RunSpec.from_dict(meta)  # every identity field read back, legacy values for those missing here
    identity = spec.identity()
    stored = {name: meta[name] for name in IDENTITY_FIELDS if name in meta}
    if name == "run_sequential":  # written before schedules, spending and the margin existed: the rule it ran
        stored["stop_rule"] = {**stored["stop_rule"], "schedule": "1-2-5", "spending": None, "margin": 0.2,
                               "bounds": "union"}
    assert stored == {name: value for name, value in identity.items() if name in meta}
    # fields added since read as what such a run was sampled with: None, or float unshared noise
    assert all(identity[name] is None for name in IDENTITY_FIELDS if name not in meta and "noise" not in name)
    assert (identity["noise"], identity["shared_noise"]) == ("float", False)
    if name == "run_sequential":
        assert spec.stop_rule == StopRule(radius=0.25, k=3, k_prime=1, alpha=0.001, futility="remaining",
                                          schedule="1-2-5", spending=None)
        assert run.samples is not None and run.nested_counts is None
    else:
        assert spec.stop_rule is None and run.nested_counts is not None


@pytest.mark.parametrize("name", ["run_fixed", "run_sequential"])
def test_an_old_run_reports_the_same_curves(old_copy: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_in_process(capsys, "report", name, *REPORT[name], "--out", "R")
    assert code == 0, err
    _assert_same_curves(old_copy / "R" / "curves.csv", OLD / f"expected_curves_{name.split('_')[1]}.csv")


@pytest.mark.parametrize("name", ["run_fixed", "run_sequential"])
def test_an_old_multidigits_run_is_not_resumed_on_the_new_pixels(old_copy: Path, name: str,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """0.2.0 made multidigits 8-bit (dataset version 2): a run sampled on 0.1's float pixels (no version) still
    loads and reports (above), but new samples would be of other images, so its resume is refused, naming
    the field, and nothing in the folder changes."""
    run_dir = old_copy / name
    (run_dir / "chunks" / "chunk-000001.npz").unlink()
    before = sorted((p.relative_to(run_dir), p.read_bytes()) for p in run_dir.rglob("*") if p.is_file())
    code, _, err = run_in_process(capsys, "certify", "--checkpoint", "model.pt", "--out", name, *CERTIFY[name],
                                  "--resume")
    assert code == 2
    assert "dataset_version: the run has None, the arguments give 2" in err and "pixels changed" in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted((p.relative_to(run_dir), p.read_bytes()) for p in run_dir.rglob("*") if p.is_file()) == before
