"""Settings as frozen values: each field declares once what it may be, whether it is part of the identity, and
how the command line offers it. No torch.

A settings class is a frozen dataclass deriving from :class:`Settings` whose fields come from :func:`setting`::

    @dataclass(frozen=True)
    class RunSettings(Settings):
        n: int = setting(1000, identity=True, check=Interval(int, 1, MAX_N), flag="--n",
                         help="noisy samples per input")

Constructing it checks every field (the message names the field's option, the one template of
:mod:`multiguard.common.validation`), converts it to its checked form (a list becomes a tuple, a NumPy integer an
``int``), and freezes it. From the value follow, with nothing written twice: :meth:`Settings.identity` (the
identity fields, what must agree to resume or compare), :meth:`Settings.digest` (a hash of the identity),
:meth:`Settings.to_dict` / :meth:`Settings.from_dict` (JSON metadata, old files filled from each field's
``legacy`` value) and, for the command line, :func:`add_arguments` / :func:`from_namespace`.

Constraints follow scikit-learn's declarative parameter constraints: one object says what a value may be, and
renders itself in the message (``Interval``, ``OneOf``, ``Optional``, or any ``callable(value, name) -> value``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from multiguard.common.validation import check_choice, check_float, check_int, invalid

__all__ = ["Choices", "Interval", "OneOf", "Optional", "Settings", "add_arguments", "from_namespace", "setting"]

S = TypeVar("S", bound="Settings")
_NO_LEGACY = object()


class Interval:
    """A number of ``kind`` (``int`` or ``float``) in ``[low, high]`` (either end ``None``: unbounded;
    ``open_low``/``open_high`` exclude the end)."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 open_low: bool = False, open_high: bool = False) -> None:
        self.kind, self.low, self.high, self.open_low, self.open_high = kind, low, high, open_low, open_high

    def __call__(self, value: Any, name: str) -> Any:
        if self.kind is int:
            number = check_int(value, name, self.low, self.high)  # type: ignore[arg-type]
            if (self.open_low and number == self.low) or (self.open_high and number == self.high):
                raise invalid(name, str(self), number)
            return number
        return check_float(value, name, self.low, self.high, low_open=self.open_low, high_open=self.open_high)

    def __str__(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{what} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.open_high else '<='} {self.high:g}"
        return what


