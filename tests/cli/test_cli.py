"""The ``multiguard`` command as a user runs it: train -> certify -> report, predict, datasets, errors, help."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from clitools import (
    CERTIFY_ARGS,
    assert_one_line_error,
    assert_one_line_error_in_process,
    assert_same_counts,
    copy_checkpoint,
    reference_run,
    run,
    run_in_process,
    tiny_checkpoint,
)

COMMANDS = [["train"], ["datasets"], ["datasets", "list"], ["datasets", "describe"], ["certify"], ["report"],
            ["predict"], ["demo"], ["attack"]]


@pytest.mark.slow
def test_train_certify_report_end_to_end_without_the_model(tmp_path_factory, tmp_path: Path) -> None:
    checkpoint = copy_checkpoint(tiny_checkpoint(tmp_path_factory), tmp_path / "model")
    out = tmp_path / "run"
    certified = run("certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu", "--out", str(out))
    assert "run complete" in certified.stdout and "20/20 inputs" in certified.stdout
    assert_same_counts(reference_run(tmp_path_factory), out)  # the same settings give the same counts
    meta = json.loads((out / "metadata.json").read_text())
    for key in ("checkpoint_sha256", "arch", "dataset", "split", "sigma", "n", "seed", "max_k_prime", "clamp",
                "version", "device", "wall_time_s"):
        assert key in meta, key
    assert (meta["arch"], meta["dataset"], meta["split"], meta["n"], meta["max_k_prime"]) == (
        "small_cnn", "multidigits", "test", 500, 2)
    assert len(meta["checkpoint_sha256"]) == 64

    checkpoint.unlink()  # a report reads the saved counts only
    reported = run("report", str(out), "--k", "1", "3", "--k-prime", "1", "2", "--radii", "0:1.5:0.1",
                   "--summary-radii", "0.3", "--out", str(tmp_path / "report"))
    assert "## Certified top-k f1-score@R (%)" in reported.stdout and "R = 0.3" in reported.stdout
    files = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert files == ["curves.csv", "f1.png", "precision.png", "recall.png", "results.json", "summary.md"]
    for name in ("precision.png", "recall.png", "f1.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(tmp_path / "report" / "curves.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["run", "method", "k", "k_prime", "alpha", "sigma", "n", "radius", "precision",
                                     "recall", "f1", "num_inputs"]
        rows = list(reader)
    methods = {(r["method"], r["k_prime"]) for r in rows}
    assert methods == {("multiguard", "1"), ("multiguard-first-terms", "1"), ("jia", "1"), ("multiguard", "2"),
                       ("multiguard-first-terms", "2")}
    assert {r["num_inputs"] for r in rows} == {"20"} and {r["n"] for r in rows} == {"500"}
    # MultiGuard >= Jia et al. at every radius, for every metric and k
    table: dict[tuple[str, str, str], dict[str, dict[str, float]]] = defaultdict(dict)
    for r in rows:
        if r["k_prime"] == "1":
            table[(r["k"], r["alpha"], r["radius"])][r["method"]] = {m: float(r[m]) for m in ("precision", "recall",
                                                                                            "f1")}
    assert len(table) == 2 * 17  # k in {1, 3} x (16 grid radii + 0.25)
    for key, by_method in table.items():
        for metric in ("precision", "recall", "f1"):
            assert by_method["multiguard"][metric] >= by_method["jia"][metric] - 1e-12, (key, metric)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| Jia et al. |" in summary and "R = 0.25" in summary


@pytest.mark.slow
def test_attack_writes_empirical_curves_that_report_overlays(tmp_path_factory, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path_factory)
    attack_dir = tmp_path / "attack"
    attacked = run("attack", "--checkpoint", str(checkpoint), "--radii", "0,0.5", "--k", "3", "--num-inputs", "6",
                   "--steps", "3", "--samples", "8", "--n", "200", "--seed", "3", "--device", "cpu",
                   "--out", str(attack_dir))  # not --quiet: the table is checked
    assert "below certificate" in attacked.stdout
    with open(attack_dir / "empirical.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["radius", "precision", "recall", "f1", "num_inputs"]
        rows = list(reader)
    assert [float(r["radius"]) for r in rows] == [0.0, 0.5] and {r["num_inputs"] for r in rows} == {"6"}
    settings = json.loads((attack_dir / "attack.json").read_text())
    assert sum(settings["violations"]) == 0  # never below the certificate (each a probability-alpha event)

    out = tmp_path / "run"
    run("certify", "--checkpoint", str(checkpoint), *CERTIFY_ARGS, "--device", "cpu", "--quiet", "--out", str(out))
    run("report", str(out), "--k", "3", "--radii", "0:1:0.25", "--attack", str(attack_dir), "--quiet",
        "--out", str(tmp_path / "report"))
    with open(tmp_path / "report" / "curves.csv", newline="") as handle:
        attack_rows = [r for r in csv.DictReader(handle) if r["method"] == "attack"]
    assert [(r["run"], float(r["radius"])) for r in attack_rows] == [("attack", float(r["radius"])) for r in rows]
    for overlaid, written in zip(attack_rows, rows, strict=True):
        for metric in ("precision", "recall", "f1"):
            assert float(overlaid[metric]) == pytest.approx(float(written[metric]), abs=1e-9)
    assert_one_line_error(run("report", str(out), "--attack", str(tmp_path), "--out", str(tmp_path / "r2"),
                              check=False), str(tmp_path))


@pytest.mark.slow
def test_predict_names_labels_and_radii(tmp_path_factory, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from multiguard.data import get_dataset

    images = get_dataset("multidigits", split="test", size=2, seed=0)
    paths = []
    for i in range(2):
        pixels = (images[i][0][0].numpy() * 255).round().astype(np.uint8)
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(pixels, mode="L").save(path)
        paths.append(str(path))
    checkpoint = tiny_checkpoint(tmp_path_factory)
    text = run("predict", "--checkpoint", str(checkpoint), *paths, "--k", "3", "--n", "200", "--device", "cpu")
    assert text.stdout.count("digit") == 2
    assert "at least 1 of them stays predicted" in text.stdout or "1 of them: no guarantee" in text.stdout
    code, out, _ = run_in_process(capsys, "predict", "--checkpoint", str(checkpoint), *paths, "--k", "2", "--n",
                                  "200", "--device", "cpu", "--json")
    assert code == 0
    as_json = json.loads(out)
    assert [p["image"] for p in as_json] == paths
    for p in as_json:
        assert len(p["labels"]) == 2 and set(p["labels"]) <= {str(d) for d in range(10)}
        radii = [float(r) for r in p["radii"]]
        assert len(radii) == 2 and radii[0] >= radii[1] >= 0


@pytest.mark.slow
def test_datasets_describe_and_list(capsys) -> None:
    text = run("datasets", "describe", "--dataset", "multidigits", "--split", "test")
    assert "multidigits: 10 classes" in text.stdout and "images" in text.stdout
    code, out, _ = run_in_process(capsys, "datasets", "describe", "--dataset", "multidigits", "--split", "test",
                                  "--json")
    described = json.loads(out)
    assert code == 0 and described["classes"] == 10 and described["images"] == 2000 and described["split"] == "test"
    code, out, _ = run_in_process(capsys, "datasets", "list", "--json")
    assert code == 0 and {"multidigits", "voc2007", "coco2014", "nuswide", "csv"} <= set(json.loads(out))


def test_help_on_every_command_shows_defaults(capsys) -> None:
    top = run("--help").stdout
    for name in ("train", "datasets", "certify", "report", "predict", "demo"):
        assert name in top
    helps = {}
    for cmd in COMMANDS:
        code, out, _ = run_in_process(capsys, *cmd, "--help")
        assert code == 0 and out.startswith("usage: multiguard " + " ".join(cmd)), cmd
        helps[" ".join(cmd)] = " ".join(out.split())
    assert "(default: 1000)" in helps["certify"] and "--shard I/N" in helps["certify"]
    assert "(default: 0 to 4 sigma of the runs" in helps["report"]
    assert "The impact of n from one run: --n" in helps["report"]
    assert "(default: 0.5)" in helps["train"] and "(default: multiguard-demo)" in helps["demo"]


# ------------------------------------------------------------------------------------------ errors
# Each error of the list runs once as a user runs it (a subprocess); variants run in-process.


@pytest.mark.slow
def test_error_unknown_dataset() -> None:
    assert_one_line_error(run("datasets", "describe", "--dataset", "imagenet-z", check=False), "imagenet-z")


def _error(capsys, args: list[str], *needles: str) -> None:
    """The command, run in-process, fails with one line naming ``needles`` and exit code 2."""
    assert_one_line_error_in_process(run_in_process(capsys, *args), *needles)


@pytest.mark.slow
def test_error_missing_data_root(tmp_path: Path, capsys) -> None:
    proc = run("datasets", "describe", "--dataset", "voc2007", "--data-root", str(tmp_path / "nowhere"), check=False)
    assert_one_line_error(proc, "nowhere")
    _error(capsys, ["datasets", "describe", "--dataset", "voc2007"], "root")


@pytest.mark.slow
def test_error_unknown_arch(tmp_path: Path) -> None:
    proc = run("train", "--arch", "resnet-9000", "--epochs", "1", "--train-size", "20", "--test-size", "20",
               "--out", str(tmp_path / "m.pt"), check=False)
    assert_one_line_error(proc, "arch", "resnet-9000")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_error_checkpoint_that_is_not_ours(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_text("not a checkpoint\n")
    proc = run("certify", "--checkpoint", str(bogus), "--out", str(tmp_path / "run"), check=False)
    assert_one_line_error(proc, "not a MultiGuard checkpoint")
    _error(capsys, ["certify", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "run")],
           "missing.pt")
    _error(capsys, ["predict", "--checkpoint", str(bogus), str(bogus)], "not a MultiGuard checkpoint")


def test_error_run_dir_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("report", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), check=False),
                          "not a MultiGuard run")
    _error(capsys, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], "nope")


@pytest.mark.slow
def test_errors_on_a_real_run(tmp_path_factory, tmp_path: Path, capsys) -> None:
    reference = str(reference_run(tmp_path_factory))
    out = str(tmp_path / "r")
    assert_one_line_error(run("report", reference, "--k", "11", "--out", out, check=False), "k must be", "10")
    assert_one_line_error(run("report", reference, "--radii", "0:x:0.1", "--out", out, check=False), "radii")
    _error(capsys, ["report", reference, "--k-prime", "3", "--out", out], "k_prime", "2")
    _error(capsys, ["report", reference, "--summary-radii", "a,b", "--out", out], "radii")
    assert not Path(out).exists()
    checkpoint = str(tiny_checkpoint(tmp_path_factory))
    _error(capsys, ["predict", "--checkpoint", checkpoint, "x.png", "--k", "11", "--device", "cpu"], "k")
    _error(capsys, ["certify", "--checkpoint", checkpoint, "--shard", "2/2", "--device", "cpu", "--out", out], "shard")
    # (--num-inputs beyond the split certifies the whole split with a message: tests/test_own_data.py)
