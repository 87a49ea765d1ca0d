"""Bad days, round four, probed again (issue 33) with other cases than its items': each test runs the command as a
user does (own files in tmp_path, the tiny checkpoint) and reads the message or the field."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, command, env, run, tiny_checkpoint
from PIL import Image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


def _sixteen_bit_png(path: Path) -> Path:
    values = np.random.default_rng(0).integers(0, 65536, size=(32, 32), dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    return path


def test_predict_names_the_16_bit_file_that_sound_noise_refuses_and_the_option_that_fixes_it(tmp_path, checkpoint):
    eight = tmp_path / "eight.png"
    Image.new("L", (32, 32), 128).save(eight)
    deep = _sixteen_bit_png(tmp_path / "deep.png")
    proc = run("predict", "--checkpoint", str(checkpoint), "--n", "50", "--device", "cpu", str(eight), str(deep),
               check=False)
    assert_one_line_error(proc, f"image {deep}", "not 8-bit", "--noise float")
    assert "x:" not in proc.stderr and "(255 * x).round()" not in proc.stderr  # the Python API's advice
    fine = run("predict", "--checkpoint", str(checkpoint), "--n", "50", "--device", "cpu", "--noise", "float",
               "--json", str(deep))
    assert '"noise": "float' in fine.stdout


def test_serve_names_the_16_bit_upload_and_a_wrong_token_for_what_it_is(tmp_path, checkpoint):
    from servetools import Server

    deep = _sixteen_bit_png(tmp_path / "deep.png")
    server = Server(checkpoint, "--n", "50", "--token", "s3cret")
    upload = [("scan.png", deep.read_bytes())]
    try:
        status, answer, _ = server.predict(upload, headers={"Authorization": "Bearer s3cret"})
        refusals = [server.predict(upload, headers=headers)[:2] for headers in
                    ({}, {"Authorization": "s3cret"}, {"Authorization": "Bearer wrong"})]
    finally:
        server.stop()
    assert status == 400, answer
    assert answer["error"].startswith("image scan.png: its pixels are not 8-bit"), answer
    assert "start it with --noise float" in answer["error"] and "upload" not in answer["error"]
    assert [code for code, _ in refusals] == [401, 401, 401]
    said = [body["error"] for _, body in refusals]
    assert said[0] == "unauthorized: send the header 'Authorization: Bearer TOKEN'"
    assert said[1] == "unauthorized: the header must read 'Authorization: Bearer TOKEN'"
    assert said[2].startswith("unauthorized: the token sent in") and "not this server's" in said[2]
    assert "s3cret" not in said[2]


@pytest.mark.parametrize(("option", "value", "said"), [
    ("--radii", "-1,0.5", "--radii must be finite and >= 0, got '-1,0.5'"),
    ("--radii", "0.5,,1", "--radii must be numbers separated by commas, got '0.5,,1' (an empty entry)"),
    ("--radii", "", "--radii must be at least one radius"),
    ("--summary-radii", "0.5,abc", "--summary-radii must be START:STOP:STEP"),
    ("--summary-radii", "-0.25,1", "--summary-radii must be finite and >= 0"),
])
def test_a_wrong_radius_list_is_named_by_its_option_in_report(tmp_path, option, value, said):
    proc = run("report", str(tmp_path / "run"), "--out", str(tmp_path / "report"), option, value, check=False)
    assert_one_line_error(proc, said)
    assert "expected one argument" not in proc.stderr


def test_attack_refuses_a_negative_radius_list_before_loading_the_model(tmp_path, checkpoint):
    proc = run("attack", "--checkpoint", str(checkpoint), "--radii", "-0.5,1", "--out", str(tmp_path / "a"),
               check=False)
    assert_one_line_error(proc, "--radii must be finite and >= 0, got '-0.5,1'")
    assert "sampling mode" not in proc.stdout and not (tmp_path / "a").exists()


def test_a_radius_list_with_spaces_after_its_commas_is_still_a_list(tmp_path):
    missing = tmp_path / "none"
    proc = run("report", str(missing), "--out", str(tmp_path / "r"), "--radii", "0.5, 1", check=False)
    assert_one_line_error(proc, f"run: {missing} does not exist")  # the grid passed; the missing run is what fails


@pytest.mark.parametrize("cmd", ["predict", "attack"])
def test_q_without_a_threshold_is_refused_not_silently_ignored(tmp_path, checkpoint, cmd):
    image = tmp_path / "x.png"
    Image.new("L", (32, 32), 0).save(image)
    extra = [str(image)] if cmd == "predict" else ["--out", str(tmp_path / "a")]
    proc = run(cmd, "--checkpoint", str(checkpoint), "--q", "0.3", "--device", "cpu", *extra, check=False)
    assert_one_line_error(proc, "q: --q", "without --threshold")


def test_a_threshold_file_with_a_constant_label_is_refused_naming_the_label(tmp_path, checkpoint):
    names = torch.load(checkpoint, weights_only=True)["meta"]["class_names"]
    image = tmp_path / "x.png"
    Image.new("L", (32, 32), 0).save(image)
    for value, state in (("0", "always on"), ("1", "always off")):
        file = tmp_path / f"t{value}.txt"
        file.write_text("".join(f"{name} {value if i == 2 else 0.5}\n" for i, name in enumerate(names)))
        proc = run("predict", "--checkpoint", str(checkpoint), "--threshold", str(file), "--device", "cpu",
                   str(image), check=False)
        assert_one_line_error(proc, f"threshold file {file}", f"label '{names[2]}' has threshold {value}", state)


def _edited(checkpoint: Path, path: Path, edit) -> Path:
    data = torch.load(checkpoint, weights_only=True)
    edit(data)
    torch.save(data, path)
    return path


@pytest.mark.parametrize(("name", "edit", "said"), [
    ("nosigma", lambda d: d["meta"].pop("sigma"), "is damaged (no 'sigma' in it)"),
    ("textsigma", lambda d: d["meta"].update(sigma="abc"), "its 'sigma' is 'abc', not a number >= 0"),
    ("classes", lambda d: d["meta"].update(num_classes=d["meta"]["num_classes"] + 2), "of another shape, e.g. "),
    ("dropped", lambda d: d["state_dict"].pop(next(iter(d["state_dict"]))), "tensor(s) of the model missing, e.g. "),
])
def test_an_edited_checkpoint_is_named_with_the_field_or_tensor_that_does_not_fit(tmp_path, checkpoint, name, edit,
                                                                                  said):
    path = _edited(checkpoint, tmp_path / f"{name}.pt", edit)
    proc = run("certify", "--checkpoint", str(path), "--out", str(tmp_path / "run"), "--device", "cpu", check=False)
    assert_one_line_error(proc, f"checkpoint: {path}", said)
    assert "KeyError" not in proc.stderr and "could not convert" not in proc.stderr
    assert "Error(s) in loading state_dict" not in proc.stderr


def test_verify_of_own_data_does_not_advise_a_download_that_does_not_exist(tmp_path):
    root = tmp_path / "shapes"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    Image.new("RGB", (8, 8)).save(root / "images" / "one.png")
    for split in ("train", "test"):
        (root / f"{split}.csv").write_text("path,labels\nimages/one.png,a\nimages/gone.png,b\n")
    proc = run("datasets", "verify", "csv", "--root", str(root), check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "datasets download" not in last and "nothing to download" in last, last


def test_compare_alone_refuses_an_out_it_would_not_write(tmp_path):
    out = tmp_path / "comparison"
    proc = run("report", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out),
               check=False)
    assert_one_line_error(proc, "out: --compare alone prints its table and writes no files")
    assert not out.exists()


def test_ctrl_c_in_certify_says_what_is_kept_and_how_to_continue(tmp_path, checkpoint):
    out = tmp_path / "run"
    args = ["certify", "--checkpoint", str(checkpoint), "--n", "200000", "--num-inputs", "4", "--chunk-size", "1",
            "--device", "cpu", "--out", str(out)]
    proc = subprocess.Popen([*command(), *args], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "metadata.json").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (f"multiguard: interrupted; {out} keeps what was finished: run the same command with --resume "
                         "to continue"), err
    assert "Traceback" not in err
    assert not [name for name in os.listdir(out) if ".tmp" in name or name.startswith(".")]


@pytest.fixture(scope="module")
def odd_csv_model(tmp_path_factory) -> tuple[Path, Path]:
    """Own csv data (classes a, b) of files of several sizes, and a small_cnn trained on it for one epoch at 32x32:
    ``(data root, checkpoint)``, made once for the tests that need a model of own data."""
    root = tmp_path_factory.mktemp("odd")
    (root / "images").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    for split in ("train", "test"):
        rows = ["path,labels"]
        for i, size in enumerate([(32, 32), (20, 50), (20, 50), (64, 40)]):
            Image.new("RGB", size, (40 * i, 0, 0)).save(root / "images" / f"{split}{i}.png")
            rows.append(f"images/{split}{i}.png,{'ab'[i % 2]}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    model = root.parent / f"{root.name}-model.pt"
    run("train", "--dataset", "csv", "--data-root", str(root), "--image-size", "32", "--epochs", "1", "--quiet",
        "--device", "cpu", "--out", str(model))
    return root, model


def test_certify_and_attack_on_a_16_bit_dataset_name_its_file_under_sound_noise(tmp_path, odd_csv_model):
    root = tmp_path / "deep"  # the same classes and layout as the model's own data, in 16-bit files
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    for split in ("train", "test"):
        rows = ["path,labels"]
        for i in range(4):
            _sixteen_bit_png(root / "images" / f"{split}{i}.png")
            rows.append(f"images/{split}{i}.png,{'ab'[i % 2]}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    model = odd_csv_model[1]
    said = ("is not 8-bit (off the 1/255 grid: a 16-bit or float image)", "--noise float")
    proc = run("certify", "--checkpoint", str(model), "--data-root", str(root), "--n", "100", "--num-inputs", "0",
               "--device", "cpu", "--quiet", "--out", str(tmp_path / "run"), check=False)
    assert_one_line_error(proc, f"dataset: image {root / 'images' / 'test'}", *said)
    assert "x: off the" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before the RUN_DIR is made
    proc = run("attack", "--checkpoint", str(model), "--data-root", str(root), "--n", "20", "--k", "1", "--steps",
               "1", "--samples", "2", "--radii", "0.5", "--num-inputs", "2", "--device", "cpu", "--quiet", "--out",
               str(tmp_path / "a"), check=False)
    assert_one_line_error(proc, f"dataset: image {root / 'images' / 'test'}", *said)


def test_report_of_a_file_says_it_is_a_file_and_where_a_results_json_goes(tmp_path, checkpoint):
    proc = run("report", str(checkpoint), "--out", str(tmp_path / "r"), check=False)
    assert_one_line_error(proc, f"run: {checkpoint} is a file, not a RUN_DIR")
    results = tmp_path / "results.json"
    results.write_text("{}")
    proc = run("report", str(results), "--out", str(tmp_path / "r"), check=False)
    assert_one_line_error(proc, "is a file, not a RUN_DIR", "compared with --compare")
    assert not (tmp_path / "r").exists()


def test_certificate_metrics_names_a_radius_that_is_not_a_number(checkpoint):
    import multiguard

    model, meta = multiguard.load_checkpoint(checkpoint)
    smoothed = multiguard.smoothed_from_checkpoint(model, meta)
    x = torch.zeros(2, meta["in_channels"], meta["image_size"], meta["image_size"])
    labels = np.zeros((2, meta["num_classes"]), dtype=bool)
    labels[:, 0] = True
    certificate = smoothed.certify(x, labels, k=1, n=50)
    with pytest.raises(ValueError, match=r"^radius must be a number or a 1-D array of numbers, got 'abc'$"):
        certificate.metrics("abc")
    assert float(certificate.metrics(0.0).recall) >= 0.0


def test_train_names_threads_as_its_option_is_named(tmp_path):
    proc = run("train", "--threads", "0", "--epochs", "1", "--out", str(tmp_path / "m.pt"), check=False)
    assert_one_line_error(proc, "threads must be an integer >= 1, got 0")
    assert "num_threads" not in proc.stderr and not (tmp_path / "m.pt").exists()


def test_report_refuses_q_where_no_threshold_curve_is_computed(tmp_path_factory, tmp_path):
    from clitools import reference_run

    reference = reference_run(tmp_path_factory)  # certified without thresholds
    out = tmp_path / "report"
    proc = run("report", str(reference), "--q", "0.3", "--out", str(out), check=False)
    assert_one_line_error(proc, "q: --q is the cut of the threshold curves", "no run here was certified with")
    proc = run("report", str(reference), "--methods", "multiguard", "--q", "0.3", "--out", str(out), check=False)
    assert_one_line_error(proc, "--methods leaves them out")
    assert not out.exists()


def test_certify_and_attack_say_when_the_datasets_files_are_stretched_to_the_models_size(tmp_path, odd_csv_model):
    model = odd_csv_model[1]
    said = "3 of the 4 inputs' files are not 32x32 (e.g. 20x50): each is stretched to 32x32, as in training"
    proc = run("certify", "--checkpoint", str(model), "--n", "100", "--num-inputs", "0", "--device", "cpu",
               "--out", str(tmp_path / "run"))
    assert f"certify: {said}; radii are l2 norms in the pixels of the 32x32 image, not the file's" in proc.stdout
    proc = run("attack", "--checkpoint", str(model), "--n", "20", "--k", "1", "--steps", "1", "--samples", "2",
               "--radii", "0.5", "--num-inputs", "0", "--device", "cpu", "--out", str(tmp_path / "a"))
    assert f"attack: {said}" in proc.stdout


def test_predict_json_says_the_sigma_and_alpha_its_radii_hold_at_and_the_training_sigma(tmp_path, checkpoint):
    import json

    image = tmp_path / "x.png"
    Image.new("L", (32, 32), 0).save(image)
    trained = torch.load(checkpoint, weights_only=True)["meta"]["sigma"]
    proc = run("predict", "--checkpoint", str(checkpoint), "--n", "50", "--device", "cpu", "--sigma", "1.5",
               "--alpha", "0.01", "--json", str(image))
    answer = json.loads(proc.stdout)[0]
    assert (answer["sigma"], answer["alpha"], answer["training_sigma"]) == (1.5, 0.01, trained)
    assert "training sigma" in proc.stderr  # the one-line warning, beside the fields
