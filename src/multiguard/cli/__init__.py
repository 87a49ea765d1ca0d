"""The ``multiguard`` command: parses arguments, calls the library, prints.

Commands: ``train``, ``train-denoiser``, ``datasets list|describe|download|verify``, ``certify``, ``report``,
``attack``, ``predict``, ``demo``. Every command has ``--help``. Every failure is one line ``multiguard: error:
...`` on stderr (``datasets download`` that fetched nothing: one such line per URL tried, then what to do)
that names the argument or file and says what to do, never a traceback (``--debug`` or
``MULTIGUARD_DEBUG=1`` shows it):

- exit status 2 for the user's mistakes (an unknown or misspelt option, an unknown dataset or arch, missing
  data, a file that is not ours or is damaged, an impossible k, a bad radius grid, an ``--out`` that holds
  something else, a folder that cannot be read or written for lack of permission);
- exit status 1 for failures of the machine (disk full, read-only file system, out of memory, an I/O error)
  and for anything unexpected; after a full disk the same command (with ``--resume`` where it has one)
  completes once space is freed, since every file is written whole or not at all; and for data that is not
  there yet (``datasets download`` that could not fetch a file or waits for files fetched by hand,
  ``datasets verify`` that found problems).

Options are never abbreviated: ``--n`` is not ``--names``. Nothing the user made is replaced without being
asked: ``train --out`` over a checkpoint needs ``--resume`` or ``--overwrite``, ``certify --out`` over a run
needs ``--resume``, ``report --out`` into a folder that is not a report needs ``--overwrite``.

The top room: may import every other room; nothing imports it but ``multiguard.__main__``.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from multiguard.cli.commands import COMMANDS, OutputStreamError, fail
from multiguard.cli.options import DEBUG_ENV, EXIT_FAILURE, EXIT_USAGE, Formatter, Parser, wrap

__all__ = ["COMMANDS", "EXIT_FAILURE", "EXIT_USAGE", "build_parser", "main"]


def __getattr__(name: str) -> Any:
    if name == "FUTILITY_CHOICES":  # the futility rules' names (multiguard.certificates.sequential.FUTILITY_RULES)
        from multiguard.certificates.sequential import FUTILITY_RULES

        return FUTILITY_RULES.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    from tqdm.auto import tqdm  # writes around any progress bar on the screen

    text = " ".join(str(message).split())
    tqdm.write(f"multiguard: warning: {text}", file=sys.stderr)



_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _belongs_to(path: object, out: object) -> bool:
    """Whether ``path`` is ``out``, inside it, above it, or one of its temporary files or folders beside it."""
    where, target = os.path.abspath(os.fspath(path)), os.path.abspath(os.fspath(out))  # type: ignore[arg-type]
    beside = os.path.join(os.path.dirname(target), "." + os.path.basename(target) + ".")
    return (where == target or where.startswith(target + os.sep) or target.startswith(where + os.sep)
            or where.startswith(beside))


def _explain(exc: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """The exit status and the one line that tell the user what failed and what to do."""
    out = getattr(args, "out", None)
    again = " with --resume" if getattr(args, "command", "") in ("certify", "train") else ""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        hint = "lower --batch-size or " if hasattr(args, "batch_size") else ""
        return EXIT_FAILURE, f"out of memory ({exc or 'MemoryError'}); {hint}free memory, then run it again{again}"
    if isinstance(exc, OutputStreamError):  # the output is redirected to a full or failing disk, not --out's
        return EXIT_FAILURE, (f"cannot write to stdout ({exc.strerror}): the file or device it is redirected to "
                              "failed; free space there or send the output elsewhere, then run the same command "
                              f"again{again}")
    if isinstance(exc, (ValueError, *_USER_OS_ERRORS)):
        return EXIT_USAGE, str(exc) or type(exc).__name__
    if isinstance(exc, OSError):
        where = exc.filename if exc.filename is not None else out
        named = "a file" if where is None else str(where)
        if out is not None and _belongs_to(where, out):
            if ".tmp" in named:  # a temporary name of the atomic writer: the user knows --out
                where = named = str(out)
            named += " (--out)" if str(where) == str(out) else f" (--out {out})"
        if exc.errno == errno.ENAMETOOLONG:  # the user's path, not the machine
            longest = max((len(os.fsencode(part)) for part in str(where).split(os.sep)), default=0)
            return EXIT_USAGE, (f"file name too long: {named} has a name of {longest} bytes, more than the file "
                                "system allows (usually 255); choose a shorter one")
        if isinstance(exc, PermissionError):
            return EXIT_USAGE, f"permission denied: {named}; choose a place you may read and write"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return EXIT_FAILURE, (f"no space left on the device of {named}; no file was left half-written: free "
                                  f"some space and run the same command again{again}")
        if exc.errno == errno.EROFS:
            return EXIT_FAILURE, f"read-only file system: cannot write {named}; choose an --out on a writable disk"
        return EXIT_FAILURE, f"{exc.strerror or type(exc).__name__}: {named}"
    return EXIT_FAILURE, (f"unexpected {type(exc).__name__}: {exc}; run again with --debug (or {DEBUG_ENV}=1) for "
                          "the traceback")



def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``multiguard`` command, one subparser per entry of :data:`COMMANDS`."""
    from multiguard import __version__

    parser = Parser(
        prog="multiguard",
        description=wrap("MultiGuard: provably robust multi-label classification by randomized smoothing.\n\n"
        "A typical session: train a noise-robust model, certify it (the expensive sampling, saved in a "
        "RUN_DIR), then report curves for any k, k', alpha from the saved counts. `multiguard demo` does "
        "all three offline in about two minutes."),
    )
    parser.add_argument("--version", action="version", version=f"multiguard {__version__}")
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in COMMANDS.entries():
        _add_command(sub, entry.name, entry.help, entry.target, dest="command")
    return parser


