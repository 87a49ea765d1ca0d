"""One door per kind of extension: a small registry that the command line, the report and the help texts read.

No torch here. An entry is a name, a one-line help text, a *target* (the object itself, or a
``"package.module:attribute"`` string imported on first use, so that a registry of torch components
(architectures, denoisers) can be listed by ``multiguard --help`` without importing torch) and, for the
kinds that need facts beside the target, a *record*: a frozen dataclass of the registry's record type (as
timm's ``PretrainedCfg``), read by attribute and checked when registered, never a free dict read by string keys.

Adding an extension is one call, as timm's ``@register_model`` is::

    from multiguard.models.architectures import ARCHITECTURES, ArchitectureRecord

    @ARCHITECTURES.register("tiny", help="a 3-layer CNN", record=ArchitectureRecord(mean=(0.5,), std=(0.25,)))
    def tiny(num_classes, in_channels=3):
        ...

Every registry refuses a name it already holds and a record of another type, and names its choices when asked
for one it does not (:class:`UnknownNameError`, a :class:`ValueError`). ``docs/extending.md`` lists every
registry of the package (a test checks that none is missing).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

__all__ = ["Entry", "Registry", "UnknownNameError"]

T = TypeVar("T")
R = TypeVar("R")


class UnknownNameError(ValueError):
    """A name no registry entry has; the message lists the registered names."""


@dataclass(frozen=True)
class Entry(Generic[T, R]):
    """One registered extension: ``name``, ``help`` (one line), ``target`` (the object, or ``"module:attribute"``
    imported by :meth:`load`) and ``record`` (the facts readers use: an instance of the registry's record type,
    ``None`` for a registry without one)."""

    name: str
    target: Any
    help: str = ""
    record: R | None = None

    def load(self) -> T:
        """The registered object (importing it on first use where it was registered by its path)."""
        if isinstance(self.target, str) and self.lazy:
            module, _, attribute = self.target.partition(":")
            return getattr(importlib.import_module(module), attribute)
        return self.target

    @property
    def lazy(self) -> bool:
        """Whether the target is a ``"package.module:attribute"`` path imported on first use."""
        return isinstance(self.target, str) and ":" in self.target

    @property
    def module(self) -> str | None:
        """The module a lazy target is imported from (``None`` for a target given as the object)."""
        return self.target.partition(":")[0] if self.lazy else None


class Registry(Generic[T, R]):
    """Named extensions of one kind, in registration order.

    Args:
        kind: what an entry is, in messages (``"architecture"``, ``"futility rule"``...).
        argument: the command-line option whose value names an entry (``"--arch"``), for messages.
        record: the frozen dataclass every entry's record is an instance of (``None``: entries carry none, the
            target says everything). An entry registered without one gets ``record()`` (its defaults) where
            every field has a default, and is refused otherwise.
    """

    def __init__(self, kind: str, argument: str | None = None, record: type[R] | None = None) -> None:
        if record is not None and not (dataclasses.is_dataclass(record) and record.__dataclass_params__.frozen):
            raise TypeError(f"{kind} registry: record must be a frozen dataclass, got {record!r}")
        self.kind = kind
        self.argument = argument
        self.record_type = record
        self._entries: dict[str, Entry[T, R]] = {}

    @overload
    def register(self, name: str, target: None = None, *, help: str = "", record: R | None = None
                 ) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, target: T | str, *, help: str = "", record: R | None = None) -> T | str: ...

    def register(self, name: str, target: Any = None, *, help: str = "", record: R | None = None) -> Any:  # noqa: A002
        """Register ``target`` under ``name`` (or, without ``target``, return a decorator that does), with
        ``record`` (an instance of the registry's record type; omitted: its defaults).

        ``target`` may be ``"module:attribute"``: imported only when the entry is first loaded.
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.kind} name must be a non-empty string without surrounding spaces, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        record = self._checked_record(name, record)
        if target is None:
            def decorator(obj: T) -> T:
                self._entries[name] = Entry(name, obj, help or _first_line(obj), record)
                return obj
            return decorator
        self._entries[name] = Entry(name, target, help or _first_line(target), record)
        return target

    def _checked_record(self, name: str, record: Any) -> R | None:
        if self.record_type is None:
            if record is not None:
                raise ValueError(f"{self.kind} {name!r}: this registry's entries take no record, got {record!r}")
            return None
        if record is None:
            try:
                return self.record_type()
            except TypeError:
                raise ValueError(f"{self.kind} {name!r} needs record={self.record_type.__name__}(...)") from None
        if not isinstance(record, self.record_type):
            raise ValueError(f"{self.kind} {name!r}: record must be a {self.record_type.__name__}, "
                             f"got {type(record).__name__}")
        return record

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and plug-ins that clean up after themselves)."""
        self.entry(name)
        del self._entries[name]

    def entry(self, name: str) -> Entry[T, R]:
        """The entry ``name``; :class:`UnknownNameError` naming the choices otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            where = f"{self.argument}: " if self.argument else ""
            raise UnknownNameError(f"{where}unknown {self.kind} {name!r}; choose from {self.text()}") from None

    def get(self, name: str) -> T:
        """The object registered as ``name`` (loaded on first use)."""
        return self.entry(name).load()

    def record(self, name: str) -> R:
        """The record of the entry ``name`` (:class:`UnknownNameError` naming the choices for an unknown name)."""
        return self.entry(name).record

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def entries(self) -> tuple[Entry[T, R], ...]:
        return tuple(self._entries.values())

    def items(self) -> tuple[tuple[str, T], ...]:
        """``(name, object)`` of every entry in registration order (loading every lazy target)."""
        return tuple((e.name, e.load()) for e in self._entries.values())

    def text(self, conjunction: str = "or") -> str:
        """The names as running text for help and messages: ``'a, b or c'``."""
        names = list(self._entries)
        if len(names) <= 1:
            return "".join(names)
        return f"{', '.join(names[:-1])} {conjunction} {names[-1]}"

    def help_text(self, separator: str = "; ") -> str:
        """``name: help`` for every entry, for an option's ``--help``."""
        return separator.join(f"{e.name}: {e.help.rstrip('.')}" if e.help else e.name for e in self._entries.values())

    def __getitem__(self, name: str) -> T:
        """``registry[name]`` is :meth:`get`: the object, :class:`UnknownNameError` for an unknown name."""
        return self.get(name)

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
