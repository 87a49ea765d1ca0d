"""The attacks on the smoothed classifier, by name (``multiguard attack --attack NAME``).

:data:`ATTACKS` is a :class:`~multiguard.common.registry.Registry` of attack functions with the signature of
:func:`multiguard.evaluation.attack.attack_smoothed` (plus their own keywords), each with an :class:`AttackRecord`
(its default budget). Targets are ``"module:attribute"`` paths, imported on first use, so that ``--help`` lists
the attacks without importing torch. The default, :data:`DEFAULT_ATTACK` = ``apgd-targeted``
(:mod:`multiguard.evaluation.attacks.apgd`), is the strong one; ``pgd`` is the earlier untargeted l2 PGD, kept
unchanged as the baseline. Registering your own::

    from multiguard.evaluation.attacks import ATTACKS, AttackRecord

    ATTACKS.register("mine", my_attack, help="what it does", record=AttackRecord(steps=50, samples=16))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multiguard.common.registry import Registry

__all__ = ["ATTACKS", "DEFAULT_ATTACK", "AttackMethod", "AttackRecord", "attack_method"]


@dataclass(frozen=True)
class AttackRecord:
    """An attack's defaults: ``steps`` (gradient steps, per restart) and ``samples`` (noise samples per step);
    ``restarts`` (``None``: it has none); ``warm_start``: it takes ``init=`` (the perturbation found at the
    previous, smaller radius)."""

    steps: int = 20
    samples: int = 32
    restarts: int | None = None
    warm_start: bool = False


@dataclass(frozen=True)
class AttackMethod:
    """One loaded attack: ``function(smoother, x, labels, radius=, k=, steps=, samples=, n=, seed=, index=, ...)``
    returning an :class:`~multiguard.evaluation.attack.AttackResult`, with its name, summary and defaults."""

    name: str
    summary: str
    function: Callable[..., Any] = field(repr=False)
    steps: int
    samples: int
    restarts: int | None = None
    warm_start: bool = False


ATTACKS: Registry[Callable[..., Any], AttackRecord] = Registry("attack", argument="--attack", record=AttackRecord)
"""Every attack by name: the attack function (lazy), its one-line summary and its :class:`AttackRecord`."""

ATTACKS.register("apgd-targeted", "multiguard.evaluation.attacks.apgd:attack_smoothed_apgd",
                 help="targeted margins on the weakest true labels, APGD steps, EOT, restarts, warm starts",
                 record=AttackRecord(steps=30, samples=32, restarts=3, warm_start=True))
ATTACKS.register("pgd", "multiguard.evaluation.attack:attack_smoothed",
                 help="untargeted l2 PGD on a soft top-k' surrogate (the baseline)",
                 record=AttackRecord(steps=20, samples=32))
DEFAULT_ATTACK = "apgd-targeted"


def attack_method(name: str) -> AttackMethod:
    """The attack called ``name``, loaded; a ValueError naming ``attack`` and the known names otherwise."""
    if name not in ATTACKS:
        raise ValueError(f"attack: unknown attack {name!r}; choose one of {ATTACKS.text()}")
    entry = ATTACKS.entry(name)
    record = entry.record
    return AttackMethod(name, entry.help, entry.load(), steps=record.steps, samples=record.samples,
                        restarts=record.restarts, warm_start=record.warm_start)
