"""``multiguard attack`` as a user runs it: bad input gets one line naming the argument, and no folder."""

from __future__ import annotations

import pytest
from clitools import assert_one_line_error_in_process, run_in_process

CHEAP = ("--num-inputs", "2", "--steps", "1", "--samples", "2", "--n", "20", "--device", "cpu", "--quiet")


@pytest.mark.parametrize(("arguments", "needles"), [
    (("--radii", "-0.5"), ("radi",)),
    (("--radii", "0.5", "--attack", "nope"), ("attack", "nope", "apgd-targeted")),
    (("--radii", "0.5", "--attack", "pgd", "--restarts", "2"), ("restarts", "pgd")),
    (("--radii", "0.5", "--q", "0.3"), ("q", "--threshold")),  # a cut, and nothing gives a threshold
    (("--radii", "0.5", "--threshold", "2"), ("thresholds", "[0, 1]")),
    (("--radii", "0.5", "--threshold", "no-such-file.txt"), ("threshold", "no such file")),
    (("--radii", "0.5", "--threshold", "0.5", "--q", "1"), ("q",)),
])
def test_bad_attack_input_is_one_line(tiny_model_checkpoint, tmp_path, capsys, arguments, needles) -> None:
    out = tmp_path / "attack"
    result = run_in_process(capsys, "attack", "--checkpoint", str(tiny_model_checkpoint), *arguments, *CHEAP,
                            "--out", str(out))
    assert_one_line_error_in_process(result, *needles)
    assert not out.exists()


def test_thresholded_attack_prints_its_table_and_writes_its_csv(tiny_model_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "attack"
    code, stdout, stderr = run_in_process(capsys, "attack", "--checkpoint", str(tiny_model_checkpoint), "--radii",
                                          "0.25", "--threshold", "0.5", "--restarts", "1", *CHEAP[:-1], "--out",
                                          str(out))
    assert code == 0, stderr
    assert "thresholded set under attack (q = 0.5" in stdout and "violations" in stdout
    assert f"wrote {out}/empirical_thresholded.csv" in stdout
    header = (out / "empirical_thresholded.csv").read_text().splitlines()[0]
    assert header == "radius,precision,recall,f1,certified_precision,certified_recall,certified_f1,violations," \
        "num_inputs"
