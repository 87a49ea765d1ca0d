"""A run's specification as one frozen value: what decides its counts (the identity), how it is planned, and
what ``metadata.json`` records about it. No torch, no SciPy at import.

:class:`RunSpec` is the one declaration of a run's settings: every field says whether it is part of the
identity (what a resume, a shard or a rank must agree on, what the digest stored with the counts covers) and
what a run written before the field existed means (its ``legacy`` value). :data:`IDENTITY_FIELDS`, the
identity of a ``metadata.json`` (:func:`identity_of`) and the metadata a run starts with
(:meth:`RunSpec.metadata`) all follow from it.

:class:`StopRule` makes a run sequential: each input is sampled look by look and stops when its certified
intersection size at ``radius`` (with ``k``, ``k_prime``, ``alpha``) is settled, or when the ``futility``
rule (:data:`multiguard.sequential.FUTILITY_RULES`) says more samples cannot raise it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .sequential import DEFAULT_FUTILITY, DEFAULT_MARGIN, DEFAULT_SCHEDULE, DEFAULT_SPENDING
from .settings import Interval, OneOf, Optional, Settings, setting
from .validation import MAX_N, check_alpha, check_int

__all__ = ["FORMAT_VERSION", "IDENTITY_FIELDS", "IDENTITY_DEFAULTS", "RunSpec", "StopRule", "identity_of"]

FORMAT_VERSION = 1


def _futility_names() -> list[str]:
    from .sequential import FUTILITY_RULES  # SciPy loads here, when a rule is checked

    return FUTILITY_RULES.names()


def _schedule_names() -> list[str]:
    from .sequential import SCHEDULES

    return SCHEDULES.names()


def _alpha(value: Any, name: str) -> float:
    return check_alpha(value)


@dataclass(frozen=True)
class StopRule(Settings):
    """The stopping rule of a sequential run: stop an input once its certified intersection size at ``radius``
    (for top-``k`` smoothing of a top-``k_prime`` base classifier, at confidence ``1 - alpha``) is settled, or
    the ``futility`` rule (with gamma = ``margin`` for ``margin``) says more samples cannot raise it. Inputs
    look at the sizes of the ``schedule`` (:data:`multiguard.sequential.SCHEDULES`) up to n, and alpha is spent
    over the looks by ``spending`` (the share at the last look, the rest split equally; ``None``: equal
    shares). Runs written before the schedule, spending and margin existed read as ``1-2-5``, ``None`` and
    0.2 (their ``legacy`` values), so they are reported with their own bounds."""

    option_names = False

    radius: float = setting(check=Interval(float, 0.0), flag="--stop-at-radius",
                            help="the radius R whose certified intersection size decides when an input stops")
    k: int = setting(check=Interval(int, 1), help="smoothed top-k")
    k_prime: int = setting(check=Interval(int, 1), help="the base classifier's top-k'")
    alpha: float = setting(check=_alpha, help="1 - confidence")
    futility: str = setting(DEFAULT_FUTILITY, check=OneOf(_futility_names), legacy="remaining",
                            help="when to give up on an input (multiguard.sequential.FUTILITY_RULES)")
    schedule: str = setting(DEFAULT_SCHEDULE, check=OneOf(_schedule_names), legacy="1-2-5",
                            help="the looks (multiguard.sequential.SCHEDULES)")
    spending: float | None = setting(DEFAULT_SPENDING, check=Optional(Interval(float, 0.0, 1.0, open_low=True)),
                                     legacy=None, help="share of alpha spent at the last look (None: equal shares)")
    margin: float = setting(DEFAULT_MARGIN, check=Interval(float, 0.0, 1.0, open_low=True, open_high=True),
                            legacy=DEFAULT_MARGIN, help="gamma of the margin futility rule")

    def looks(self, n: int) -> Any:
        """The looks of this rule's schedule up to ``n`` samples: int64 ``(J,)``."""
        from .sequential import look_schedule

        return look_schedule(n, self.schedule)

    def procedure(self) -> dict[str, Any]:
        """The keywords of :mod:`multiguard.sequential`'s functions that this rule sets besides radius, k, k'
        and alpha: ``futility``, ``schedule``, ``spending``, ``margin``."""
        return {"futility": self.futility, "schedule": self.schedule, "spending": self.spending,
                "margin": self.margin}

    @classmethod
    def field_label(cls, name: str) -> str:
        return "stop_at_radius" if name == "radius" else name

    @classmethod
    def coerce(cls, value: StopRule | Mapping[str, Any] | None) -> StopRule | None:
        """``value`` as a :class:`StopRule` (a dict ``{radius, k, k_prime, alpha[, futility, ...]}`` works too,
        read as a run's metadata is: the fields it leaves out take their ``legacy`` values, the rule of runs
        written before they existed; construct a :class:`StopRule` for the current defaults)."""
        if value is None or isinstance(value, StopRule):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"stop_rule must be a StopRule or a dict, got {type(value).__name__}")
        missing = {"radius", "k", "k_prime", "alpha"} - set(value)
        if missing:
            raise ValueError(f"stop_rule must give radius, k, k_prime and alpha, missing {', '.join(sorted(missing))}")
        return cls.from_dict(value)


