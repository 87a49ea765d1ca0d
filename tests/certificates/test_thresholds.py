"""multiguard.certificates.thresholds: the thresholds value, the file format, and the rules against the functions
they wrap."""

from __future__ import annotations

import numpy as np
import pytest

from multiguard.certificates.thresholded import certified_f1_thresholds, f1_best_thresholds
from multiguard.certificates.thresholds import THRESHOLD_RULES, LabelThresholds, read_threshold_file
from multiguard.common.registry import UnknownNameError

NAMES = ["cat", "dog", "car"]


def test_probability_thresholds_compare_scores_with_their_logit() -> None:
    thresholds = LabelThresholds((0.5, 0.9, 0.0))
    tau = thresholds.score_thresholds(3)
    assert tau[0] == 0.0 and tau[1] == pytest.approx(np.log(9.0)) and tau[2] == -np.inf
    scores = np.array([[0.1, 2.0, -50.0], [-0.1, 2.3, 3.0]])
    sigmoid = 1 / (1 + np.exp(-scores))
    assert np.array_equal(scores > tau, sigmoid > np.array([0.5, 0.9, 0.0]))
    assert np.array_equal(LabelThresholds.single(1.5, "score").score_thresholds(3), np.full(3, 1.5))
    assert LabelThresholds.from_identity(thresholds.identity()) == thresholds
    assert LabelThresholds.from_identity(None) is None


@pytest.mark.parametrize("values, scale, name", [((1.5,), "probability", "thresholds"), ((np.inf,), "score",
                         "thresholds"), ((0.5,), "logit", "threshold scale")])
def test_bad_thresholds_are_refused(values: tuple, scale: str, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be"):
        LabelThresholds(values, scale)


def test_one_threshold_or_one_per_label() -> None:
    with pytest.raises(ValueError, match="one number or one per label"):
        LabelThresholds((0.2, 0.3)).per_label(3)
    assert LabelThresholds((0.2,)).per_label(3).tolist() == [0.2, 0.2, 0.2]


def test_threshold_files_in_order_or_by_name(tmp_path) -> None:  # noqa: ANN001
    plain = tmp_path / "plain.txt"
    plain.write_text("# per label\n0.3\n0.5\n\n0.7  # car\n")
    assert read_threshold_file(plain, NAMES).values == (0.3, 0.5, 0.7)
    named = tmp_path / "named.txt"
    named.write_text("car 0.7\ncat 0.3\ndog\t0.5\n")
    assert read_threshold_file(named, NAMES).values == (0.3, 0.5, 0.7)
    scores = tmp_path / "scores.txt"
    scores.write_text("-1.5\n2\n0\n")
    assert read_threshold_file(scores, NAMES, scale="score").values == (-1.5, 2.0, 0.0)


@pytest.mark.parametrize("text, message", [
    ("0.3\n0.5\n", "needs one threshold per label \\(3\\), 2 thresholds"),
    ("cat 0.3\ndog 0.5\n", "missing car"),
    ("cat 0.3\nbird 0.5\ncar 0.1\n", "line 2: unknown label 'bird'"),
    ("cat 0.3\ncat 0.5\ncar 0.1\ndog 0.2\n", "line 2: label 'cat' given twice"),
    ("0.3\nhigh\n0.2\n", "line 2: 'high' does not end in a number"),
    ("0.3\n1.5\n0.2\n", "probabilities in \\[0, 1\\]"),
    ("cat 0.3\n0.5\ncar 0.1\n", "mixes"),
])
def test_bad_threshold_files_are_refused_naming_file_and_line(tmp_path, text: str, message: str) -> None:  # noqa: ANN001
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^threshold file {path}.*{message}"):
        read_threshold_file(path, NAMES)
    with pytest.raises(ValueError, match="cannot be read"):
        read_threshold_file(tmp_path / "absent.txt", NAMES)


def test_rules_wrap_the_threshold_functions() -> None:
    rng = np.random.default_rng(0)
    m, draws, c = 40, 30, 3
    labels = rng.random((m, c)) < 0.4
    scores = rng.normal(size=(m, draws, c)) + 2.0 * labels[:, None, :]
    f1 = THRESHOLD_RULES.get("f1")(scores, labels, alpha=0.01, sigma=0.5, q=0.5)
    assert np.array_equal(f1, f1_best_thresholds(scores.reshape(-1, c), np.repeat(labels, draws, axis=0)))
    certified = THRESHOLD_RULES.get("certified-f1")(scores, labels, alpha=0.01, sigma=0.5, q=0.5)
    candidates = np.quantile(scores.reshape(-1, c), np.linspace(0.02, 0.98, 41), axis=0)
    counts = np.stack([(scores > row).sum(axis=1) for row in candidates], axis=1)
    assert np.array_equal(certified, certified_f1_thresholds(candidates, counts, draws, labels, alpha=0.01,
                                                             sigma=0.5, q=0.5))
    assert THRESHOLD_RULES.record("f1").draws == 20
    with pytest.raises(UnknownNameError, match="--threshold-rule: unknown threshold rule 'best'"):
        THRESHOLD_RULES.get("best")
