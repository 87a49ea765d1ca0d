"""Bad days, round four (issue 33): answers that must not mislead. Each test runs the command as a user does
and reads the message or the field."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import run
from PIL import Image

from multiguard.data.voc import VOC_CLASSES


def _not_checkpoints(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    files = {"png": folder / "photo.png", "truncated": folder / "model.pt", "npz": folder / "counts.npz",
             "pickle": folder / "state.pkl", "empty": folder / "empty.pt"}
    Image.new("RGB", (8, 8)).save(files["png"])
    torch.save({"multiguard_checkpoint": 1, "weights": torch.zeros(1000)}, folder / "whole.pt")
    files["truncated"].write_bytes((folder / "whole.pt").read_bytes()[:300])
    np.savez(files["npz"], a=np.zeros(3))
    files["pickle"].write_bytes(pickle.dumps({"a": [1, 2]}))
    files["empty"].write_bytes(b"")
    torch.save({"x": collections.OrderedDict(a=1), "y": Path(".")}, folder / "objects.pt")
    files["objects"] = folder / "objects.pt"
    return files


@pytest.mark.parametrize(("kind", "said"), [
    ("png", "it is a PNG image"), ("truncated", "truncated or damaged"), ("npz", "NumPy .npz archive"),
    ("pickle", "plain pickle"), ("empty", "the file is empty"),
    ("objects", "Python objects other than tensors"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is_without_torchs_advice(tmp_path, kind, said):
    path = _not_checkpoints(tmp_path / "files")[kind]
    proc = run("certify", "--checkpoint", str(path), "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"multiguard: error: checkpoint: {path} is not a MultiGuard")
    assert said in lines[0], lines[0]
    assert "weights_only" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_verify_names_every_missing_voc_label_file_in_one_run(tmp_path):
    main = tmp_path / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (tmp_path / "VOCdevkit" / "VOC2007" / "JPEGImages").mkdir()
    for name in VOC_CLASSES[:12]:  # 8 of 20 class files of each split missing
        for split in ("trainval", "test"):
            (main / f"{name}_{split}.txt").write_text("000001 1\n")
    proc = run("datasets", "verify", "voc2007", "--root", str(tmp_path), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for split in ("trainval", "test"):
        assert f"split '{split}' not found" in out
    assert out.count("8 of 20 missing") == 2
    for name in VOC_CLASSES[12:18]:
        assert f"{name}_test.txt" in out and f"{name}_trainval.txt" in out
    assert "and 2 more" in out


def _image_of(path: Path, width: int, height: int) -> Path:
    rng = np.random.default_rng(width * 1000 + height)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _side(checkpoint: Path) -> int:
    from multiguard.models.checkpoints import load_checkpoint

    return int(load_checkpoint(checkpoint)[1]["image_size"])


def _predict(checkpoint: Path, *args: str, check: bool = True):
    return run("predict", "--checkpoint", str(checkpoint), "--n", "60", "--n0", "10", "--k", "2", "--device", "cpu",
               *args, check=check)


def test_predict_says_the_file_size_and_the_size_certified_and_that_radii_are_in_the_latter(tiny_model_checkpoint,
                                                                                            tmp_path):
    import json

    side = _side(tiny_model_checkpoint)
    odd = _image_of(tmp_path / "wide.png", 50, 20)
    fitting = _image_of(tmp_path / "square.png", side, side)
    text = _predict(tiny_model_checkpoint, str(odd), str(fitting)).stdout
    assert f"wide.png (50x20 file stretched to {side}x{side}: radii in the {side}x{side} image's pixels" in text
    assert "square.png: " in text  # a file of the model's size needs no note
    assert f"of the {side}x{side} image certified" in text
    out = json.loads(_predict(tiny_model_checkpoint, str(odd), str(fitting), "--json", "--resize", "pad").stdout)
    assert out[0]["file_size"] == [50, 20] and out[0]["certified_size"] == [side, side]
    assert out[0]["resize"] == "pad" and f"{side}x{side}" in out[0]["radius_units"]
    assert out[1]["file_size"] == [side, side] and out[1]["resize"] is None
    padded = _predict(tiny_model_checkpoint, str(odd), "--resize", "pad").stdout
    assert "50x20 file scaled and padded to" in padded


def test_predict_resize_refuse_names_the_file_and_both_sizes(tiny_model_checkpoint, tmp_path):
    side = _side(tiny_model_checkpoint)
    odd = _image_of(tmp_path / "tall.png", 20, 50)
    proc = _predict(tiny_model_checkpoint, str(odd), "--resize", "refuse", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"resize: {odd} is 20x50 pixels, the model takes {side}x{side}" in lines[0]
    fitting = _image_of(tmp_path / "square.png", side, side)
    assert _predict(tiny_model_checkpoint, str(fitting), "--resize", "refuse").returncode == 0  # control


def test_pad_keeps_the_aspect_ratio_with_black_borders(tmp_path):
    from multiguard.data import load_image

    path = tmp_path / "white.png"
    Image.new("RGB", (40, 20), (255, 255, 255)).save(path)
    padded = load_image(path, 20, resize="pad")
    assert padded.shape == (3, 20, 20)
    assert float(padded[:, 5:15, :].min()) == 1.0  # the image, scaled to 20x10, in the middle rows
    assert float(padded[:, :5, :].max()) == 0.0 and float(padded[:, 15:, :].max()) == 0.0  # black bands
    assert float(load_image(path, 20).min()) == 1.0  # stretch fills the square


def test_the_cli_resize_choices_are_the_librarys():
    from multiguard.cli.options import RESIZE_CHOICES as CLI_CHOICES
    from multiguard.data._common import DEFAULT_RESIZE, RESIZE_CHOICES

    assert CLI_CHOICES == RESIZE_CHOICES and DEFAULT_RESIZE == "stretch"


def test_the_api_flags_trivial_radii_and_metrics_say_how_much_is_trivial():
    from multiguard import MultiGuard

    torch.manual_seed(0)
    guard = MultiGuard(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)), num_classes=3, sigma=0.5)
    x = torch.rand(4, 3, 2, 2)
    prediction = guard.predict(x, k=2, n0=20, n=60)
    # 2 of 3 classes: any top-2 keeps at least 1 of the 2 predicted labels, so e = 1 is trivial (its radius inf)
    assert prediction.trivial_size.tolist() == [1, 1, 1, 1]
    assert prediction.trivial.tolist() == [[True, False]] * 4
    assert np.isinf(prediction.radii[:, 0]).all()
    labels = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0], [0, 1, 1]], dtype=bool)
    certificate = guard.certify(x, labels, n=60, alpha=0.001, k=2)
    assert certificate.trivial_size.tolist() == [2, 2, 0, 1]
    assert certificate.trivial.tolist() == [[True, True], [True, True], [False, False], [True, False]]
    metrics = certificate.metrics(np.array([0.0, 10.0]))
    assert metrics.num_trivial == 3
    # at R = 10 nothing but the counting part remains: recall (2/3 + 2/3 + 0 + 1/2) / 4 of it trivial
    np.testing.assert_allclose(metrics.trivial_recall, [(2 / 3 + 2 / 3 + 0 + 1 / 2) / 4] * 2)
    np.testing.assert_allclose(metrics.recall[1], metrics.trivial_recall[1])
    np.testing.assert_allclose(metrics.trivial_precision, [(1 + 1 + 0 + 0.5) / 4] * 2)


def test_an_objective_option_of_the_wrong_kind_is_named(tmp_path):
    proc = run("train", "--dataset", "multidigits", "--objective", "consistency", "--objective-option", "copies=abc",
               "--epochs", "1", "--out", str(tmp_path / "m.pt"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("multiguard: error: objective_options: consistency's copies must be a whole number "
                    "(--objective-option copies=VALUE), got 'abc'")
    assert "invalid literal" not in proc.stderr and not (tmp_path / "m.pt").exists()


def test_a_corrupt_mirror_is_not_called_a_network_problem(tmp_path):
    import json

    from data_server import file_entry, http_server, voc_tar

    name = "VOCtest_06-Nov-2007.tar"
    data = voc_tar("test")
    with http_server() as (base, served):
        served.files["/a.tar"] = data[:-1] + bytes([data[-1] ^ 1])
        served.files["/b.tar"] = data[:-1] + bytes([data[-1] ^ 2])
        manifest = tmp_path / "m.json"
        manifest.write_text(json.dumps({"datasets": {"voc2007": {"files": [file_entry(
            name, data, [f"{base}/a.tar", f"{base}/b.tar"], "tar",
            ["VOCdevkit/VOC2007/ImageSets/Main/test.txt"])]}}}))
        proc = run("datasets", "download", "voc2007", "--root", str(tmp_path / "voc"), "--manifest", str(manifest),
                   check=False)
    assert proc.returncode == 1
    advice = proc.stderr.strip().splitlines()[-1]
    assert advice.startswith("multiguard: error: what to do: every URL answered, with bytes that are not the file")
    assert "not the network" in advice and "check the network" not in proc.stderr


@pytest.mark.parametrize("value", ["0", "1"])
def test_a_threshold_that_keeps_every_label_always_on_or_off_is_refused(tiny_model_checkpoint, tmp_path, value):
    proc = run("certify", "--checkpoint", str(tiny_model_checkpoint), "--threshold", value, "--num-inputs", "2",
               "--num-samples", "50", "--device", "cpu", "--out", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    state = "on" if value == "0" else "off"
    assert len(lines) == 1 and lines[0].startswith(f"multiguard: error: threshold: {value} keeps every label always "
                                                   f"{state}"), lines
    assert "strictly between 0 and 1" in lines[0]
    assert not (tmp_path / "run").exists()
    image = _image_of(tmp_path / "x.png", _side(tiny_model_checkpoint), _side(tiny_model_checkpoint))
    proc = _predict(tiny_model_checkpoint, str(image), "--threshold", value, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"threshold: {value} keeps every label always {state}" in proc.stderr
    assert _predict(tiny_model_checkpoint, str(image), "--threshold", "0.5").returncode == 0  # control


def test_a_sigma_far_from_the_training_sigma_is_said_in_one_line(tiny_model_checkpoint, tmp_path):
    image = _image_of(tmp_path / "x.png", _side(tiny_model_checkpoint), _side(tiny_model_checkpoint))
    far = _predict(tiny_model_checkpoint, str(image), "--sigma", "0.12")
    warnings = [line for line in far.stderr.splitlines() if "training sigma" in line]
    assert warnings == ["warning: sigma 0.12 is 0.24x the checkpoint's training sigma 0.5: the certificate holds at "
                        "that sigma, but the model never saw such noise (expect small radii; leave --sigma out to use "
                        "the training sigma)"]
    for near in (["--sigma", "0.6"], []):  # within a factor 1.5, or the training sigma itself: nothing said
        assert "training sigma" not in _predict(tiny_model_checkpoint, str(image), *near).stderr
    proc = run("certify", "--checkpoint", str(tiny_model_checkpoint), "--sigma", "1.0", "--num-inputs", "2",
               "--num-samples", "50", "--device", "cpu", "--out", str(tmp_path / "run"))
    said = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "training sigma" in line]
    assert len(said) == 1 and said[0].startswith("warning: sigma 1 is 2x the checkpoint's training sigma 0.5")


def _section(summary: str, start: str) -> str:
    return summary[summary.index(start):]


def test_a_report_explains_only_what_it_holds(tiny_model_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    run("certify", "--checkpoint", str(tiny_model_checkpoint), "--threshold", "0.5", "--num-inputs", "4",
        "--num-samples", "60", "--device", "cpu", "--quiet", "--out", str(run_dir))
    per_label = run("report", str(run_dir), "--methods", "threshold", "--out", str(tmp_path / "r1")).stdout
    same = next(line for line in per_label.splitlines() if line.startswith("Same for every row"))
    assert "q = 0.5" in same and "k = " not in same and "k' = " not in same, same
    reading = _section(per_label, "## Reading this report")
    assert "top-k" not in reading and "**k**" not in reading and "e / k" not in reading, reading
    assert "**precision**: certified precision@R of the per-label prediction" in reading
    assert "**q**: a label is predicted when its score passes its threshold" in reading
    assert "top-k" not in (tmp_path / "r1" / "summary.md").read_text()

    top_k = run("report", str(run_dir), "--methods", "multiguard", "--k", "2", "--out", str(tmp_path / "r2")).stdout
    same = next(line for line in top_k.splitlines() if line.startswith("Same for every row"))
    assert "k = 2" in same and "k' = 1" in same and "q = " not in same, same
    assert "None" not in top_k and "**q**" not in top_k
    assert "**precision**: certified top-k precision@R: e / k" in _section(top_k, "## Reading this report")

    both = run("report", str(run_dir), "--methods", "multiguard", "threshold", "--out", str(tmp_path / "r3")).stdout
    assert "None" not in both and "**q**: per-label rows (thresholded)" in both and "**k**" in both  # control


def test_verify_counts_every_missing_and_undecodable_image_and_names_the_first_in_full(tmp_path):
    import json

    (tmp_path / "images").mkdir()
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    rows = ["path,labels"]
    for i in range(31):  # 3 good, 3 not decodable, 25 missing
        path = tmp_path / "images" / f"img{i:02d}.png"
        if i < 3:
            Image.new("RGB", (8, 8)).save(path)
        elif i < 6:
            path.write_bytes(b"not a picture")
        rows.append(f"images/img{i:02d}.png,cat")
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    proc = run("datasets", "verify", "csv", "--root", str(tmp_path), "--split", "train", check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert "  train: 31 images; 28 problem(s): 25 missing images, 3 corrupt (not decodable) images" in lines
    for i in range(6, 26):  # the first 20 missing, each in full
        assert f"    train: missing image: {tmp_path / 'images' / f'img{i:02d}.png'}" in lines
    assert str(tmp_path / "images" / "img26.png") not in proc.stdout
    assert "    ... and 5 more missing images (datasets verify --json lists every one)" in lines
    for i in range(3, 6):
        assert any(line.startswith(f"    train: corrupt image: {tmp_path / 'images' / f'img{i:02d}.png'}: ")
                   for line in lines)
    assert sum(str(tmp_path / "images" / "img07.png") in line for line in lines) == 1  # listed once, not twice
    found = json.loads(run("datasets", "verify", "csv", "--root", str(tmp_path), "--split", "train", "--json",
                           check=False).stdout)
    assert len(found["splits"][0]["missing"]) == 25 and len(found["splits"][0]["corrupt"]) == 3


def test_compare_strict_fails_on_runs_of_other_sigma_or_thresholds_and_lists_the_thresholds(tiny_model_checkpoint,
                                                                                           tmp_path):
    reports = {}
    for name, args in {"a": ["--threshold", "0.5"], "b": ["--threshold", "0.4"],
                       "c": ["--threshold", "0.5", "--sigma", "0.6"]}.items():
        run("certify", "--checkpoint", str(tiny_model_checkpoint), *args, "--num-inputs", "3", "--num-samples", "40",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / f"run_{name}"))
        run("report", str(tmp_path / f"run_{name}"), "--methods", "threshold", "--quiet", "--out",
            str(tmp_path / name))
        reports[name] = str(tmp_path / name)
    loose = run("report", "--compare", reports["a"], reports["b"])
    assert "The runs differ in: thresholds." in loose.stdout and "0.4 (probability)" in loose.stdout
    strict = run("report", "--compare", reports["a"], reports["b"], "--strict", check=False)
    assert strict.returncode == 1 and "## Runs" in strict.stdout  # the table first, then why it failed
    assert strict.stderr.strip().splitlines() == [
        "multiguard: error: compare --strict: the runs differ in thresholds: their numbers are not of the same "
        "experiment (compare runs of the same data, noise and thresholds, or leave out --strict)"]
    strict = run("report", "--compare", reports["a"], reports["c"], "--strict", check=False)
    assert strict.returncode == 1 and "the runs differ in σ:" in strict.stderr
    assert run("report", "--compare", reports["a"], reports["a"] + "/results.json", "--strict").returncode == 0


@pytest.mark.parametrize("kind", ["png", "truncated", "npz"])
def test_predict_and_attack_name_a_file_that_is_not_a_checkpoint_in_one_line(tmp_path, kind):
    path = _not_checkpoints(tmp_path / "files")[kind]
    image = _image_of(tmp_path / "x.png", 8, 8)
    for args in (["predict", "--checkpoint", str(path), str(image)],
                 ["attack", "--checkpoint", str(path), "--out", str(tmp_path / "attack")]):
        proc = run(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"multiguard: error: checkpoint: {path} is not a MultiGuard "
                                                       "checkpoint: "), lines
        assert "weights_only" not in proc.stderr + proc.stdout and "torch" not in lines[0]
        assert "Traceback" not in proc.stderr and not (tmp_path / "attack").exists()


def _options_of_group(help_text: str, title: str) -> set[str]:
    block = help_text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
    return {line.split()[0].rstrip(",") for line in block.splitlines() if line.startswith("  --")}


@pytest.mark.parametrize("command", ["certify", "predict", "attack"])
def test_threads_is_an_option_of_the_device_group_and_a_bad_count_is_named(tiny_model_checkpoint, tmp_path,
                                                                           command):
    assert "--threads" in _options_of_group(run(command, "--help").stdout, "device and mode")
    args = {"certify": ["--out", str(tmp_path / "run")], "attack": ["--out", str(tmp_path / "attack")],
            "predict": [str(_image_of(tmp_path / "x.png", 8, 8))]}[command]
    proc = run(command, "--checkpoint", str(tiny_model_checkpoint), "--threads", "0", "--device", "cpu", *args,
               check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["multiguard: error: threads must be an integer >= 1, got 0"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "attack").exists()


def test_predict_threads_sets_torchs_cpu_threads_and_says_so(tiny_model_checkpoint, tmp_path):
    image = _image_of(tmp_path / "x.png", _side(tiny_model_checkpoint), _side(tiny_model_checkpoint))
    assert "CPU threads: 2 (--threads)" in _predict(tiny_model_checkpoint, str(image), "--threads", "2").stdout
    assert "CPU threads" not in _predict(tiny_model_checkpoint, str(image)).stdout  # torch's own setting: nothing


def test_multiguard_certify_defaults_alpha_to_predicts():
    from multiguard import MultiGuard

    torch.manual_seed(0)
    guard = MultiGuard(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)), num_classes=3, sigma=0.5)
    x, labels = torch.rand(3, 3, 2, 2), np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=bool)
    assert guard.certify(x, labels, n=200, k=2).alpha == guard.predict(x, k=2, n=200).alpha == 0.001
    default = guard.certify(x, labels, n=200, k=2).radii
    np.testing.assert_array_equal(default, guard.certify(x, labels, n=200, alpha=0.001, k=2).radii)
    assert not np.array_equal(default, guard.certify(x, labels, n=200, alpha=0.2, k=2).radii)  # alpha matters
    with pytest.raises(ValueError, match="^k must be an integer, got None$"):
        guard.certify(x, labels, n=200)