def _stop_rule(value: Any, name: str) -> StopRule | None:
    return StopRule.coerce(value)


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict, got {type(value).__name__}")
    return dict(value)


def _thresholds(value: Any, name: str) -> dict[str, Any] | None:
    """``None``, or the identity of per-label thresholds (``{"values": [...], "scale": ...}``; a
    :class:`multiguard.thresholds.LabelThresholds` is turned into it), checked."""
    if value is None:
        return None
    from .thresholds import LabelThresholds

    if isinstance(value, LabelThresholds):
        return value.identity()
    if not isinstance(value, Mapping) or "values" not in value:
        raise ValueError(f"{name} must be None or {{'values': [...], 'scale': ...}}, got {value!r}")
    return LabelThresholds.from_identity(dict(value)).identity()


def _any_int(value: Any, name: str) -> int:
    return check_int(value, name)


@dataclass(frozen=True)
class RunSpec(Settings):
    """Everything that decides a run's counts, and what its ``metadata.json`` records before sampling.

    The plan: ``n`` noisy samples per input (with a :class:`StopRule`, the most an input gets), counts for
    every k' <= ``max_k_prime``, ``num_inputs`` inputs (``None`` or 0: the whole split) drawn from ``seed``,
    ``chunk_size`` inputs per chunk file, ``batch_size`` noisy samples per forward pass (memory only).

    The base classifier and the data (:meth:`multiguard.base_classifier.BaseClassifierSpec.run_fields` and
    the dataset's record fill them): ``checkpoint_sha256``, ``model_file_sha256`` (the SHA-256 of the Python
    file that defines a file factory's model, ``None`` otherwise), ``denoiser_sha256``, ``arch``, ``num_classes``,
    ``sigma``, ``clamp``, the sampling mode (``precision``, ``channels_last``, ``compile``), the per-label
    ``thresholds`` of a thresholded base classifier (then per-label on-counts are stored too), ``dataset``,
    ``dataset_options``, ``split``, ``dataset_size``, ``image_size``. ``record`` holds descriptive fields
    (checkpoint path, class names, versions, ...) that go into ``metadata.json`` but not into the identity.

    ``dataset_size``, ``sample_sizes`` and a ``num_inputs`` of 0 are settled by :meth:`planned` once the
    dataset is known.
    """

    option_names = False

    format_version: int = setting(FORMAT_VERSION, identity=True, check=_any_int, legacy=FORMAT_VERSION)
    checkpoint_sha256: str | None = setting(None, identity=True, legacy=None)
    denoiser_sha256: str | None = setting(None, identity=True, legacy=None)
    arch: str | None = setting(None, identity=True, legacy=None)
    dataset: str | None = setting(None, identity=True, legacy=None)
    dataset_options: Any = setting(None, identity=True, legacy=None)
    split: str | None = setting(None, identity=True, legacy=None)
    dataset_size: int | None = setting(None, identity=True, check=Optional(Interval(int, 1)), legacy=None)
    image_size: Any = setting(None, identity=True, legacy=None)
    num_classes: int | None = setting(None, identity=True, check=Optional(Interval(int, 1)), legacy=None)
    sigma: float | None = setting(None, identity=True, check=Optional(Interval(float, 0.0, open_low=True)),
                                  legacy=None)
    clamp: Any = setting(None, identity=True, legacy=None)
    n: int = setting(1000, identity=True, check=Interval(int, 1, MAX_N))
    sample_sizes: tuple[int, ...] | None = setting(None, identity=True, legacy=None)
    seed: int = setting(0, identity=True, check=Interval(int, 0))
    max_k_prime: int = setting(5, identity=True, check=Interval(int, 1))
    num_inputs: int | None = setting(500, identity=True, check=Optional(Interval(int, 0)))
    chunk_size: int = setting(10, identity=True, check=Interval(int, 1))
    precision: str = setting("fp32", identity=True, legacy="fp32")
    channels_last: bool = setting(False, identity=True, legacy=False)
    compile: bool = setting(False, identity=True, legacy=False)
    stop_rule: StopRule | None = setting(None, identity=True, check=_stop_rule, legacy=None)
    thresholds: Any = setting(None, identity=True, check=_thresholds, legacy=None)
    # the Python file defining the model, for a file factory: the checkpoint holds the weights, not the code
    model_file_sha256: str | None = setting(None, identity=True, legacy=None)
    batch_size: int = setting(1000, check=Interval(int, 1))
    record: dict[str, Any] = setting(default_factory=dict, check=_mapping)

    def _check(self) -> None:
        if self.stop_rule is not None and self.stop_rule.k_prime > self.max_k_prime:
            raise ValueError(f"k_prime must be <= max_k_prime ({self.max_k_prime}), got {self.stop_rule.k_prime}")

    @property
    def sequential(self) -> bool:
        """Whether inputs are sampled look by look under :attr:`stop_rule`."""
        return self.stop_rule is not None

    @classmethod
    def from_arguments(cls, *, metadata: Mapping[str, Any] | None = None, stop_rule: Any = None,
                       **plan: Any) -> RunSpec:
        """A spec from the former keyword form of :func:`multiguard.runs.sample_run`: the plan (``n``,
        ``max_k_prime``, ``seed``, ``num_inputs``, ``chunk_size``, ``batch_size``), ``stop_rule`` and a
        ``metadata`` dict whose identity fields become fields and whose other keys go to :attr:`record`."""
        metadata = dict(metadata or {})
        fields = {name: metadata.pop(name) for name in list(metadata) if name in _FIELDS}
        fields.pop("record", None)
        return cls(**{**fields, **plan, "stop_rule": stop_rule, "record": metadata})

    def planned(self, dataset_size: int, num_inputs: int, num_classes: int | None, sample_sizes: Any,
                sigma: float | None) -> RunSpec:
        """This spec with what the dataset and sampler settle: the split's size, the number of inputs drawn,
        the classes, the looks (nested sample sizes) and the sampler's sigma (which a given sigma must equal)."""
        if sigma is not None and self.sigma is not None and float(self.sigma) != float(sigma):
            raise ValueError(f"metadata: sigma {self.sigma!r} is not the sampler's sigma {sigma!r} "
                             "(the run must record the noise its counts are sampled with)")
        return self.replace(
            dataset_size=int(dataset_size), num_inputs=int(num_inputs),
            num_classes=self.num_classes if num_classes is None else int(num_classes),
            sample_sizes=tuple(int(s) for s in sample_sizes), sigma=self.sigma if sigma is None else float(sigma),
        )

    def metadata(self) -> dict[str, Any]:
        """What ``metadata.json`` starts with: the descriptive :attr:`record`, then every field but ``record``
        (``num_classes``, ``dataset_size``, ``image_size`` left out while unknown, ``model_file_sha256``
        without a model file)."""
        fields = {name: value for name, value in self.to_dict().items() if name != "record"}
        for name in ("num_classes", "dataset_size", "image_size", "model_file_sha256"):
            if fields[name] is None:
                del fields[name]
        return {**self.record, **fields}


_FIELDS = frozenset(f for f in RunSpec.__dataclass_fields__)

#: The fields that define a run's counts: a resume, another shard or another rank must agree on all of them.
IDENTITY_FIELDS: tuple[str, ...] = RunSpec.identity_fields()

#: What a run written before an identity field existed was sampled with (the fields' legacy values).
IDENTITY_DEFAULTS: dict[str, Any] = {
    name: f.metadata["legacy"] for name, f in RunSpec.__dataclass_fields__.items()
    if name in IDENTITY_FIELDS and f.metadata.get("legacy") is not None
}


def identity_of(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The identity fields a run's ``metadata.json`` holds (read as it is, unchecked: a damaged file is
    the reader's to name). Fields it lacks are left out; comparisons read them as their legacy values."""
    return {name: metadata[name] for name in IDENTITY_FIELDS if name in metadata}
