"""Settings as frozen values: checks, identity, digest, metadata round trip, old files, the command line."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from multiguard.common.registry import Registry, UnknownNameError
from multiguard.common.settings import Interval, OneOf, Optional, Settings, add_arguments, from_namespace, setting

COLOURS = Registry("colour", argument="--colour")
COLOURS.register("red", "#f00", help="warm")
COLOURS.register("blue", "#00f", help="cold")


@dataclasses.dataclass(frozen=True)
class Example(Settings):
    n: int = setting(100, identity=True, check=Interval(int, 1), help="samples")
    sigma: float = setting(0.5, identity=True, check=Interval(float, 0.0, open_low=True), help="noise")
    colour: str = setting("red", identity=True, check=OneOf(COLOURS.names), legacy="blue")
    radii: tuple = setting(default_factory=tuple, check=Optional(lambda v, name: tuple(float(x) for x in v)),
                           nargs="+", type=float)
    quiet: bool = setting(False, action="store_true")


def test_checks_name_the_option_and_freeze_the_value():
    with pytest.raises(ValueError, match=r"^--n must be an integer >= 1, got 0$"):
        Example(n=0)
    with pytest.raises(ValueError, match=r"^--sigma must be a number > 0, got -1"):
        Example(sigma=-1)
    with pytest.raises(ValueError, match="--colour must be one of 'red', 'blue', got 'green'"):
        Example(colour="green")
    value = Example(radii=[0.25, 1])
    assert value.radii == (0.25, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.n = 3  # type: ignore[misc]


def test_identity_digest_and_round_trip():
    a, b = Example(), Example(quiet=True, radii=[1.0])
    assert a.identity() == {"n": 100, "sigma": 0.5, "colour": "red"}
    assert a.digest() == b.digest()  # only identity fields count
    assert a.digest() != Example(n=101).digest()
    assert Example.from_dict(b.to_dict()) == b
    assert a.identity_differences(Example(sigma=0.25)) == [("sigma", 0.25, 0.5)]


def test_old_metadata_takes_the_legacy_value_not_the_default():
    old = Example.from_dict({"n": 5, "sigma": 0.25, "unknown_key": 1})
    assert old.colour == "blue" and old.n == 5


def test_command_line_from_the_fields():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    args = parser.parse_args(["--n", "7", "--radii", "0.5", "1", "--quiet"])
    value = from_namespace(Example, args)
    assert (value.n, value.radii, value.quiet, value.sigma) == (7, (0.5, 1.0), True, 0.5)
    assert "samples (default: 100)" in parser.format_help()


def test_registry_names_its_choices_and_refuses_a_second_registration():
    with pytest.raises(UnknownNameError, match=r"--colour: unknown colour 'green'; choose from red or blue"):
        COLOURS.get("green")
    with pytest.raises(ValueError, match="already registered"):
        COLOURS.register("red", "#e00")
    assert COLOURS.help_text() == "red: warm; blue: cold"
    lazy = Registry("function")
    lazy.register("sqrt", "math:sqrt")
    assert lazy.get("sqrt")(9.0) == 3.0
