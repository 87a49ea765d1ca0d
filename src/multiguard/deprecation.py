"""The one shim through which old public names retire: they keep working for a release and warn.

No torch here. A module lists its retired names once::

    __getattr__ = deprecated_names(__name__, {"certify_run": ("sample_run", lambda: sample_run)})

and ``from module import certify_run`` (or ``module.certify_run``) then returns the new object with a
``DeprecationWarning`` that names the new name. Keyword arguments retire through :func:`renamed_keyword`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["deprecated_names", "renamed_keyword", "warn_deprecated"]


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (``DeprecationWarning``)."""
    warnings.warn(f"{old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


def deprecated_names(module: str, names: Mapping[str, tuple[str, Callable[[], Any]]]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` serving retired names.

    Args:
        module: the module's ``__name__`` (for messages).
        names: ``old name -> (new name as users should write it, a function returning the object)``.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            new, obj = names[name]
            warn_deprecated(f"{module}.{name}", new)
            return obj()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


def renamed_keyword(function: str, kwargs: dict[str, Any], old: str, new: str) -> None:
    """Move ``kwargs[old]`` to ``kwargs[new]`` with a warning (both given: ``TypeError``)."""
    if old not in kwargs:
        return
    if new in kwargs:
        raise TypeError(f"{function}() got both {old}= (deprecated) and {new}=; pass only {new}=")
    warn_deprecated(f"{function}({old}=...)", f"{function}({new}=...)", stacklevel=4)
    kwargs[new] = kwargs.pop(old)
