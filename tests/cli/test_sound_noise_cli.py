"""Sound noise end to end on the embedded multidigits: certify, report, predict, resume after kill -9 and shards
equal to one run; the noise in every record; --noise with a wrong value; a float run resumed with sound noise
refused naming both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import (
    assert_one_line_error,
    assert_one_line_error_in_process,
    assert_same_counts,
    command,
    env,
    load_counts,
    run,
    run_in_process,
    tiny_checkpoint,
)

SOUND_LINE = "sound, rounded Gaussian on the 1/255 grid"
ARGS = ["--num-samples", "300", "--max-k-prime", "2", "--num-inputs", "12", "--chunk-size", "2", "--seed", "3",
        "--device", "cpu", "--noise", "sound"]


@pytest.mark.slow
def test_sound_certify_report_predict_resume_and_shards(tmp_path_factory, tmp_path: Path, capsys) -> None:
    checkpoint = str(tiny_checkpoint(tmp_path_factory))
    reference = tmp_path / "reference"
    run("certify", "--checkpoint", checkpoint, *ARGS, "--quiet", "--out", str(reference))
    meta = json.loads((reference / "metadata.json").read_text())
    assert meta["noise"] == "sound" and meta["shared_noise"] is False and meta["noise_description"] == SOUND_LINE
    assert 0 < meta["noise_alpha_slack_per_value"] < 1e-15
    # sound is the command line's default: the same run without --noise is the same counts
    default = tmp_path / "default"
    run("certify", "--checkpoint", checkpoint, *ARGS[:-2], "--quiet", "--out", str(default))
    assert json.loads((default / "metadata.json").read_text())["noise"] == "sound"
    np.testing.assert_array_equal(load_counts(default)["counts"], load_counts(reference)["counts"])
    # the same seed with float noise (the opt-out) samples other counts
    floating = tmp_path / "float"
    run("certify", "--checkpoint", checkpoint, *ARGS[:-2], "--noise", "float", "--quiet", "--out", str(floating))
    assert json.loads((floating / "metadata.json").read_text())["noise"] == "float"
    assert not np.array_equal(load_counts(reference)["counts"], load_counts(floating)["counts"])

    # a float run resumed with --noise sound is refused naming both
    assert_one_line_error(run("certify", "--checkpoint", checkpoint, *ARGS, "--quiet", "--out", str(floating),
                              "--resume", check=False), "noise", "'float'", "'sound'")

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command(), "certify", "--checkpoint", checkpoint, *ARGS, "--quiet", "--batch-size",
                             "100", "--out", str(killed)], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((killed / "chunks").glob("chunk-*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run("certify", "--checkpoint", checkpoint, "--quiet", "--out", str(killed), "--resume")  # noise from the run
    assert_same_counts(reference, killed)

    shards = tmp_path / "shards"
    procs = [subprocess.Popen([*command(), "certify", "--checkpoint", checkpoint, *ARGS, "--quiet", "--out",
                               str(shards), "--shard", f"{i}/2"], env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    assert_same_counts(reference, shards)

    code, summary, _ = run_in_process(capsys, "report", str(reference), "--k", "2", "--out", str(tmp_path / "rep"))
    assert code == 0 and f"noise: {SOUND_LINE}" in summary
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert results["runs"][0]["sampling"]["noise"] == SOUND_LINE


@pytest.mark.slow
def test_sound_predict_names_the_noise_and_refuses_off_grid_images(tmp_path_factory, tmp_path: Path,
                                                                    capsys) -> None:
    from PIL import Image

    checkpoint = str(tiny_checkpoint(tmp_path_factory))
    from multiguard.data import get_dataset

    image = get_dataset("multidigits", split="test", seed=0, size=1).pixels[0, 0].numpy()
    path = tmp_path / "digits.png"
    Image.fromarray(image).save(path)
    code, out, err = run_in_process(capsys, "predict", "--checkpoint", checkpoint, str(path), "--n", "200",
                                    "--device", "cpu", "--noise", "sound", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["noise"] == SOUND_LINE
    # a 16-bit image is read at full precision, off the 1/255 grid
    deep = tmp_path / "deep.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 7 % 65536).astype(np.uint16)).save(deep)
    assert_one_line_error_in_process(
        run_in_process(capsys, "predict", "--checkpoint", checkpoint, str(deep), "--n", "100", "--device", "cpu",
                       "--noise", "sound"), "off the 1/255 grid")
    # sound is the default: the same refusal without --noise, and it names the opt-out, which predicts it
    assert_one_line_error_in_process(
        run_in_process(capsys, "predict", "--checkpoint", checkpoint, str(deep), "--n", "100", "--device", "cpu"),
        "off the 1/255 grid", "--noise float")
    code, out, err = run_in_process(capsys, "predict", "--checkpoint", checkpoint, str(deep), "--n", "100",
                                    "--device", "cpu", "--noise", "float", "--json")
    assert code == 0 and json.loads(out)[0]["noise"].startswith("float"), err
    assert_one_line_error_in_process(
        run_in_process(capsys, "predict", "--checkpoint", checkpoint, str(path), "--noise", "discrete"), "--noise")
