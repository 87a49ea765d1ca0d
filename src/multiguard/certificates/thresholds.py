"""Per-label thresholds of a thresholded base classifier: what they are, where they come from. No torch.

A thresholded base classifier turns a model's scores into per-label decisions: label i is on for an input z
when ``score_i(z) > tau_i`` (docs/certificate.md, "The thresholded certificate"). The thresholds are part of
the base classifier, like sigma and the sampling mode, so a run records them in its identity.

:class:`LabelThresholds` is the value: one threshold for every label or one per label, on one of two scales:

- ``"probability"``: compared with ``sigmoid(score)`` (the usual reading of a multi-label model trained with a
  sigmoid loss); the sampling engine compares the score with ``logit(tau)``, the same decision;
- ``"score"``: compared with the model's raw output (logits for the models of this package; probabilities for
  a model that already outputs them).

Three sources (the command line offers each): a number (``--threshold 0.5``), a file with one threshold per
label (:func:`read_threshold_file`), or a rule that chooses them on a split disjoint from the certified inputs
(:data:`THRESHOLD_RULES`: ``f1`` and ``certified-f1``, see their help).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from multiguard.common.registry import Registry
from multiguard.common.validation import check_choice, check_float, invalid

__all__ = ["SCALES", "THRESHOLD_RULES", "LabelThresholds", "ThresholdRuleRecord", "parse_threshold",
           "read_threshold_file"]

SCALES = ("probability", "score")
"""What a threshold is compared with: ``sigmoid(score)`` or the raw score."""


@dataclass(frozen=True)
class LabelThresholds:
    """The thresholds of a thresholded base classifier.

    Attributes:
        values: one threshold (for every label) or one per label, in label order.
        scale: ``"probability"`` (compared with sigmoid(score); values in [0, 1]) or ``"score"`` (compared with
            the raw score; any finite value).
        source: where they came from, for people (not part of the identity): ``"--threshold 0.5"``,
            ``"file thresholds.txt"``, ``"rule f1 on 300 train images"``.
    """

    values: tuple[float, ...]
    scale: str = "probability"
    source: str = ""

    def __post_init__(self) -> None:
        check_choice(self.scale, "threshold scale", SCALES)
        try:
            values = tuple(float(v) for v in np.atleast_1d(np.asarray(self.values, dtype=np.float64)).tolist())
        except (TypeError, ValueError):
            raise invalid("thresholds", "numbers", self.values) from None
        if not values:
            raise invalid("thresholds", "at least one number", self.values)
        if self.scale == "probability" and not all(0.0 <= v <= 1.0 for v in values):
            raise invalid("thresholds", "probabilities in [0, 1] (--threshold-scale probability)", list(values))
        if self.scale == "score" and not all(math.isfinite(v) for v in values):
            raise invalid("thresholds", "finite numbers", list(values))
        object.__setattr__(self, "values", values)

    @classmethod
    def single(cls, value: float, scale: str = "probability") -> LabelThresholds:
        """One threshold for every label. Refused on the probability scale at 0 (every label always on) and 1 (every
        label always off): a certificate of a constant classifier says nothing about the model."""
        value = check_float(value, "threshold")
        state = _constant_state(value, scale)
        if state is not None:
            raise ValueError(f"threshold: {value:g} keeps every label always {state}, whatever the model; its "
                             "certificate would say nothing about the model: give a threshold strictly between 0 "
                             "and 1")
        return cls((value,), scale, f"--threshold {value:g}" + ("" if scale == "probability" else f" ({scale})"))

    def per_label(self, num_classes: int) -> np.ndarray:
        """float64 ``(c,)``: the thresholds of every label on this object's scale."""
        if len(self.values) == 1:
            return np.full(num_classes, self.values[0])
        if len(self.values) != num_classes:
            raise invalid("thresholds", f"one number or one per label ({num_classes})",
                          f"{len(self.values)} numbers")
        return np.array(self.values)

    def score_thresholds(self, num_classes: int) -> np.ndarray:
        """float64 ``(c,)``: thresholds to compare the raw scores with (``score > tau``): ``logit(tau)`` for
        probabilities (``-inf`` for 0, ``inf`` for 1: a label is then always, or never, on)."""
        values = self.per_label(num_classes)
        if self.scale == "score":
            return values
        with np.errstate(divide="ignore"):
            return np.log(values) - np.log1p(-values)

    def identity(self) -> dict[str, Any]:
        """What a run records and compares: ``{"values": [...], "scale": ...}``."""
        return {"values": list(self.values), "scale": self.scale}

    def describe(self) -> str:
        """One line for people: ``'0.5 (probability) for every label'`` or ``'per label (score): 0.37, ...'``."""
        shown = ", ".join(f"{v:.3g}" for v in self.values)
        where = f"; {self.source}" if self.source else ""
        if len(self.values) == 1:
            return f"{shown} ({self.scale}) for every label{where}"
        return f"per label ({self.scale}): {shown}{where}"

    @classmethod
    def from_identity(cls, record: dict[str, Any] | None, source: str = "") -> LabelThresholds | None:
        """The value a run's metadata records (``None`` for a run without thresholds)."""
        if not record:
            return None
        return cls(tuple(record["values"]), record.get("scale", "probability"), source)