class OneOf:
    """One of ``choices`` (an iterable, or a callable returning one, e.g. a registry's ``names``, read when
    checking so that extensions registered later count)."""

    def __init__(self, choices: Iterable[Any] | Callable[[], Iterable[Any]]) -> None:
        self._choices = choices

    @property
    def choices(self) -> list[Any]:
        return list(self._choices() if callable(self._choices) else self._choices)

    def __call__(self, value: Any, name: str) -> Any:
        return check_choice(value, name, self.choices)

    def __str__(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


class Optional:
    """``None``, or what ``inner`` allows."""

    def __init__(self, inner: Callable[[Any, str], Any]) -> None:
        self.inner = inner

    def __call__(self, value: Any, name: str) -> Any:
        return None if value is None else self.inner(value, name)

    def __str__(self) -> str:
        return f"None or {self.inner}"


class Choices:
    """argparse ``choices`` read when parsing (``names()``), so that extensions registered later count (and
    building a parser imports nothing the names need)."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self.names = names

    def __contains__(self, value: object) -> bool:
        return value in tuple(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self.names()))


def setting(default: Any = dataclasses.MISSING, *, identity: bool = False,
            check: Callable[[Any, str], Any] | None = None, flag: str | None = None,
            help: str = "", legacy: Any = _NO_LEGACY,  # noqa: A002
            default_factory: Any = dataclasses.MISSING, cli: bool = True, dest: str | None = None,
            aliases: tuple[str, ...] = (), **argparse_options: Any) -> Any:
    """A settings field.

    Args:
        default: the default value (or ``default_factory``).
        identity: part of the identity (what a resume must agree on, what a digest covers).
        check: ``check(value, name) -> checked value``, raising ``ValueError`` naming ``name``.
        flag: the command-line option (default ``--field-name``); ``help``: its help text, or a function returning
            it when the parser is built (help derived from a registry).
        legacy: the value that files written before this field existed mean (:meth:`Settings.from_dict`).
        cli: offered on the command line by :func:`add_arguments`; ``dest``: the name of its value in the parsed
            arguments (default the field's name); ``aliases``: other spellings of the option.
        argparse_options: passed to ``add_argument`` (``type``, ``choices``, ``nargs``, ``action``, ``metavar``).
    """
    metadata = {"identity": identity, "check": check, "flag": flag, "help": help, "legacy": legacy, "cli": cli,
                "dest": dest, "aliases": tuple(aliases), "argparse": argparse_options}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _dest(f: dataclasses.Field) -> str:
    return f.metadata.get("dest") or f.name


def _frozen(value: Any) -> Any:
    """Lists become tuples, dicts stay dicts of frozen values, NumPy scalars become Python scalars."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _frozen(v) for k, v in value.items()}
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return value.item()
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Settings:
    """Base of frozen settings dataclasses (see the module's docstring). Subclasses are
    ``@dataclass(frozen=True)`` and may add ``_check(self)`` for checks across fields (called after each field
    is checked; raise ``ValueError`` naming the field)."""

    option_names: ClassVar[bool] = True  # messages name fields by their command-line option (False: by field name)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _frozen(getattr(self, f.name))
            check = f.metadata.get("check")
            if check is not None:
                value = check(value, self.field_label(f.name))
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Checks across fields (subclasses)."""

    @classmethod
    def field_label(cls, name: str) -> str:
        """How messages name field ``name``: its command-line option, or the field name."""
        f = {f.name: f for f in dataclasses.fields(cls)}[name]  # type: ignore[arg-type]
        return _flag(f) if cls.option_names and f.metadata.get("cli", True) else name

    @classmethod
    def identity_fields(cls) -> tuple[str, ...]:
        """The names of the identity fields, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("identity"))  # type: ignore[arg-type]

    def identity(self) -> dict[str, Any]:
        """The identity fields and their values (JSON-able)."""
        return {name: _jsonable(getattr(self, name)) for name in self.identity_fields()}

    def digest(self) -> str:
        """SHA-256 of the identity's canonical JSON: equal digests, equal identities."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def identity_differences(self, other: Settings | Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """``(field, other's value, this value)`` for every identity field where ``other`` differs."""
        theirs = other.identity() if isinstance(other, Settings) else dict(other)
        mine = self.identity()
        return [(name, theirs.get(name), value) for name, value in mine.items() if theirs.get(name) != value]

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able (nested settings as dicts)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any], **overrides: Any) -> S:
        """The settings a dict (metadata.json) holds: unknown keys ignored, missing fields taken from each field's
        ``legacy`` value (what files written before it existed mean), else its default."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in overrides:
                values[f.name] = overrides[f.name]
            elif f.name in data:
                values[f.name] = data[f.name]
            elif f.metadata.get("legacy", _NO_LEGACY) is not _NO_LEGACY:
                values[f.name] = f.metadata["legacy"]
        return cls(**values)

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def add_arguments(parser: Any, cls: type[Settings], *, skip: Sequence[str] = (), only: Sequence[str] | None = None,
                  defaults: Mapping[str, Any] | None = None, groups: Mapping[str, str] | None = None,
                  helps: Mapping[str, str] | None = None, parsed_defaults: bool = False) -> None:
    """Add one command-line option per field of ``cls`` offered on the command line (not in ``skip``; with
    ``only``, just those fields, in that order).

    Options default to ``None`` ("not given"), so :func:`from_namespace` can tell a given value from the field's
    default; with ``parsed_defaults`` the parsed value is the default itself (for commands that tell given
    options by the words of the command line, as ``multiguard``'s ``args.given``). The help shows the field's
    default (or ``defaults[name]``, which replaces it); ``helps[name]`` replaces a field's help text. ``groups``
    maps a field's name to the title of the ``--help`` group its option is listed in (made on first use; fields
    not named stay in the parser's own list)."""
    made = {g.title: g for g in getattr(parser, "_action_groups", ())}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in (only if only is not None else list(fields)):
        f = fields[name]
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        options = dict(f.metadata.get("argparse", {}))
        check = f.metadata.get("check")
        inner = check.inner if isinstance(check, Optional) else check
        if isinstance(inner, Interval) and "type" not in options and "action" not in options:
            options["type"] = inner.kind
        default = (defaults or {}).get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        help_text = (helps or {}).get(f.name, f.metadata.get("help", ""))
        if callable(help_text):  # derived from a registry when the parser is built, so later entries show
            help_text = help_text()
        if (options.get("action") not in ("store_true", "store_false") and default not in (None, (), "")
                and "default" not in help_text):
            help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        title = (groups or {}).get(f.name)
        if title is not None and title not in made:
            made[title] = parser.add_argument_group(title)
        target = parser if title is None else made[title]
        target.add_argument(_flag(f), *f.metadata.get("aliases", ()), dest=_dest(f),
                            default=default if parsed_defaults else None, help=help_text or None, **options)


def from_namespace(cls: type[S], namespace: Any, **overrides: Any) -> S:
    """``cls`` from parsed arguments: options given on the command line, ``overrides``, else the defaults."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif getattr(namespace, _dest(f), None) is not None:
            values[f.name] = getattr(namespace, _dest(f))
    return cls(**values)
