"""The thresholded attack (``multiguard attack --threshold``): it flips per-label decisions where the closed form
says a perturbation within R can, not where it cannot; the run writes ``empirical_thresholded.csv`` with the
certified values beside the empirical ones and no violation on a small real model; bad input is refused."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy import stats

from multiguard.certificates.thresholds import LabelThresholds
from multiguard.evaluation.attack_run import run_attack
from multiguard.evaluation.attacks.thresholded import attack_thresholded
from multiguard.evaluation.empirical import THRESHOLDED_COLUMNS, load_thresholded
from multiguard.sampling.smoothed import MultiGuard

SIGMA = 0.5


def half_planes(z: torch.Tensor) -> torch.Tensor:
    """Scores ``(z0 - 0.5, z1 - 0.5)``; with score threshold 0 the smoothed on-probability of label i at x is
    ``Phi((x_i - 0.5) / sigma)`` in closed form, and within ``||delta|| <= R`` it reaches
    ``Phi((x_i -+ R - 0.5) / sigma)``."""
    return z - 0.5


def thresholded_smoother() -> MultiGuard:
    return MultiGuard(half_planes, 2, SIGMA, thresholds=LabelThresholds((0.0,), "score"))


# Input 0: true label 0 just on (p = Phi(0.2) = 0.58), label 1 far off. Input 1: true label 0 far on
# (Phi(0.8)), label 1 (not true) just off (Phi(-0.2) = 0.42).
X = torch.tensor([[0.6, 0.1], [0.9, 0.4]])
LABELS = np.array([[True, False], [True, False]])


def test_the_attack_turns_a_true_label_off_and_another_on_within_the_radius() -> None:
    radius = 0.25  # closed form: label 0 of input 0 reaches Phi(-0.3) = 0.38, label 1 of input 1 Phi(0.3) = 0.62
    result = attack_thresholded(thresholded_smoother(), X, LABELS, radius=radius, steps=10, samples=16, n=1000)
    assert result.predicted.tolist() == [[False, False], [True, True]]
    assert (result.deltas.norm(dim=1) <= radius + 1e-6).all()
    reachable = stats.norm.cdf([(0.6 - radius - 0.5) / SIGMA, (0.4 + radius - 0.5) / SIGMA])
    measured = result.on_counts[[0, 1], [0, 1]] / 1000
    assert np.abs(measured - reachable).max() < 0.06  # near the closed form's extreme (Monte Carlo tolerance)
    metrics = result.metrics()
    assert metrics["recall"].tolist() == [0.0, 1.0] and metrics["precision"].tolist() == [0.0, 0.5]


def test_no_flip_where_the_closed_form_forbids_one() -> None:
    # R = 0.02: label 0 of input 0 stays above Phi(0.16) = 0.56, label 1 of input 1 below Phi(-0.16) = 0.44
    result = attack_thresholded(thresholded_smoother(), X, LABELS, radius=0.02, steps=5, samples=16, n=1000)
    assert result.predicted.tolist() == LABELS.tolist()


def test_the_attack_needs_thresholds_and_a_good_cut() -> None:
    plain = MultiGuard(half_planes, 2, SIGMA)
    with pytest.raises(ValueError, match="^thresholds: this MultiGuard has none"):
        attack_thresholded(plain, X, LABELS, radius=0.25)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="q"):
            attack_thresholded(thresholded_smoother(), X, LABELS, radius=0.25, q=bad)
    with pytest.raises(ValueError, match="radius"):
        attack_thresholded(thresholded_smoother(), X, LABELS, radius=0.0)


def test_run_writes_the_thresholded_csv_with_no_violation(tiny_model_checkpoint, tmp_path) -> None:
    out = tmp_path / "attack"
    radii = [0.0, 0.25, 0.5]
    run = run_attack(tiny_model_checkpoint, out_dir=out, radii=radii, k=3, num_inputs=6, steps=3, samples=4,
                     restarts=1, n=100, seed=0, device="cpu", thresholds=0.5)
    with open(out / "empirical_thresholded.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == THRESHOLDED_COLUMNS and len(rows) == 1 + len(radii)
    table = load_thresholded(out)
    assert table["radius"].tolist() == radii and (table["num_inputs"] == 6).all()
    thresholded = run.thresholded
    assert thresholded.violations.tolist() == [0, 0, 0] and table["violations"].tolist() == [0, 0, 0]
    certified_on, possibly_on = thresholded.certificate.sets(np.asarray(radii))
    assert (~possibly_on[:, 2]).any()  # the check has teeth: labels are certified off at R = 0.5
    # the certified values are lower bounds of what the measured (attacked) sets get, input by input
    assert (table["certified_recall"] <= table["recall"] + 1e-12).all()
    assert (table["certified_f1"] <= table["f1"] + 1e-12).all()
    settings = json.loads((out / "attack.json").read_text())
    assert settings["thresholded_violations"] == [0, 0, 0] and settings["q"] == 0.5
    assert settings["thresholds"] == {"values": [0.5], "scale": "probability"}
    assert settings["violations"] is not None and settings["identity"]["thresholds"] == settings["thresholds"]
    with np.load(out / "per_input.npz") as arrays:
        assert arrays["thresholded_predicted"].shape == (6, 3, 10)
        assert {"labels", "radii", "sizes", "certified", "certified_on_radius"} <= set(arrays.files)
    assert (out / "empirical.csv").is_file() and not (out / "parts").exists()


def test_a_run_without_thresholds_writes_no_thresholded_csv_and_refuses_a_cut(tiny_model_checkpoint,
                                                                              tmp_path) -> None:
    with pytest.raises(ValueError, match="^q: .*--threshold"):
        run_attack(tiny_model_checkpoint, out_dir=tmp_path / "a", radii=[0.25], k=3, num_inputs=2, q=0.3,
                   device="cpu")
    assert not (tmp_path / "a").exists()


class _Killed(Exception):
    pass


def test_a_killed_thresholded_attack_resumes_to_the_same_numbers(tiny_model_checkpoint, tmp_path) -> None:
    common = dict(radii=[0.25, 0.5], k=3, num_inputs=4, steps=2, samples=4, restarts=1, n=40, seed=3,
                  device="cpu", thresholds=0.5, batch_size=8)  # blocks of 2 inputs
    whole = run_attack(tiny_model_checkpoint, out_dir=tmp_path / "whole", **common)

    def killer(line: str) -> None:  # dies once the thresholded attack finished its first radius
        if line.startswith("thresholded attack: R = 0.25"):
            raise _Killed

    with pytest.raises(_Killed):
        run_attack(tiny_model_checkpoint, out_dir=tmp_path / "cut", log=killer, **common)
    assert list((tmp_path / "cut" / "parts").glob("t000-*.npz"))
    resumed = run_attack(tiny_model_checkpoint, out_dir=tmp_path / "cut", resume=True, **common)
    assert np.array_equal(resumed.thresholded.on_counts, whole.thresholded.on_counts)
    assert (tmp_path / "cut" / "empirical_thresholded.csv").read_text() == \
        (tmp_path / "whole" / "empirical_thresholded.csv").read_text()


def test_without_a_certificate_the_certified_columns_are_empty(tiny_model_checkpoint, tmp_path) -> None:
    run = run_attack(tiny_model_checkpoint, out_dir=tmp_path / "a", radii=[0.25], k=3, num_inputs=2, steps=1,
                     samples=2, restarts=1, n=20, device="cpu", thresholds=0.5, q=0.4, certify=False)
    table = load_thresholded(tmp_path / "a")
    assert np.isnan(table["certified_f1"]).all() and table["violations"].tolist() == [-1]
    assert run.thresholded.violations is None and run.thresholded.certificate is None
    assert json.loads((tmp_path / "a" / "attack.json").read_text())["thresholded_violations"] is None
    # the measured set is the labels on in more than a share q of the n samples
    assert np.array_equal(run.thresholded.predicted[:, 0], run.thresholded.on_counts[:, 0] / 20 > 0.4)
