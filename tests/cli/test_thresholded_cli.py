"""The thresholded certificate from the command line, as a user runs it: certify with thresholds (a number, a
file, a rule; fixed n and sequential), report with both methods, predict, and the refusals (a resume with other
thresholds, a threshold method on a run without on-counts, bad thresholds). Runs certify the checkpoint of
tests/fixtures/old_run (a small_cnn on multidigits) in-process, tiny settings."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from clitools import assert_one_line_error_in_process, run_in_process
from PIL import Image

from multiguard.certificates.thresholded import certify_thresholded
from multiguard.certificates.thresholds import LabelThresholds
from multiguard.runs.folder import load_run

OLD = Path(__file__).parents[1] / "fixtures" / "old_run"
TINY = ["--num-samples", "200", "--num-inputs", "12", "--chunk-size", "4", "--max-k-prime", "2", "--device", "cpu",
        "--quiet"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("thresholded")
    shutil.copy(OLD / "model.pt", folder / "model.pt")
    return folder


@pytest.fixture(scope="module")
def thresholded_run(project: Path) -> Path:
    from multiguard.cli import main  # in-process, as run_in_process does (a module fixture has no capsys)

    assert main(["certify", "--checkpoint", str(project / "model.pt"), *TINY, "--threshold", "0.5",
                 "--out", str(project / "run")]) == 0
    return project / "run"


def test_certify_stores_on_counts_and_records_the_thresholds(thresholded_run: Path) -> None:
    run = load_run(thresholded_run)
    assert run.thresholds == LabelThresholds((0.5,), "probability", "--threshold 0.5")
    assert run.metadata["thresholds"] == {"values": [0.5], "scale": "probability"}
    assert run.on_counts.shape == (12, 10) and run.nested_on_counts.shape == (12, 2, 10)
    assert np.array_equal(run.nested_on_counts[:, -1], run.on_counts)
    assert (run.on_counts <= 200).all() and (run.on_counts > 0).any()
    small = run.at_sample_size(100)
    assert np.array_equal(small.on_counts, run.nested_on_counts[:, 0])


def test_report_draws_both_methods_from_the_same_run(thresholded_run: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_in_process(capsys, "report", str(thresholded_run), "--methods", "multiguard", "threshold",
                                    "--k", "2", "--q", "0.5", "0.3", "--radii", "0:1:0.25", "--out",
                                    str(tmp_path / "rep"))
    assert code == 0, err
    with open(tmp_path / "rep" / "curves.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method"], r["q"]) for r in rows} == {("multiguard", ""), ("threshold", "0.5"), ("threshold", "0.3")}
    run = load_run(thresholded_run)
    radii = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    for q in (0.5, 0.3):
        expected = certify_thresholded(run.on_counts, 200, alpha=0.001, sigma=run.sigma, q=q).metrics(run.labels,
                                                                                                       radii)
        got = [r for r in rows if r["method"] == "threshold" and float(r["q"]) == q]
        assert np.allclose([float(r["f1"]) for r in got], expected.f1, atol=1e-9)
        assert np.allclose([float(r["precision"]) for r in got], expected.precision, atol=1e-9)
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "thresholded (per label)" in summary and "| q |" not in summary.split("## ")[0]
    assert "**q**:" in summary
    # The default methods include threshold for a run with on-counts; read_csv keeps the q of each curve.
    from multiguard.evaluation.curves import read_csv

    assert sorted(c.q for c in read_csv(tmp_path / "rep" / "curves.csv") if c.q is not None) == [0.3, 0.5]


def test_resume_with_other_thresholds_is_refused_naming_the_field(thresholded_run: Path, capsys) -> None:
    result = run_in_process(capsys, "certify", "--checkpoint", str(thresholded_run.parent / "model.pt"), *TINY,
                            "--threshold", "0.7", "--out", str(thresholded_run), "--resume")
    assert_one_line_error_in_process(result, "thresholds: the run has", "0.5", "0.7")
    result = run_in_process(capsys, "certify", "--checkpoint", str(thresholded_run.parent / "model.pt"), *TINY,
                            "--out", str(thresholded_run), "--resume")
    assert_one_line_error_in_process(result, "thresholds: the run has")


def test_a_threshold_method_on_a_run_without_on_counts_is_refused(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    run = load_run(folder / "run_fixed")  # written before thresholds existed: loads, without on-counts
    assert run.on_counts is None and run.thresholds is None
    result = run_in_process(capsys, "report", str(folder / "run_fixed"), "--methods", "threshold", "--out",
                            str(tmp_path / "rep"))
    assert_one_line_error_in_process(result, "methods: threshold needs per-label on-counts", "run_fixed")
    code, _, err = run_in_process(capsys, "report", str(folder / "run_fixed"), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    with open(tmp_path / "rep" / "curves.csv", newline="") as handle:
        assert "q" not in next(csv.reader(handle))  # the old columns, unchanged


@pytest.mark.parametrize("value, needle", [("1.5", "thresholds must be probabilities in [0, 1]"),
                                           ("nofile.txt", "threshold must be a number or a file")])
def test_bad_thresholds_fail_before_any_file(project: Path, tmp_path: Path, capsys, value: str, needle: str) -> None:
    result = run_in_process(capsys, "certify", "--checkpoint", str(project / "model.pt"), *TINY, "--threshold", value,
                            "--out", str(tmp_path / "run"))
    assert_one_line_error_in_process(result, needle)
    assert not (tmp_path / "run").exists()


def test_thresholds_from_a_file_and_from_a_rule(project: Path, tmp_path: Path, capsys) -> None:
    names = load_run_names(project)
    (tmp_path / "tau.txt").write_text("".join(f"{name} {0.3 + 0.05 * i}\n" for i, name in enumerate(names)))
    code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(project / "model.pt"), *TINY, "--threshold",
                                  str(tmp_path / "tau.txt"), "--out", str(tmp_path / "file-run"))
    assert code == 0, err
    run = load_run(tmp_path / "file-run")
    assert run.thresholds.values == pytest.approx([0.3 + 0.05 * i for i in range(10)])
    code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(project / "model.pt"), *TINY,
                                  "--threshold-rule", "f1", "--threshold-inputs", "40", "--out",
                                  str(tmp_path / "rule-run"))
    assert code == 0, err
    run = load_run(tmp_path / "rule-run")
    assert run.thresholds.scale == "score" and len(run.thresholds.values) == 10
    assert "rule f1 on 40 train images disjoint from the certified inputs" in run.metadata["thresholds_source"]


def load_run_names(project: Path) -> list[str]:
    from multiguard.common.torch_files import read_checkpoint

    return list(read_checkpoint(project / "model.pt")["meta"]["class_names"])


def test_sequential_run_with_thresholds_reports_with_anytime_bounds(project: Path, tmp_path: Path, capsys) -> None:
    """Under the default stopping rule (fine looks, three quarters of alpha at the last look, the margin rule):
    the on-counts stored at each input's stop are those of its first samples (live equals the replay of the
    rule on nested counts of the same seed), and the report's thresholded curves read the anytime bounds at the
    run's looks with the run's spending, the bounds that hold at the rule's stopping time."""
    from multiguard.certificates.sequential import look_schedule, sequential_certification
    from multiguard.models.checkpoints import dataset_for_checkpoint, load_checkpoint, smoothed_from_checkpoint
    from multiguard.runs.job import load_batch

    code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(project / "model.pt"), "--num-samples", "500",
                                  "--num-inputs", "8", "--chunk-size", "4", "--device", "cpu", "--quiet",
                                  "--stop-at-radius", "0.1", "--threshold", "0.5", "--out", str(tmp_path / "seq"))
    assert code == 0, err
    run = load_run(tmp_path / "seq")
    assert run.samples is not None and run.on_counts.shape == (8, 10) and run.nested_on_counts is None
    assert (run.on_counts <= run.samples[:, None]).all()
    rule = run.stop_rule
    assert {key: rule[key] for key in ("futility", "schedule", "spending", "margin")} == {
        "futility": "margin", "schedule": "fine", "spending": 0.75, "margin": 0.2}
    looks = look_schedule(500, "fine")  # 100, 200, 300, 400, 500
    assert run.sample_sizes.tolist() == looks.tolist() == [100, 200, 300, 400, 500]
    # Live equals replay: the same model, seed and inputs sampled at every look, the rule replayed on them.
    model, meta = load_checkpoint(project / "model.pt")
    data, _ = dataset_for_checkpoint(meta, split=run.metadata["split"])
    images, labels = load_batch(data, run.indices)
    guard = smoothed_from_checkpoint(model, meta, device="cpu", thresholds=run.thresholds,
                                     noise=run.metadata["noise"])  # the command line's default: sound
    assert run.metadata["noise"] == "sound"
    nested, nested_on = guard.sample_nested_counts(images, looks, seed=run.metadata["seed"], index=run.indices,
                                                   max_k_prime=1, with_on_counts=True)
    replay = sequential_certification(nested[:, :, 0], labels, looks=looks, alpha=rule["alpha"], k=rule["k"],
                                      k_prime=rule["k_prime"], sigma=run.sigma, radius=rule["radius"],
                                      futility=rule["futility"], spending=rule["spending"], margin=rule["margin"])
    assert np.array_equal(replay.samples, run.samples)
    # Early stops, one at a look the 1-2-5 schedule does not have (so the report must read the run's looks).
    assert (run.samples < 500).any() and not np.isin(run.samples, [100, 200, 500]).all()
    assert np.array_equal(run.on_counts, nested_on[np.arange(8), np.searchsorted(looks, run.samples)])
    code, _, err = run_in_process(capsys, "report", str(tmp_path / "seq"), "--methods", "threshold", "--radii",
                                  "0:1:0.05", "--out", str(tmp_path / "rep"))
    assert code == 0, err
    with open(tmp_path / "rep" / "curves.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    got = np.array([float(r["f1"]) for r in rows])
    radii = np.array([float(r["radius"]) for r in rows])
    expected = certify_thresholded(run.on_counts, run.samples, alpha=0.001, sigma=run.sigma, looks=looks,
                                   spending=0.75)
    np.testing.assert_allclose(got, expected.metrics(run.labels, radii).f1, rtol=1e-6, atol=1e-9)
    # The report's bounds are the rule's: with equal shares over the looks they would be others.
    equal_shares = certify_thresholded(run.on_counts, run.samples, alpha=0.001, sigma=run.sigma, looks=looks)
    assert not np.array_equal(equal_shares.on_radius, expected.on_radius)


def test_predict_prints_labels_on_undecided_and_off(project: Path, tmp_path: Path, capsys) -> None:
    from multiguard.common.torch_files import read_checkpoint
    from multiguard.models.checkpoints import dataset_for_checkpoint

    data, _ = dataset_for_checkpoint(read_checkpoint(project / "model.pt")["meta"])
    image, _ = data[0]
    path = tmp_path / "digits.png"
    Image.fromarray((image[0].numpy() * 255).round().astype("uint8")).save(path)
    code, out, err = run_in_process(capsys, "predict", "--checkpoint", str(project / "model.pt"), str(path), "--k",
                                    "2", "--n", "300", "--threshold", "0.5", "--device", "cpu")
    assert code == 0, err
    assert "per label (thresholded, q = 0.5" in out
    for line in ("certified on:", "undecided:", "certified off:"):
        assert line in out
    code, out, err = run_in_process(capsys, "predict", "--checkpoint", str(project / "model.pt"), str(path), "--k",
                                    "2", "--n", "300", "--threshold", "0.5", "--device", "cpu", "--json")
    assert code == 0, err
    entry = json.loads(out)[0]["thresholded"]
    names = set(entry["on"]) | set(entry["undecided"]) | set(entry["off"])
    assert len(names) == 10 and not set(entry["on"]) & set(entry["off"])


def test_a_report_on_a_run_whose_thresholds_were_edited_is_refused(thresholded_run: Path, tmp_path: Path,
                                                                   capsys) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(thresholded_run, edited)
    meta = json.loads((edited / "metadata.json").read_text())
    meta["thresholds"] = {"values": [0.2], "scale": "probability"}  # would certify another classifier
    (edited / "metadata.json").write_text(json.dumps(meta))
    result = run_in_process(capsys, "report", str(edited), "--methods", "threshold", "--out", str(tmp_path / "rep"))
    assert_one_line_error_in_process(result, "thresholds:", "the counts were sampled with")
