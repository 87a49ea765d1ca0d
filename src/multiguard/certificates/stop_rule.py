"""The stopping rule of a sequential run (``StopRule``): the target radius, k, k', alpha, the futility rule,
the schedule of looks and how alpha is spent over them. A value: what ``MultiGuard.certify``, the sequential
functions and a run's metadata carry instead of loose keywords."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multiguard.certificates.sequential import (
    BOUNDS,
    DEFAULT_BOUNDS,
    DEFAULT_FUTILITY,
    DEFAULT_MARGIN,
    DEFAULT_SCHEDULE,
    DEFAULT_SPENDING,
    bounds_family,
)
from multiguard.common.settings import Choices, Interval, OneOf, Optional, Settings, setting
from multiguard.common.validation import check_alpha

__all__ = ["StopRule"]


def _futility_names() -> list[str]:
    from multiguard.certificates.sequential import FUTILITY_RULES  # SciPy loads here, when a rule is checked

    return FUTILITY_RULES.names()


def _bounds_names() -> tuple[str, ...]:
    return BOUNDS.names()


def _schedule_names() -> list[str]:
    from multiguard.certificates.sequential import SCHEDULES

    return SCHEDULES.names()


def _alpha(value: Any, name: str) -> float:
    return check_alpha(value)


def _spending(value: Any, name: str) -> float | None:
    """A share of alpha in (0, 1], or ``None`` / ``"equal"`` for equal shares."""
    if value is None or value == "equal":
        return None
    return Interval(float, 0.0, 1.0, open_low=True)(value, name)


def _spending_option(text: str) -> float | str:
    """--spending: a share, or ``equal``."""
    if text == "equal":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1] or 'equal', got {text!r}") from None


_PROCEDURE = ("futility", "schedule", "spending", "margin", "bounds")  # the fields StopRule.procedure() returns


@dataclass(frozen=True)
class StopRule(Settings):
    """The stopping rule of a sequential run: stop an input once its certified intersection size at ``radius``
    (for top-``k`` smoothing of a top-``k_prime`` base classifier, at confidence ``1 - alpha``) is settled, or
    the ``futility`` rule (with gamma = ``margin`` for ``margin``) says more samples cannot raise it. Inputs
    look at the sizes of the ``schedule`` (:data:`multiguard.certificates.sequential.SCHEDULES`) up to n, and alpha
    is spent
    over the looks by ``spending`` (the share at the last look, the rest split equally; ``None``: equal
    shares). ``bounds`` says which anytime bounds the rule and the certificate read (a name of
    :data:`multiguard.certificates.sequential.BOUNDS`): ``union`` (Clopper-Pearson at each look's share of
    alpha), ``betting`` (the beta-binomial mixture confidence sequences of
    :mod:`multiguard.certificates.betting`, valid at every n; ``spending`` is then not read, and the schedule
    ``every-block`` looks after every noise block) or ``betting-cp`` (those sequences at ``1 - spending`` of each
    bound's alpha, and at the last look the better of them and a fixed-n Clopper-Pearson bound at ``spending``
    of it: ``spending`` is then that share, ``None`` reading as 1/2); ``tuned`` and ``tuned-cp`` are the same
    with the mixture sequences of :mod:`multiguard.certificates.tuned`, tuned to the sizes up to n. Runs
    written before the schedule, spending, margin and bounds existed read as ``1-2-5``, ``None``, 0.2 and
    ``union`` (their ``legacy`` values), so they are reported with their own bounds."""

    option_names = False

    radius: float = setting(check=Interval(float, 0.0), flag="--stop-at-radius", dest="stop_at_radius", metavar="R",
                            help="the radius R whose certified intersection size decides when an input stops")
    k: int | None = setting(None, check=Optional(Interval(int, 1)), metavar="K",
                            help="k of the stopping rule (None: the call's k)")
    k_prime: int | None = setting(None, check=Optional(Interval(int, 1)), metavar="K",
                                  help="k' of the stopping rule (None: the smoothed classifier's)")
    alpha: float | None = setting(None, check=Optional(_alpha), type=float,
                                  help="alpha of the stopping rule (None: the call's alpha)")
    futility: str = setting(DEFAULT_FUTILITY, check=OneOf(_futility_names), legacy="remaining",
                            choices=Choices(_futility_names),
                            help="when to give up on an input (each rule: docs/sequential.md)")
    schedule: str = setting(DEFAULT_SCHEDULE, check=OneOf(_schedule_names), legacy="1-2-5",
                            choices=Choices(_schedule_names), help="the sample sizes at which inputs may stop")
    spending: float | None = setting(DEFAULT_SPENDING, check=_spending, legacy=None, type=_spending_option,
                                     metavar="SHARE", help="share of alpha at the last look (the rest equally before), "
                                     "or 'equal'")
    margin: float = setting(DEFAULT_MARGIN, check=Interval(float, 0.0, 1.0, open_low=True, open_high=True),
                            legacy=DEFAULT_MARGIN, flag="--futility-margin", dest="futility_margin",
                            metavar="GAMMA", help="gamma of --futility margin, in (0, 1)")
    bounds: str = setting(DEFAULT_BOUNDS, check=OneOf(_bounds_names), legacy="union", choices=Choices(_bounds_names),
                          metavar="NAME", help=f"{BOUNDS.text()} (docs/sequential.md)")

    def bind(self, *, k: int | None, k_prime: int, alpha: float | None) -> StopRule:
        """This rule with the call's ``k``, ``k_prime`` and ``alpha`` where it leaves them out (``None``); a call
        that gives another value than the rule is a ``ValueError`` naming both (``k=5`` for a rule of
        ``k=3``). A ``None`` the call cannot fill (no k given anywhere) is a ``ValueError`` too."""
        values = {}
        for name, given in (("k", k), ("k_prime", k_prime), ("alpha", alpha)):
            mine = getattr(self, name)
            if mine is not None and given is not None and mine != given:
                raise ValueError(f"{name}: {given} where the stop_rule says {mine} (give one, or the same)")
            values[name] = mine if mine is not None else given
            if values[name] is None:
                raise ValueError(f"{name}: needed, by the call or by its stop_rule")
        return dataclasses.replace(self, **values)

    def looks(self, n: int) -> Any:
        """The looks of this rule's schedule up to ``n`` samples: int64 ``(J,)``."""
        from multiguard.certificates.sequential import look_schedule

        return look_schedule(n, self.schedule)

    def procedure(self) -> dict[str, Any]:
        """The keywords of :mod:`multiguard.certificates.sequential`'s functions that this rule sets besides radius,
        k, k'
        and alpha: ``futility``, ``schedule``, ``spending``, ``margin``, ``bounds``."""
        return {name: getattr(self, name) for name in _PROCEDURE}

    @classmethod
    def procedure_dests(cls) -> dict[str, str]:
        """The fields of :meth:`procedure` and where parsed command-line options hold each
        (:func:`multiguard.common.settings.add_arguments`'s ``dest``: ``margin`` is ``futility_margin``)."""
        return {f.name: f.metadata.get("dest") or f.name for f in dataclasses.fields(cls) if f.name in _PROCEDURE}

    @classmethod
    def procedure_from(cls, namespace: Any, stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The procedure (``futility``, ``schedule``, ``spending``, ``margin``, ``bounds``: :meth:`procedure`)
        that parsed command-line options ask for: each read under its field's option
        (:func:`multiguard.common.settings.add_arguments`, so ``margin`` is ``--futility-margin``) where given
        (not ``None``), else the rule of ``stored`` (a resumed run's stop rule; the ``legacy`` values for what
        it predates), else this class's defaults. Confidence-sequence bounds (those whose
        :class:`multiguard.certificates.sequential.BoundsRecord` says ``anytime``: ``betting``, ``betting-cp``,
        ``tuned``, ``tuned-cp``) given without a schedule, over a base rule of ``union``, look after every noise
        block (``every-block``: they are valid at every n, looks cost nothing). A ``spending`` given for bounds
        that do not read it (``betting``, ``tuned``) is a ``ValueError`` naming it, not silently dropped."""
        base = cls(radius=0.0) if stored is None else cls.from_dict(
            {"radius": 0.0, **{key: value for key, value in stored.items() if key in _PROCEDURE}})
        values = {}
        dests = cls.procedure_dests()
        for name, dest in dests.items():
            given = getattr(namespace, dest, None)
            values[name] = getattr(base, name) if given is None else given
        if getattr(namespace, dests["spending"], None) is not None and \
                bounds_family(values["bounds"]).spending == "unused":
            raise ValueError(f"spending: bounds {values['bounds']} do not read it (their sequences spend no alpha on "
                             f"looks and read no Clopper-Pearson share); leave --spending out")
        if (getattr(namespace, "schedule", None) is None and bounds_family(values["bounds"]).anytime
                and not bounds_family(base.bounds).anytime):
            values["schedule"] = "every-block"
        return cls(radius=0.0, **values).procedure()

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
