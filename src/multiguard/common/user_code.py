"""Loading a user's factory (``path/to/file.py:factory`` or ``module:factory``) for a model or a denoiser:
the one place a user's Python file is imported, with one-line errors naming the file or module."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

from torch import nn

from multiguard.common.torch_files import read_torch_file  # noqa: F401 - its old import path (moved there)

__all__ = ["resolve_factory"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__



def _is_file_form(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """``folder`` first on sys.path for the duration (so a model file can import its neighbours)."""
    entry = os.fspath(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _module_from_file(path: Path, arch: str):
    """Import the Python file ``path``: inside a package as its dotted name (so relative imports work), else
    under a private module name (a file called ``code.py`` or ``models.py`` must not shadow another module)."""
    root, parts = path.parent, [path.stem]
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    name = ".".join(parts)
    try:
        if len(parts) > 1:
            loaded = sys.modules.get(name)
            if loaded is None:
                with _on_sys_path(root):
                    return importlib.import_module(name), root
            if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
                return loaded, root
        # keyed on the file's content too: a file edited since it was imported is imported again
        content = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        private = f"_multiguard_arch_{hashlib.sha256(os.fsencode(path)).hexdigest()[:12]}_{content}_{path.stem}"
        if private in sys.modules:
            return sys.modules[private], root
        spec = importlib.util.spec_from_file_location(private, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"arch: {path} is not a Python file (from {arch!r})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module
        try:
            with _on_sys_path(path.parent):  # the file may import its neighbours
                spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(private, None)
            raise
        return module, root
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's file failed to import: say which and why, in one line
        raise ValueError(f"arch: importing the model file {path} failed: {_first_line(exc)}") from exc


def _installed(path: Path) -> bool:
    """Whether ``path`` lies in an installed location (site-packages or the standard library)."""
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    text = os.fspath(path)
    return any(part in ("site-packages", "dist-packages") for part in path.parts) or any(
        text.startswith(os.fspath(Path(root).resolve()) + os.sep) for root in roots if root)


def resolve_factory(arch: str, forms: Callable[[], str]) -> tuple[Callable[..., nn.Module], str, Path | None]:
    """Find a user factory: ``(factory, arch to record, file defining it)``.

    ``arch`` is ``'path/to/file.py:factory'`` (relative to the current folder, or absolute) or
    ``'module:factory'`` (``module`` importable from sys.path or found in the current folder).
    The arch to record is the absolute file form unless the module is an installed package, so
    that a checkpoint rebuilds its model from any folder. Raises ValueError in one line naming the
    file or module and what to do; ``forms()`` says what the argument accepts, for that message.
    """
    spec, _, factory_name = arch.rpartition(":")
    if not spec or not factory_name.isidentifier():
        raise ValueError(f"arch must be one of {forms()}, got {arch!r}")
    if _is_file_form(spec):
        path = Path(spec).expanduser()
        path = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if not path.is_file():
            raise ValueError(f"arch: model file not found: {path} (from {arch!r}); a checkpoint rebuilds its "
                             "model from this file, so it must exist at that path")
        module, _ = _module_from_file(path, arch)
        recorded = f"{path}:{factory_name}"
    else:
        if not all(part.isidentifier() for part in spec.split(".")):
            raise ValueError(f"arch must be one of {forms()}, got {arch!r}")
        module = None
        top = spec.split(".")[0]
        for extra in (None, Path.cwd()):
            try:
                with _on_sys_path(extra) if extra is not None else contextlib.nullcontext():
                    module = importlib.import_module(spec)
                break
            except ModuleNotFoundError as exc:
                if exc.name not in (top, spec) and not spec.startswith(f"{exc.name}."):
                    raise ValueError(f"arch: importing module {spec!r} failed: {_first_line(exc)}") from exc
            except Exception as exc:  # noqa: BLE001 - the user's module failed to import
                raise ValueError(f"arch: importing module {spec!r} failed: {_first_line(exc)}") from exc
        if module is None:
            raise ValueError(
                f"arch: cannot import module {spec!r} for {arch!r}: no {spec.replace('.', '/')}.py in the current "
                f"folder ({Path.cwd()}) nor on sys.path; give the file instead: --arch path/to/"
                f"{spec.split('.')[-1]}.py:{factory_name}"
            )
        file = getattr(module, "__file__", None)
        path = Path(file).resolve() if file else None
        recorded = f"{path}:{factory_name}" if path is not None and not _installed(path) else arch
    factory = getattr(module, factory_name, None)
    where = getattr(module, "__file__", None) or module.__name__
    if factory is None:
        raise ValueError(f"arch: {where} has no {factory_name!r} (from {arch!r})")
    if not callable(factory):
        raise ValueError(f"arch: {factory_name!r} in {where} is a {type(factory).__name__}, not a function "
                         f"(from {arch!r})")
    return factory, recorded, (Path(module.__file__).resolve() if getattr(module, "__file__", None) else None)
