"""A run's specification as one frozen value: what decides its counts (the identity), how it is planned, and
what ``metadata.json`` records about it. No torch, no SciPy at import.

:class:`RunSpec` is the one declaration of a run's settings: every field says whether it is part of the
identity (what a resume, a shard or a rank must agree on, what the digest stored with the counts covers) and
what a run written before the field existed means (its ``legacy`` value). :data:`IDENTITY_FIELDS`, the
identity of a ``metadata.json`` (:func:`identity_of`) and the metadata a run starts with
(:meth:`RunSpec.metadata`) all follow from it.

:class:`StopRule` makes a run sequential: each input is sampled look by look and stops when its certified
intersection size at ``radius`` (with ``k``, ``k_prime``, ``alpha``) is settled, or when the ``futility``
rule (:data:`multiguard.certificates.sequential.FUTILITY_RULES`) says more samples cannot raise it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from multiguard.certificates.stop_rule import StopRule
from multiguard.common.noise_kinds import NOISE_KINDS, check_noise
from multiguard.common.settings import Interval, Optional, Settings, setting
from multiguard.common.validation import MAX_N, check_int

__all__ = ["FORMAT_VERSION", "IDENTITY_FIELDS", "IDENTITY_DEFAULTS", "RunSpec", "identity_of"]


FORMAT_VERSION = 1


def _stop_rule(value: Any, name: str) -> StopRule | None:
    rule = StopRule.coerce(value)
    if rule is not None and None in (rule.k, rule.k_prime, rule.alpha):
        raise ValueError(f"{name}: a run's stop rule gives its k, k_prime and alpha (StopRule(radius=..., k=..., "
                         "k_prime=..., alpha=...))")
    return rule


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict, got {type(value).__name__}")
    return dict(value)


def _thresholds(value: Any, name: str) -> dict[str, Any] | None:
    """``None``, or the identity of per-label thresholds (``{"values": [...], "scale": ...}``; a
    :class:`multiguard.certificates.thresholds.LabelThresholds` is turned into it), checked."""
    if value is None:
        return None
    from multiguard.certificates.thresholds import LabelThresholds

    if isinstance(value, LabelThresholds):
        return value.identity()
    if not isinstance(value, Mapping) or "values" not in value:
        raise ValueError(f"{name} must be None or {{'values': [...], 'scale': ...}}, got {value!r}")
    return LabelThresholds.from_identity(dict(value)).identity()


def _noise(value: Any, name: str) -> str:
    return check_noise(value, name)


def _any_int(value: Any, name: str) -> int:
    return check_int(value, name)


@dataclass(frozen=True)
class RunSpec(Settings):
    """Everything that decides a run's counts, and what its ``metadata.json`` records before sampling.

    The plan: ``n`` noisy samples per input (with a :class:`StopRule`, the most an input gets), counts for
    every k' <= ``max_k_prime``, ``num_inputs`` inputs (``None`` or 0: the whole split) drawn from ``seed``,
    ``chunk_size`` inputs per chunk file, ``batch_size`` noisy samples per forward pass (memory only).

    The base classifier and the data (:meth:`multiguard.models.base_classifier.BaseClassifierSpec.run_fields` and
    the dataset's record fill them): ``checkpoint_sha256``, ``model_file_sha256`` (the SHA-256 of the Python
    file that defines a file factory's model, ``None`` otherwise), ``denoiser_sha256``, ``arch``, ``num_classes``,
    ``sigma``, ``clamp``, the sampling mode (``precision``, ``channels_last``, ``compile``), the per-label
    ``thresholds`` of a thresholded base classifier (then per-label on-counts are stored too), the ``noise`` kind
    and ``shared_noise`` (:mod:`multiguard.common.noise_kinds`), ``dataset``,
    ``dataset_options``, ``dataset_version`` (:attr:`multiguard.data.DatasetInfo.version`), ``split``,
    ``dataset_size``, ``image_size``. ``record`` holds descriptive fields
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
    n: int = setting(1000, identity=True, check=Interval(int, 1, MAX_N), aliases=("--num-samples",), metavar="N",
                     help="noisy samples per input (--num-samples under torchrun)")
    sample_sizes: tuple[int, ...] | None = setting(None, identity=True, legacy=None)
    seed: int = setting(0, identity=True, check=Interval(int, 0), metavar="S",
                        help="chooses the inputs and seeds the noise")
    max_k_prime: int = setting(5, identity=True, check=Interval(int, 1), metavar="K",
                               help="store counts for every k' <= this")
    num_inputs: int | None = setting(500, identity=True, check=Optional(Interval(int, 0)), metavar="N",
                                     help="random test inputs (0: all)")
    chunk_size: int = setting(10, identity=True, check=Interval(int, 1), metavar="N",
                              help="inputs per saved chunk (a kill loses at most one)")
    precision: str = setting("fp32", identity=True, legacy="fp32")
    channels_last: bool = setting(False, identity=True, legacy=False)
    compile: bool = setting(False, identity=True, legacy=False)
    stop_rule: StopRule | None = setting(None, identity=True, check=_stop_rule, legacy=None)
    thresholds: Any = setting(None, identity=True, check=_thresholds, legacy=None)
    # the Python file defining the model, for a file factory: the checkpoint holds the weights, not the code
    model_file_sha256: str | None = setting(None, identity=True, legacy=None)
    # the noise kind (float or sound) and whether one noise block is shared by every input
    noise: str = setting("float", identity=True, check=_noise, legacy="float", choices=tuple(NOISE_KINDS),
                         help="float: Gaussian in floating point; sound: rounded to the 1/255 grid, sound in "
                         "floating point for 8-bit inputs (docs/soundness.md)")
    shared_noise: bool = setting(False, identity=True, legacy=False, action="store_true",
                                 help="one noise block for every input (faster; each certificate keeps its "
                                 "1 - alpha, but failures correlate across inputs)")
    # the version of the dataset's pixels (multiguard.data.DatasetInfo.version): runs before it was recorded
    # read as None, so a multidigits run of 0.1's float pixels is not resumed on the 8-bit ones
    dataset_version: int | None = setting(None, identity=True, legacy=None)
    batch_size: int = setting(1000, check=Interval(int, 1), metavar="B", help="noisy samples per forward pass")
    record: dict[str, Any] = setting(default_factory=dict, check=_mapping)

    #: The fields a certify command line sets (:func:`multiguard.common.settings.add_arguments` makes their options
    #: from the declarations above); the others come from the checkpoint, the dataset and the stop rule.
    PLAN_FIELDS: ClassVar[tuple[str, ...]] = ("n", "seed", "batch_size", "num_inputs", "max_k_prime", "noise",
                                             "shared_noise", "chunk_size")

    def _check(self) -> None:
        if self.stop_rule is not None and self.stop_rule.k_prime > self.max_k_prime:
            raise ValueError(f"k_prime must be <= max_k_prime ({self.max_k_prime}), got {self.stop_rule.k_prime}")

    @property
    def sequential(self) -> bool:
        """Whether inputs are sampled look by look under :attr:`stop_rule`."""
        return self.stop_rule is not None


    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, stop_rule: Any = None, **plan: Any) -> RunSpec:
        """A spec from a ``metadata`` dict (its identity fields become fields, its other keys go to
        :attr:`record`), the plan (``n``, ``max_k_prime``, ``seed``, ``num_inputs``, ``chunk_size``,
        ``batch_size``) and ``stop_rule``."""
        metadata = dict(metadata)
        fields = {name: metadata.pop(name) for name in list(metadata) if name in cls.__dataclass_fields__}
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
