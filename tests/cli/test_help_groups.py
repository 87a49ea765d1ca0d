"""--help in groups (issue 27): no option of 0.1 is lost, the long commands list theirs under titled groups, and
certify's help fits 100 lines at 80 columns."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multiguard.cli import build_parser

SNAPSHOT = Path(__file__).with_name("help_options_0.1.json")  # every command's options before the regrouping


def _commands(parser: argparse.ArgumentParser, name: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {name: parser} if name else {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                found.update(_commands(child, f"{name} {sub}".strip()))
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings} | {
        a.dest for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)}


def test_no_option_of_0_1_is_lost() -> None:
    before = json.loads(SNAPSHOT.read_text())
    now = _commands(build_parser())
    assert set(before) <= set(now)
    for command, options in before.items():
        missing = set(options) - _options(now[command])
        assert not missing, f"multiguard {command} lost {sorted(missing)}"


def _help(*command: str) -> str:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "multiguard", *command, "--help"], capture_output=True, text=True,
                          env=env, check=True).stdout


@pytest.mark.parametrize("command, groups", [
    ("certify", ["model and data", "sampling", "device and mode", "output", "sequential certification",
                 "thresholded certificate"]),
    ("predict", ["model and data", "sampling", "device and mode", "sequential certification",
                 "thresholded certificate"]),
    ("attack", ["model and data", "sampling", "device and mode", "output"]),
    ("train", ["model and data", "training", "device and mode", "output"]),
])
def test_long_commands_list_their_options_in_groups(command: str, groups: list[str]) -> None:
    text = _help(command)
    titles = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert set(groups) <= set(titles), titles
    # every option line sits under a group title: none left in the untitled "options" list but -h and --debug
    untitled = text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    flags = {line.split()[0].rstrip(",") for line in untitled.splitlines() if line.startswith("  -")}
    assert flags <= {"-h", "--debug"}, flags


def test_certify_help_fits_100_lines_and_starts_with_what_must_be_given() -> None:
    text = _help("certify")
    assert len(text.splitlines()) <= 100, len(text.splitlines())
    assert text.startswith("usage: multiguard certify --checkpoint FILE --out RUN_DIR [options]\n")


def _certify_parser() -> argparse.ArgumentParser:
    return _commands(build_parser())["certify"]


def test_certify_options_are_generated_from_the_run_spec_and_stop_rule_declarations() -> None:
    """Each plan field of RunSpec and each field of StopRule is one certify option whose flag, aliases and help
    are the field's declaration (so a field added there appears here, and a changed help changes --help)."""
    import dataclasses

    from multiguard.certificates.stop_rule import StopRule
    from multiguard.runs.spec import RunSpec

    actions = {a.dest: a for a in _certify_parser()._actions}
    declared = [(cls, f) for cls in (RunSpec, StopRule) for f in dataclasses.fields(cls)
                if cls is StopRule or f.name in RunSpec.PLAN_FIELDS]
    assert len(declared) == len(RunSpec.PLAN_FIELDS) + len(dataclasses.fields(StopRule))
    for cls, f in declared:
        dest = f.metadata.get("dest") or f.name
        action = actions[dest]
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        assert action.option_strings == [flag, *f.metadata["aliases"]], (cls.__name__, f.name)
        words = f.metadata["help"].split()[:3]
        if f.name not in ("radius", "futility", "k", "k_prime", "alpha", "max_k_prime"):  # certify's own texts
            assert action.help.split()[:3] == words, (f.name, action.help)


def test_certify_builds_its_stop_rule_from_the_generated_options() -> None:
    from multiguard.certificates.stop_rule import StopRule

    parser = _certify_parser()
    args = parser.parse_args(["--checkpoint", "c.pt", "--out", "r", "--stop-at-radius", "0.5", "--spending",
                              "0.5", "--futility-margin", "0.3", "--bounds", "betting-cp"])
    assert (args.k, args.k_prime, args.alpha, args.n, args.num_inputs, args.noise) == (3, 1, 0.001, 1000, 500, "sound")
    rule = StopRule(radius=args.stop_at_radius, k=args.k, k_prime=args.k_prime, alpha=args.alpha,
                    **StopRule.procedure_from(args))
    assert rule == StopRule(radius=0.5, k=3, k_prime=1, alpha=0.001, spending=0.5, margin=0.3, bounds="betting-cp",
                            schedule="every-block")
    # bounds that read no spending refuse one given, rather than drop it
    for bounds in ("betting", "tuned"):
        args = parser.parse_args(["--checkpoint", "c.pt", "--out", "r", "--stop-at-radius", "0.5", "--spending",
                                  "equal", "--bounds", bounds])
        with pytest.raises(ValueError, match=rf"^spending: bounds {bounds} do not read it .* leave --spending out$"):
            StopRule.procedure_from(args)
    # a resumed run's rule fills what the command line leaves out (what it predates: the legacy values, so no
    # spending is equal shares); given options win
    args = parser.parse_args(["--checkpoint", "c.pt", "--out", "r", "--schedule", "1-2-5"])
    stored = {"radius": 0.25, "k": 2, "k_prime": 1, "alpha": 0.01, "futility": "remaining", "bounds": "betting"}
    assert StopRule.procedure_from(args, stored) == {"futility": "remaining", "schedule": "1-2-5", "spending": None,
                                                     "margin": 0.2, "bounds": "betting"}