def read_threshold_file(path: str | os.PathLike[str], class_names: Sequence[str], scale: str = "probability"
                        ) -> LabelThresholds:
    """Thresholds from a text file with one per label: ``c`` lines, each a number (in label order) or
    ``name number`` (the label's name from ``class_names``, any order, each label once). Blank lines and
    ``#`` comments are skipped. Raises a one-line ValueError naming the file and the line."""
    text_path = os.fspath(path)
    try:
        with open(text_path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ValueError(f"threshold file {text_path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ValueError(f"threshold file {text_path}: not a text file") from None
    names = [str(n) for n in class_names]
    by_name: dict[str, float] = {}
    in_order: list[float] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        name, value_text = " ".join(parts[:-1]), parts[-1]
        try:
            value = float(value_text)
        except ValueError:
            raise ValueError(f"threshold file {text_path}, line {number}: {raw.strip()!r} does not end in a "
                             "number") from None
        if name:
            if name not in names:
                raise ValueError(f"threshold file {text_path}, line {number}: unknown label {name!r} "
                                 f"(labels: {', '.join(names)})")
            if name in by_name:
                raise ValueError(f"threshold file {text_path}, line {number}: label {name!r} given twice")
            by_name[name] = value
        else:
            in_order.append(value)
    if by_name and in_order:
        raise ValueError(f"threshold file {text_path}: mixes 'name value' lines with bare numbers")
    values = [by_name.get(n, math.nan) for n in names] if by_name else in_order
    if len(values) != len(names) or any(math.isnan(v) for v in values):
        missing = [n for n in names if n not in by_name] if by_name else []
        detail = f"missing {', '.join(missing)}" if missing else f"{len(values)} thresholds"
        raise ValueError(f"threshold file {text_path}: needs one threshold per label ({len(names)}), {detail}")
    for name, value in zip(names, values, strict=True):
        state = _constant_state(value, scale)
        if state is not None:  # a constant label: its certificate says nothing about the model
            raise ValueError(f"threshold file {text_path}: label {name!r} has threshold {value:g}, which keeps it "
                             f"always {state}, whatever the model; give thresholds strictly between 0 and 1")
    try:
        return LabelThresholds(tuple(values), scale, f"file {text_path}")
    except ValueError as exc:
        raise ValueError(f"threshold file {text_path}: {exc}") from None


def _constant_state(value: float, scale: str) -> str | None:
    """How a probability threshold of 0 or 1 keeps its label whatever the model (``"on (...)"`` or
    ``"off (...)"``); ``None`` for any other threshold or scale."""
    if scale != "probability" or value not in (0.0, 1.0):
        return None
    return "on (sigmoid(score) > 0 for every score)" if value == 0.0 else "off (sigmoid(score) > 1 for none)"


def parse_threshold(value: object, class_names: Sequence[str], scale: str = "probability") -> LabelThresholds:
    """``--threshold``'s value: a number (one threshold for every label), a file with one per label
    (:func:`read_threshold_file`), or already a :class:`LabelThresholds` (returned as it is)."""
    if isinstance(value, LabelThresholds):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return LabelThresholds.single(float(value), scale)
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    try:
        number = float(text)
    except ValueError:
        if not os.path.exists(text):
            raise ValueError(f"threshold must be a number or a file with one threshold per label, got {text!r} "
                             "(no such file)") from None
        return read_threshold_file(text, class_names, scale)
    return LabelThresholds.single(number, scale)


# ---------------------------------------------------------------------------------------------- rules

ThresholdRule = Callable[..., np.ndarray]
"""``rule(scores, labels, *, alpha, sigma, q) -> (c,)`` score thresholds: ``scores`` float ``(M, D, c)`` the
base model's raw scores on D noisy copies of each of M validation inputs (disjoint from the inputs to be
certified), ``labels`` bool ``(M, c)`` their true labels."""



@dataclass(frozen=True)
class ThresholdRuleRecord:
    """What a threshold rule needs.

    Attributes:
        draws: the number D of noisy copies per validation input the rule reads; ``None``: the sampling step's
            default (1000 copies, :func:`multiguard.runs.certify_step.choose_thresholds`).
    """

    draws: int | None = None


THRESHOLD_RULES: Registry[ThresholdRule, ThresholdRuleRecord] = Registry("threshold rule", "--threshold-rule",
                                                                         record=ThresholdRuleRecord)
"""How thresholds are chosen on a validation split (a :data:`ThresholdRule` with a :class:`ThresholdRuleRecord`)."""


def _f1_rule(scores: np.ndarray, labels: np.ndarray, **_: Any) -> np.ndarray:
    from multiguard.certificates.thresholded import f1_best_thresholds

    m, draws, c = scores.shape
    return f1_best_thresholds(scores.reshape(m * draws, c), np.repeat(labels, draws, axis=0), default=0.0)


def _certified_f1_rule(scores: np.ndarray, labels: np.ndarray, *, alpha: float, sigma: float, q: float,
                       **_: Any) -> np.ndarray:
    from multiguard.certificates.thresholded import certified_f1_thresholds

    c = scores.shape[2]
    candidates = np.quantile(scores.reshape(-1, c), np.linspace(0.02, 0.98, 41), axis=0)
    on_counts = np.stack([(scores > row).sum(axis=1) for row in candidates], axis=1)  # (M, G, c)
    return certified_f1_thresholds(candidates, on_counts, scores.shape[1], labels, alpha=alpha, sigma=sigma, q=q,
                                   radii=(0.0, 0.25, 0.5, 1.0), default=0.0)


THRESHOLD_RULES.register(
    "f1", _f1_rule, record=ThresholdRuleRecord(draws=20),
    help="each label's F1-best cut of the base model's scores on 20 noisy copies of each validation image",
)
THRESHOLD_RULES.register(
    "certified-f1", _certified_f1_rule, record=ThresholdRuleRecord(draws=None),
    help="each label's threshold (of 41 quantiles of its validation scores) with the best certified F1 summed "
         "over R = 0, 0.25, 0.5, 1 on n noisy copies of each validation image",
)
