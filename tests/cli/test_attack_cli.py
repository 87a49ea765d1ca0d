"""``multiguard attack`` as a user runs it: bad input gets one line naming the argument, and no folder."""

from __future__ import annotations

import pytest
from clitools import assert_one_line_error_in_process, run_in_process

CHEAP = ("--num-inputs", "2", "--steps", "1", "--samples", "2", "--n", "20", "--device", "cpu", "--quiet")


@pytest.mark.parametrize(("arguments", "needles"), [
    (("--radii", "-0.5"), ("radi",)),
    (("--radii", "0.5", "--attack", "nope"), ("attack", "nope", "apgd-targeted")),
    (("--radii", "0.5", "--attack", "pgd", "--restarts", "2"), ("restarts", "pgd")),
])
def test_bad_attack_input_is_one_line(tiny_model_checkpoint, tmp_path, capsys, arguments, needles) -> None:
    out = tmp_path / "attack"
    result = run_in_process(capsys, "attack", "--checkpoint", str(tiny_model_checkpoint), *arguments, *CHEAP,
                            "--out", str(out))
    assert_one_line_error_in_process(result, *needles)
    assert not out.exists()
