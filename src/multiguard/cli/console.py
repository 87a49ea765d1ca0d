"""What every command shares: the :class:`Command` record, printing (:func:`echo`, :func:`fail`) and how paths
are shown."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from multiguard.cli.options import EXIT_USAGE

__all__ = ["Command", "OutputStreamError", "echo", "fail", "next_k", "shown"]


@dataclass(frozen=True)
class Command:
    """One ``multiguard`` command: ``handler(args) -> exit status``, the ``description`` of its ``--help``,
    ``options(parser)`` adding its options, and ``subcommands`` (a command with actions, as ``datasets``)."""

    handler: Callable[[argparse.Namespace], int] | None
    description: str
    options: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    subcommands: tuple[tuple[str, str, Command], ...] = ()  # (name, help, command)


def shown(text: str) -> str:
    """A path, or an arch ``PATH.py:factory``, relative to the current folder where that is shorter."""
    path, sep, rest = text.rpartition(":") if ".py:" in text else (text, "", "")
    if not os.path.isabs(path):
        return text
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return text
    return relative + sep + rest if len(relative) < len(path) else text


def next_k(run_dir: str) -> tuple[int, str]:
    """A k for the `next:` hint from the run's labels: about the mean label count, well below the classes."""
    from multiguard.runs.folder import load_run

    labels = load_run(run_dir).labels
    classes = labels.shape[1]
    mean = float(labels.sum(1).mean()) if len(labels) else 1.0
    k = max(1, min(int(-(-mean // 1)), max(1, classes // 2)))
    return k, (f"k = {k}: about the {mean:.1f} labels per input, at most half the {classes} classes; "
               "k' = 1 as in the paper")


class OutputStreamError(OSError):
    """Writing to stdout failed (e.g. it is redirected to a full disk): the output, not --out, is at fault."""


def echo(line: str = "") -> None:
    """Print one line to stdout now; a failing stdout raises :class:`OutputStreamError` (a closed pipe, as
    ``| head`` makes, stays a BrokenPipeError: the command stops quietly)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise
    except OSError as exc:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more to it, nor at interpreter shutdown
        raise OutputStreamError(exc.errno, exc.strerror or str(exc)) from exc


def fail(message: str, code: int = EXIT_USAGE) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"multiguard: error: {line}", file=sys.stderr, flush=True)
    return code
