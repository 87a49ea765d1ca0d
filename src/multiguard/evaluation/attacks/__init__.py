"""The attacks on the smoothed classifier, by name (``multiguard attack --attack NAME``).

Each :class:`AttackMethod` record names an attack function with the signature of
:func:`multiguard.evaluation.attack.attack_smoothed` (plus its own keywords) and its default budget. The
default, :data:`DEFAULT_ATTACK` = ``apgd-targeted`` (:mod:`multiguard.evaluation.attacks.apgd`), is the strong
one; ``pgd`` is the earlier untargeted l2 PGD, kept unchanged as the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from multiguard.evaluation.attack import AttackResult, attack_smoothed
from multiguard.evaluation.attacks.apgd import attack_smoothed_apgd

__all__ = ["ATTACKS", "DEFAULT_ATTACK", "AttackMethod", "attack_method"]


@dataclass(frozen=True)
class AttackMethod:
    """One attack: ``function(smoother, x, labels, radius=, k=, steps=, samples=, n=, seed=, index=, ...)``.

    Attributes:
        name: what ``--attack`` takes; summary: one line for ``--help`` and the docs.
        function: the attack (returns an :class:`~multiguard.evaluation.attack.AttackResult`).
        steps, samples: its default gradient steps (per restart) and noise samples per step.
        restarts: its default restarts (``None``: it has none).
        warm_start: it takes ``init=`` (the perturbation found at the previous, smaller radius).
    """

    name: str
    summary: str
    function: Callable[..., AttackResult] = field(repr=False)
    steps: int
    samples: int
    restarts: int | None = None
    warm_start: bool = False


ATTACKS: dict[str, AttackMethod] = {
    "apgd-targeted": AttackMethod(
        "apgd-targeted", "targeted margins on the weakest true labels, APGD steps, EOT, restarts, warm starts",
        attack_smoothed_apgd, steps=30, samples=32, restarts=3, warm_start=True),
    "pgd": AttackMethod("pgd", "untargeted l2 PGD on a soft top-k' surrogate (the baseline)", attack_smoothed,
                        steps=20, samples=32),
}
DEFAULT_ATTACK = "apgd-targeted"


def attack_method(name: str) -> AttackMethod:
    """The attack called ``name``; a ValueError naming ``attack`` and the known names otherwise."""
    if name not in ATTACKS:
        raise ValueError(f"attack: unknown attack {name!r}; choose one of {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]
