"""results.json: the schema, identical files for identical runs, and `report --compare`'s table, on the runs
written before the second structure step (tests/fixtures/old_run) whose curves.csv is kept beside them."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from multiguard.evaluation.curves import compute_curves, sigma_radius_grid
from multiguard.evaluation.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    compare_results,
    read_results,
    results_document,
    run_cost,
    validate_results,
    write_results,
)
from multiguard.runs.folder import load_run

OLD = Path(__file__).parents[1] / "fixtures" / "old_run"


def write_for(run_dir: Path, out: Path, k_prime=(1, 2)) -> dict:
    run = load_run(run_dir)
    grid = sigma_radius_grid([run.sigma])
    curves = compute_curves([run], k=(3,), k_prime=k_prime, alpha=(0.001,), radius=grid)
    out.mkdir(parents=True, exist_ok=True)
    return write_results(out / RESULTS_FILE, curves, [run], [run.name])


def expected_rows(name: str) -> list[dict]:
    with open(OLD / f"expected_curves_{name}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_records_carry_the_reported_curves_and_the_run_identity(tmp_path):
    document = write_for(OLD / "run_fixed", tmp_path / "A")
    validate_results(json.loads((tmp_path / "A" / RESULTS_FILE).read_text()))
    assert document["schema"] == "multiguard-results" and document["schema_version"] == SCHEMA_VERSION
    (run,) = document["runs"]
    meta = json.loads((OLD / "run_fixed" / "metadata.json").read_text())
    assert run["id"] == "run_fixed" and run["dataset"] == "multidigits" and run["split"] == "test"
    assert run["model"]["checkpoint_sha256"] == meta["checkpoint_sha256"] and run["model"]["arch"] == "small_cnn"
    assert (run["sigma"], run["n"], run["inputs"]["count"], run["inputs"]["seed"]) == (0.5, 300, 6, 3)
    assert run["sampling"] == {"mode": "fp32", "noise": "float, Gaussian in floating point (certificates of real "
                               "arithmetic, not sound in floating point)", "sequential": None}
    assert run["denoiser"] is None
    assert run["cost"]["samples"] == 6 * 300 and run["cost"]["wall_time_s"] == meta["wall_time_s"]
    assert run["cost"]["device"] == "cpu"
    expected = expected_rows("fixed")  # the report's curves.csv of these runs, written by the older code
    records = {(r["method"], r["k"], r["k_prime"], r["radius"]): r for r in document["records"]}
    assert len(records) == len(expected) == len(document["records"])
    for row in expected:
        record = records[(row["method"], int(row["k"]), int(row["k_prime"]), float(row["radius"]))]
        for metric in ("precision", "recall", "f1"):
            assert record[f"certified_{metric}"] == pytest.approx(float(row[metric]), abs=1e-9)
        assert record["num_inputs"] == int(row["num_inputs"]) and record["alpha"] == float(row["alpha"])


def test_a_sequential_run_records_its_rule_and_the_samples_it_used(tmp_path):
    import numpy as np

    document = write_for(OLD / "run_sequential", tmp_path / "S", k_prime=(1,))
    (run,) = document["runs"]
    assert run["sampling"]["sequential"]["radius"] == 0.25
    with np.load(OLD / "run_sequential" / "counts.npz") as arrays:
        assert run["cost"]["samples"] == int(arrays["samples"].sum())
    stopped_early = replace(load_run(OLD / "run_sequential"), samples=np.array([100, 200, 500, 300]))
    assert run_cost(stopped_early)["samples"] == 1100  # the samples used, not inputs x n


def test_identical_runs_give_identical_results(tmp_path):
    write_for(OLD / "run_fixed", tmp_path / "A")
    write_for(OLD / "run_fixed", tmp_path / "B")
    assert (tmp_path / "A" / RESULTS_FILE).read_bytes() == (tmp_path / "B" / RESULTS_FILE).read_bytes()
    copy = tmp_path / "elsewhere" / "run_fixed"  # the same run in another place: the same file
    shutil.copytree(OLD / "run_fixed", copy)
    write_for(copy, tmp_path / "C")
    assert (tmp_path / "C" / RESULTS_FILE).read_bytes() == (tmp_path / "A" / RESULTS_FILE).read_bytes()


def _valid(tmp_path) -> dict:
    return json.loads(json.dumps(write_for(OLD / "run_fixed", tmp_path / "V")))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(schema_version=2), r"schema_version: this multiguard reads version 1, got 2"),
    (lambda d: d["records"][3].update(certified_f1=1.5), r"records\[3\]\.certified_f1: must be in \[0, 1\]"),
    (lambda d: d["records"][0].update(run="other"), r"records\[0\]\.run: 'other' is not one of the runs"),
    (lambda d: d["records"][1].pop("k_prime"), r"records\[1\]\.k_prime: missing"),
    (lambda d: d["records"][2].update(k="3"), r"records\[2\]\.k: must be int, got '3'"),
    (lambda d: d["runs"][0]["cost"].pop("samples"), r"runs\[0\]\.cost\.samples: missing"),
    (lambda d: d["runs"][0]["model"].update(checkpoint_sha256=7), r"runs\[0\]\.model\.checkpoint_sha256: must be"),
    (lambda d: d["records"].append(dict(d["records"][0])), r"records\[\d+\]: \(run, method.*appears twice"),
])
def test_schema_validation_names_the_field(tmp_path, edit, message):
    document = _valid(tmp_path)
    validate_results(document)
    edit(document)
    with pytest.raises(ValueError, match=rf"^results: {message}"):
        validate_results(document)


def test_results_document_leaves_attack_curves_out_and_checks_names(tmp_path):
    run = load_run(OLD / "run_fixed")
    curves = compute_curves([run], k=(3,), k_prime=(1,), radius=[0.0, 0.5])
    with pytest.raises(ValueError, match="names must give one name per run"):
        results_document(curves, [run], [])
    with pytest.raises(ValueError, match=r"curve of run 'run_fixed' \(n = 300\) has no run among \['x'\]"):
        results_document(curves, [run], ["x"])


def test_one_run_read_at_several_n_gets_an_id_per_n(tmp_path):
    run = load_run(OLD / "run_fixed")
    at = [run.at_sample_size(size) for size in (100, 300)]
    curves = compute_curves(at, k=(3,), k_prime=(1,), radius=[0.0, 0.25], names=["run_fixed", "run_fixed"])
    document = write_results(tmp_path / RESULTS_FILE, curves, at, ["run_fixed", "run_fixed"])
    assert [r["id"] for r in document["runs"]] == ["run_fixed@n=100", "run_fixed@n=300"]
    assert [r["cost"]["samples"] for r in document["runs"]] == [600, 1800]
    assert {r["run"] for r in document["records"]} == {"run_fixed@n=100", "run_fixed@n=300"}
    expected = {(r["method"], float(r["radius"])): float(r["f1"]) for r in expected_rows("fixed")
                if r["k"] == "3" and r["k_prime"] == "1"}
    at_300 = [r for r in document["records"] if r["run"] == "run_fixed@n=300"]
    assert at_300 and all(r["certified_f1"] == pytest.approx(expected[(r["method"], r["radius"])], abs=1e-9)
                          for r in at_300)  # read at its own n: the run itself


def test_compare_puts_two_runs_in_one_table(tmp_path):
    write_for(OLD / "run_fixed", tmp_path / "fixed-report", k_prime=(1,))
    write_for(OLD / "run_sequential", tmp_path / "sequential-report", k_prime=(1,))
    text = compare_results([tmp_path / "fixed-report" / RESULTS_FILE, tmp_path / "sequential-report"],
                           metrics=("precision", "f1"))
    lines = text.splitlines()
    assert "## Certified precision (%) at radius R" in lines and "## Certified f1 (%) at radius R" in lines
    header = next(line for line in lines if line.startswith("| results ") and "R = 0 " in line)
    assert [c.strip() for c in header.strip("|").split("|")][-4:] == ["R = 0", "R = 0.25", "R = 0.5", "R = 1"]
    expected = {("fixed-report", "run_fixed"): expected_rows("fixed"),
                ("sequential-report", "run_sequential"): expected_rows("sequential")}
    f1_part = lines[lines.index("## Certified f1 (%) at radius R"):]
    for (label, run), rows in expected.items():
        row = next(line for line in f1_part if line.startswith(f"| {label} ") and "| multiguard " in line)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:5] == [label, run, "multiguard", "3", "1"]
        want = {float(r["radius"]): float(r["f1"]) for r in rows
                if r["method"] == "multiguard" and r["k"] == "3" and r["k_prime"] == "1"}
        assert cells[-4:] == [f"{100 * want[r]:.1f}" for r in (0.0, 0.25, 0.5, 1.0)]
    assert "The runs differ in: " in text and "n" in text.split("The runs differ in: ")[1].split(".")[0]
    runs_table = lines[lines.index("## Runs") + 2: lines.index("## Runs") + 5]
    assert any("run_fixed" in line and "| 1800 " in line for line in runs_table)


def test_compare_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"compare: .*nothing\.json not found"):
        compare_results([tmp_path / "nothing.json"])
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "multiguard-results", "schema_version": 1}))
    with pytest.raises(ValueError, match=r"compare: .*bad\.json: runs: must be a list"):
        read_results(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_command_line_report_writes_results_and_compares_two_runs(tmp_path):
    from clitools import assert_one_line_error, run

    run("report", str(OLD / "run_fixed"), "--k", "3", "--k-prime", "1", "--quiet", "--out", str(tmp_path / "fixed"))
    document = read_results(tmp_path / "fixed" / RESULTS_FILE)  # validated
    assert {r["run"] for r in document["records"]} == {"run_fixed"}
    run("report", str(OLD / "run_sequential"), "--quiet", "--out", str(tmp_path / "sequential"))
    compared = run("report", "--compare", str(tmp_path / "fixed"), str(tmp_path / "sequential" / RESULTS_FILE),
                   "--metric", "recall")
    assert "## Certified recall (%) at radius R" in compared.stdout
    assert "| fixed " in compared.stdout and "| sequential " in compared.stdout
    both = run("report", str(OLD / "run_fixed"), "--k", "3", "--quiet", "--out", str(tmp_path / "again"),
               "--compare", str(tmp_path / "fixed"))
    assert "The runs differ in: nothing of the above." in both.stdout  # the same run, reported twice
    assert (tmp_path / "again" / RESULTS_FILE).read_bytes() == (tmp_path / "fixed" / RESULTS_FILE).read_bytes()
    assert_one_line_error(run("report", check=False), "give RUN_DIRs", "--compare")
    assert_one_line_error(run("report", str(OLD / "run_fixed"), check=False), "--out REPORT_DIR")
    assert_one_line_error(run("report", "--compare", str(tmp_path / "nothing.json"), check=False), "nothing.json")
