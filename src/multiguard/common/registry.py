"""One door per kind of extension: a small registry that the command line, the report and the help texts read.

No torch here. An entry is a name, a one-line help text, free-form facts (``info``: a colour, a flag a dataset
needs, ...) and a *target*: the object itself, or a ``"package.module:attribute"`` string imported on first
use, so that a registry of torch components (architectures, denoisers) can be listed by ``multiguard --help``
without importing torch.

Adding an extension is one call, as timm's ``@register_model`` is::

    from multiguard.models.architectures import ARCHITECTURES

    @ARCHITECTURES.register("tiny", help="a 3-layer CNN")
    def tiny(num_classes, in_channels=3):
        ...

Every registry refuses a name it already holds, and names its choices when asked for one it does not
(:class:`UnknownNameError`, a :class:`ValueError`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

__all__ = ["Entry", "Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name no registry entry has; the message lists the registered names."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered extension: ``name``, ``help`` (one line), ``info`` (facts readers use) and ``target``
    (the object, or ``"module:attribute"`` imported by :meth:`load`)."""

    name: str
    target: Any
    help: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def load(self) -> T:
        """The registered object (importing it on first use where it was registered by its path)."""
        if isinstance(self.target, str):
            module, _, attribute = self.target.partition(":")
            return getattr(importlib.import_module(module), attribute)
        return self.target


class Registry(Generic[T]):
    """Named extensions of one kind, in registration order.

    Args:
        kind: what an entry is, in messages (``"architecture"``, ``"futility rule"``...).
        argument: the command-line option whose value names an entry (``"--arch"``), for messages.
    """

    def __init__(self, kind: str, argument: str | None = None) -> None:
        self.kind = kind
        self.argument = argument
        self._entries: dict[str, Entry[T]] = {}

    @overload
    def register(self, name: str, target: None = None, *, help: str = "", **info: Any) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, target: T | str, *, help: str = "", **info: Any) -> T | str: ...

    def register(self, name: str, target: Any = None, *, help: str = "", **info: Any) -> Any:  # noqa: A002
        """Register ``target`` under ``name`` (or, without ``target``, return a decorator that does).

        ``target`` may be ``"module:attribute"``: imported only when the entry is first loaded.
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string without surrounding spaces, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if target is None:
            def decorator(obj: T) -> T:
                self._entries[name] = Entry(name, obj, help or _first_line(obj), dict(info))
                return obj
            return decorator
        self._entries[name] = Entry(name, target, help or _first_line(target), dict(info))
        return target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plug-ins that clean up after themselves)."""
        self.entry(name)
        del self._entries[name]

    def entry(self, name: str) -> Entry[T]:
        """The entry ``name``; :class:`UnknownNameError` naming the choices otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            where = f"{self.argument}: " if self.argument else ""
            raise UnknownNameError(f"{where}unknown {self.kind} {name!r}; choose from {self.text()}") from None

    def get(self, name: str) -> T:
        """The object registered as ``name`` (loaded on first use)."""
        return self.entry(name).load()

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def entries(self) -> tuple[Entry[T], ...]:
        return tuple(self._entries.values())

    def text(self, conjunction: str = "or") -> str:
        """The names as running text for help and messages: ``'a, b or c'``."""
        names = list(self._entries)
        if len(names) <= 1:
            return "".join(names)
        return f"{', '.join(names[:-1])} {conjunction} {names[-1]}"

    def help_text(self, separator: str = "; ") -> str:
        """``name: help`` for every entry, for an option's ``--help``."""
        return separator.join(f"{e.name}: {e.help.rstrip('.')}" if e.help else e.name for e in self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _first_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) if not isinstance(obj, str) else None
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""