def _add_command(sub: Any, name: str, help: str, command: Any, dest: str) -> None:  # noqa: A002
    """The subparser of one command (and of its actions), its options, handler and --debug."""
    p = sub.add_parser(name, formatter_class=Formatter, help=help, description=command.description or None)
    command.options(p)
    p.set_defaults(command_parser=p)
    if command.handler is not None:
        p.set_defaults(func=command.handler)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # --debug after the command works too
                   help=f"show the traceback of a failure (also: {DEBUG_ENV}=1)")
    if command.subcommands:
        actions = p.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)
        for action, action_help, action_command in command.subcommands:
            _add_command(actions, action, action_help, action_command, dest=f"{name}_command")
    p.usage = _short_usage(p)  # after the actions: their prog is the full one


def _short_usage(p: argparse.ArgumentParser) -> str:
    """``%(prog)s`` with what must be given (required options, positionals) and ``[options]``: the full list is
    in the groups below it, not repeated in the usage line."""
    parts = ["%(prog)s"]
    for action in p._actions:
        if action.option_strings and action.required:
            parts.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
        elif not action.option_strings and not isinstance(action, argparse._SubParsersAction):
            metavar = action.metavar or action.dest
            parts.append(metavar if action.nargs in (None, 1) else
                         f"{metavar} [{metavar} ...]" if action.nargs == "+" else f"[{metavar} ...]")
    if any(action.option_strings and not action.required for action in p._actions):
        parts.append("[options]")
    if any(isinstance(action, argparse._SubParsersAction) for action in p._actions):
        parts.append("ACTION ...")
    return " ".join(parts)


def _tolerant_output() -> None:
    """Characters the terminal's encoding lacks (σ, α, ∩ under ``PYTHONIOENCODING=ascii`` or a Latin-1 console)
    are written as ``\\u03c3`` escapes instead of failing the command after its files are written."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "strict") == "strict":
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError, TypeError):  # a stream that cannot change (e.g. already written)
                pass


def _given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> frozenset[str]:
    """The destinations of the options written on the command line (not left at their defaults): options are
    never abbreviated, so an option is given exactly when its name (or ``NAME=VALUE``) is one of the words."""
    names = {name: action.dest for action in parser._actions for name in action.option_strings}
    return frozenset(names[word.split("=", 1)[0]] for word in argv if word.split("=", 1)[0] in names)


# The commands whose --out keeps what a killed run finished, and continue it with --resume.
_RESUMABLE = ("certify", "attack", "train", "train-denoiser")


def _interrupted_detail(args: argparse.Namespace) -> str:
    """What a Ctrl-C left: ``'; run keeps what was finished: run the same command with --resume to continue'``
    for a resumable command whose --out exists, ``''`` otherwise."""
    out = getattr(args, "out", None)
    if getattr(args, "command", None) not in _RESUMABLE or out is None or not os.path.exists(out):
        return ""
    return f"; {out} keeps what was finished: run the same command with --resume to continue"


_NEGATIVE_LIST = re.compile(r"^-\.?\d[^\s]*[,:]")


def _attach_negative_lists(argv: Sequence[str]) -> list[str]:
    """``--radii -1,0.5`` as ``--radii=-1,0.5``: argparse takes a value that starts with ``-`` and is not a
    single number for an option and says "expected one argument"; attached, the value reaches its own check,
    whose message names what is wrong with it (a negative radius)."""
    words = list(argv)
    out: list[str] = []
    for i, word in enumerate(words):
        previous = out[-1] if out else ""
        if i and previous.startswith("--") and "=" not in previous and _NEGATIVE_LIST.match(word):
            out[-1] = f"{previous}={word}"
        else:
            out.append(word)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``multiguard`` command; returns the exit status: 0, 2 for the user's errors, 1 for the machine's
    (with one line on stderr, and a traceback only under ``--debug`` or ``MULTIGUARD_DEBUG=1``)."""
    _tolerant_output()
    parser = build_parser()
    argv = _attach_negative_lists(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, so that its --help is the one named
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    args.given = _given_options(getattr(args, "command_parser", parser), argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        with warnings.catch_warnings():  # library warnings as one line each, without the source location
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"multiguard: interrupted{_interrupted_detail(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter shutdown from flushing again
        return 1
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line (the traceback only when debugging)
        if debug:
            raise
        code, line = _explain(exc, args)
        return fail(line, code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
