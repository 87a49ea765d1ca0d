"""A new user's path: their own csv folder of images and their own model file, each friction point as a test.

The images are real PNG/JPEG files drawn here (coloured shapes; the labels are the shapes drawn), the model
files are real Python files in temporary folders, and the command line runs as a user runs it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, env, run, run_in_process
from PIL import Image, ImageDraw
from torch import nn

from multiguard.data import DATASETS, DatasetInfo, dataset_names, default_splits, describe, get_dataset
from multiguard.data.csvfolder import load_csv
from multiguard.models.factory import create_model, looks_like_probabilities

SHAPES = ["circle", "square", "triangle", "cross"]
COLOURS = {"circle": (230, 60, 40), "square": (40, 160, 230), "triangle": (250, 220, 40), "cross": (60, 200, 90)}


def draw_shapes(path: Path, shapes: list[str], size: tuple[int, int], rng: np.random.Generator) -> None:
    """An image of ``size`` (width, height) with each named shape in its colour at a random place."""
    width, height = size
    img = Image.new("RGB", size, (20, 20, 20))
    pen = ImageDraw.Draw(img)
    side = max(4, min(width, height) // 3)
    for shape in shapes:
        x = int(rng.integers(0, max(1, width - side)))
        y = int(rng.integers(0, max(1, height - side)))
        box = (x, y, x + side, y + side)
        colour = COLOURS[shape]
        if shape == "circle":
            pen.ellipse(box, fill=colour)
        elif shape == "square":
            pen.rectangle(box, fill=colour)
        elif shape == "triangle":
            pen.polygon([(x + side // 2, y), (x, y + side), (x + side, y + side)], fill=colour)
        else:
            pen.line((x, y, x + side, y + side), fill=colour, width=3)
            pen.line((x + side, y, x, y + side), fill=colour, width=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)


def write_shapes_folder(root: Path, splits: dict[str, int], size: tuple[int, int] = (32, 32), seed: int = 0,
                        bom: bool = False) -> Path:
    """A csv-layout folder: classes.txt, one <split>.csv per split, images/<split>/<i>.png|jpg (every 4th JPEG)."""
    rng = np.random.default_rng(seed)
    encoding = "utf-8-sig" if bom else "utf-8"
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(SHAPES) + "\n", encoding=encoding)
    for split, count in splits.items():
        lines = ["path,labels"]
        for i in range(count):
            shapes = [s for s in SHAPES if rng.random() < 0.45]
            rel = f"images/{split}/{i:04d}.{'jpg' if i % 4 == 3 else 'png'}"
            draw_shapes(root / rel, shapes, size, rng)
            lines.append(f"{rel},{'|'.join(shapes)}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding=encoding)
    return root


FACTORIES = '''
import torch
import torch.nn as nn


def tiny_cnn(num_classes, in_channels=3):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
    )


def ignores_num_classes(num_classes):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000))


def other_name(n_classes):
    return tiny_cnn(n_classes)


def returns_dict(num_classes):
    return {"model": tiny_cnn(num_classes)}


def needs_depth(num_classes, depth):
    return tiny_cnn(num_classes)


def ends_in_sigmoid(num_classes):
    return nn.Sequential(tiny_cnn(num_classes), nn.Sigmoid())


class SigmoidInForward(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = tiny_cnn(num_classes)

    def forward(self, x):
        return torch.sigmoid(self.body(x))


def sigmoid_in_forward(num_classes):
    return SigmoidInForward(num_classes)
'''


@pytest.fixture
def factory_file(tmp_path):
    """A model file ``<tmp>/project/<unique name>.py`` (unique: modules are cached per process) and its name."""
    name = f"user_models_{abs(hash(tmp_path)) % 10**8}"
    project = tmp_path / "project"
    project.mkdir()
    path = project / f"{name}.py"
    path.write_text(FACTORIES)
    yield path
    sys.modules.pop(name, None)


# ---------------------------------------------------------------- data


def test_csv_exported_by_excel_with_a_byte_order_mark(tmp_path):
    root = write_shapes_folder(tmp_path / "shapes", {"train": 4}, bom=True)
    assert (root / "train.csv").read_bytes().startswith(b"\xef\xbb\xbfpath,labels")
    ds = get_dataset("csv", root=root, split="train")
    assert ds.class_names == SHAPES  # the first class is 'circle', not '\ufeffcircle'
    assert len(ds) == 4 and ds.labels.shape == (4, 4)


def test_csv_image_size_is_the_most_common_size_of_all_splits(tmp_path):
    root = write_shapes_folder(tmp_path / "shapes", {"train": 5, "test": 3}, size=(40, 30))
    draw_shapes(root / "images" / "train" / "0000.png", ["circle"], (20, 20), np.random.default_rng(1))
    train = get_dataset("csv", root=root, split="train")
    test = get_dataset("csv", root=root, split="test")
    assert train.image_size == test.image_size == 40  # the larger side of 40x30 (7 of 8 images)
    assert "40x30" in train.image_size_note and "7 of the 8" in train.image_size_note
    assert "--image-size" in train.image_size_note
    assert train[0][0].shape == (3, 40, 40)
    assert get_dataset("csv", root=root, split="train", image_size=24).image_size == 24


def test_csv_image_size_of_photos_is_capped(tmp_path):
    root = write_shapes_folder(tmp_path / "photos", {"train": 2}, size=(320, 240))
    ds = load_csv(root, split="train")
    assert ds.image_size == 224 and "320x240" in ds.image_size_note and "224" in ds.image_size_note


@pytest.mark.slow
def test_describe_opens_every_image(tmp_path, capsys):
    root = write_shapes_folder(tmp_path / "shapes", {"train": 6, "test": 4}, size=(24, 24))
    Image.new("L", (24, 24), 128).save(root / "images" / "train" / "0001.png")  # a grayscale image
    (root / "images" / "test" / "0001.png").unlink()  # deleted
    (root / "images" / "test" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # corrupt
    train = describe(get_dataset("csv", root=root, split="train"))
    assert train["images_checked"] == 6 and train["unreadable_images"] == []
    assert train["image_sizes"] == {"24x24": 6} and train["image_modes"] == {"RGB": 5, "L": 1}
    test = describe(get_dataset("csv", root=root, split="test"))
    bad = {Path(item["path"]).name: item["error"] for item in test["unreadable_images"]}
    assert set(bad) == {"0001.png", "0002.png"} and bad["0001.png"] == "file not found"

    proc = run("datasets", "describe", "--dataset", "csv", "--data-root", str(root), check=False)
    assert_one_line_error(proc, "2 image files cannot be read (listed above)")
    assert "test images: 2 unreadable:" in proc.stdout
    assert f"{root / 'images' / 'test' / '0001.png'}: file not found" in proc.stdout
    assert str(root / "images" / "test" / "0002.png") in proc.stdout
    assert "train images: read 6 of 6; sizes 24x24 (6)" in proc.stdout
    assert "L grayscale [1 channel] (1)" in proc.stdout
    assert "model input: image size 24 (the most common size, 24x24" in proc.stdout
    code, out, _ = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root),
                                  "--split", "test", "--json")
    data = json.loads(out)
    assert code == 2 and len(data["unreadable_images"]) == 2 and data["images_checked"] == 4
    code, out, _ = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root),
                                  "--split", "train")
    assert code == 0 and "images: read 6 of 6" in out  # control: every image readable, exit code 0
    code, out, _ = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root),
                                  "--split", "test", "--labels-only")
    assert code == 0 and "unreadable" not in out and "images without labels" in out  # labels only: no image opened


def test_a_dataset_is_added_in_one_place(tmp_path, register_for_test):
    root = write_shapes_folder(tmp_path / "shapes", {"fit": 3, "check": 2})

    def load_toy(root_, split, image_size, seed, **options):
        return load_csv(root_, split=split, image_size=image_size)

    info = DatasetInfo("toyshapes", "test shapes: root/classes.txt + root/{fit,check}.csv", "fit", "check", 16,
                       True, (), load_toy)
    register_for_test(DATASETS, "toyshapes", info)
    assert default_splits("toyshapes") == ("fit", "check")
    assert dataset_names().endswith(", csv or toyshapes")
    ds = get_dataset("toyshapes", root=root)  # default split and image size from the entry
    assert ds.split == "fit" and ds.image_size == 16 and len(ds) == 3
    assert dataset_names("and").startswith("multidigits, voc2007, coco2014, nuswide, csv and")
    from multiguard.data import coco, csvfolder, multidigits, nuswide, voc  # the families' own defaults agree

    for module, name in ((multidigits, "multidigits"), (voc, "voc2007"), (coco, "coco2014"), (nuswide, "nuswide"),
                         (csvfolder, "csv")):
        entry = DATASETS[name]
        assert (entry.train_split, entry.test_split, entry.image_size) == (
            module.TRAIN_SPLIT, module.TEST_SPLIT, module.DEFAULT_IMAGE_SIZE), name


def test_moved_dataset_names_data_root(tmp_path):
    with pytest.raises(ValueError, match=r"dataset folder for csv not found: expected .*moved\? .*--data-root"):
        get_dataset("csv", root=tmp_path / "gone")


# ---------------------------------------------------------------- models


def test_factory_file_from_another_folder_is_recorded_absolute(tmp_path, factory_file, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = create_model(f"../project/{factory_file.name}:tiny_cnn", num_classes=4, image_size=16)
    assert model.arch == f"{factory_file.resolve()}:tiny_cnn"
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 4)
    monkeypatch.chdir(tmp_path)
    again = create_model(model.arch, num_classes=4, image_size=16)  # what a checkpoint rebuilds, from elsewhere
    again.load_state_dict(model.state_dict())
    factory_file.unlink()
    with pytest.raises(ValueError, match=rf"arch: model file not found: {factory_file.resolve()} .*must exist"):
        create_model(model.arch, num_classes=4, image_size=16)


def test_module_factory_found_in_the_current_folder(tmp_path, factory_file, monkeypatch):
    monkeypatch.chdir(factory_file.parent)
    model = create_model(f"{factory_file.stem}:tiny_cnn", num_classes=3, image_size=8)
    assert model.arch == f"{factory_file.resolve()}:tiny_cnn"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_models' .*--arch path/to/no_such_models\.py"):
        create_model("no_such_models:tiny_cnn", num_classes=3, image_size=8)


@pytest.mark.slow
def test_module_factory_from_the_current_folder_on_the_command_line(tmp_path, factory_file):
    """The console script does not put the current folder on sys.path: a model module there is found anyway."""
    root = write_shapes_folder(tmp_path / "shapes", {"train": 8, "test": 4}, size=(16, 16))
    out = tmp_path / "model.pt"
    run("train", "--dataset", "csv", "--data-root", str(root), "--arch", f"{factory_file.stem}:tiny_cnn",
        "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(out), cwd=factory_file.parent)
    assert out.is_file()


@pytest.mark.parametrize(("factory", "needles"), [
    ("ignores_num_classes", ["returns shape (2, 1000)", "logits of shape (B, num_classes) = (2, 4)",
                             "num_classes to the last layer"]),
    ("other_name", ["must accept num_classes (it takes n_classes)", "def other_name(num_classes, ...)",
                    "logits of shape (B, num_classes)"]),
    ("returns_dict", ["returned a dict, not a torch.nn.Module", "logits of shape (B, num_classes)"]),
    ("needs_depth", ["requires depth", "give it a default"]),
])
def test_factory_mistakes_are_one_line_naming_factory_and_fix(factory_file, factory, needles):
    with pytest.raises(ValueError) as info:
        create_model(f"{factory_file}:{factory}", num_classes=4, image_size=16)
    message = str(info.value)
    assert "\n" not in message and message.startswith("arch: ") and factory in message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.slow
def test_factory_mistake_on_the_command_line_is_one_line(tmp_path, factory_file):
    root = write_shapes_folder(tmp_path / "shapes", {"train": 4, "test": 2}, size=(16, 16))
    proc = run("train", "--dataset", "csv", "--data-root", str(root), "--arch", f"{factory_file}:other_name",
               "--epochs", "1", "--quiet", "--out", str(tmp_path / "m.pt"), check=False)
    assert_one_line_error(proc, "must accept num_classes", "other_name")


def test_probability_outputs_are_detected(factory_file):
    ends = create_model(f"{factory_file}:ends_in_sigmoid", num_classes=4, image_size=16)
    assert looks_like_probabilities(ends) == "its last layer is Sigmoid"
    inside = create_model(f"{factory_file}:sigmoid_in_forward", num_classes=4, image_size=16).eval()
    batch = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert looks_like_probabilities(inside) is None  # its last layer is a Linear: only its outputs tell
    with torch.no_grad():  # as after training: absent labels score near 0 (the sigmoid keeps them above)
        inside.net.body[-1].bias.sub_(4.0)
    assert "outputs on a batch lie in [0, 1]" in looks_like_probabilities(inside, inside(batch))
    # control: the same network without the sigmoid returns logits, some of them outside [0, 1]
    plain = create_model(f"{factory_file}:tiny_cnn", num_classes=4, image_size=16).eval()
    plain.net.load_state_dict(inside.net.body.state_dict())
    with torch.no_grad():  # logits of a trained model: absent labels score below 0 (a fresh one may not)
        plain.net[-1].bias.sub_(2.0)
    assert looks_like_probabilities(plain, plain(batch)) is None


# ---------------------------------------------------------------- pretrained weights


def test_pickled_whole_model_says_how_to_save_a_state_dict(tmp_path):
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "whole.pt")
    with pytest.raises(ValueError) as info:
        create_model("small_cnn", 3, 16, pretrained=tmp_path / "whole.pt")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--pretrained {tmp_path / 'whole.pt'}: ")
    assert "not a state_dict" in message and "torch.save(model.state_dict(), 'weights.pth')" in message
    with pytest.raises(ValueError, match=r"^--pretrained nowhere\.pth: no such file; give 'imagenet'"):
        create_model("small_cnn", 3, 16, pretrained="nowhere.pth")
    with pytest.raises(ValueError, match=r"^--pretrained imagenet: only timm:<name> and torchvision:<name>"):
        create_model("small_cnn", 3, 16, pretrained="imagenet")


@pytest.mark.slow
def test_pretrained_imagenet_offline_names_the_local_file_alternative(tmp_path, monkeypatch):
    """Where the weights cannot be downloaded (here: the hub and the proxy point at a closed local port)."""
    root = write_shapes_folder(tmp_path / "shapes", {"train": 4, "test": 2}, size=(16, 16))
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    common = ["train", "--dataset", "csv", "--data-root", str(root), "--epochs", "1", "--quiet",
              "--pretrained", "imagenet", "--out", str(tmp_path / "m.pt")]
    proc = run(*common, "--arch", "timm:resnet18", check=False)
    assert_one_line_error(proc, "--pretrained imagenet: cannot download the ImageNet weights of timm:resnet18",
                          "offline, use a local state_dict file", "timm.create_model('resnet18', pretrained=True)",
                          "--pretrained resnet18.pth")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # torch.hub downloads through it: refused
    proc = run(*common, "--arch", "torchvision:resnet18", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # torch.hub prints a 'Downloading: ...' line first
    assert last.startswith("multiguard: error: --pretrained imagenet: cannot download the ImageNet weights of "
                           "torchvision:resnet18")
    assert "get_model('resnet18', weights='DEFAULT')" in last and "--pretrained resnet18.pth" in last
    assert not os.path.exists(tmp_path / "m.pt")


# ---------------------------------------------------------------- the README section, verbatim

OWN_DATA = Path(__file__).resolve().parents[2] / "docs" / "own-data.md"  # the README links it as the walkthrough


def readme_section() -> str:
    """The docs page "Your own data and model" (docs/own-data.md), whole."""
    return OWN_DATA.read_text()


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def shell_env() -> dict[str, str]:
    """clitools' environment with this interpreter's folder (its `python` and `multiguard`) first on PATH."""
    out = env()
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    return out


@pytest.fixture(scope="module")
def readme_project(tmp_path_factory):
    """The section run as written in an empty folder: its files written from its code blocks, its shell block
    run with bash, then its Python block. Returns the folder and what the shell block and Python printed."""
    section = readme_section()
    project = tmp_path_factory.mktemp("readme") / "my-project"
    project.mkdir()
    scripts = []
    for block in code_blocks(section, "python"):
        first = block.splitlines()[0]
        named = re.match(r"# ([\w.-]+\.py)\b", first)
        if named:
            (project / named.group(1)).write_text(block)
        else:
            scripts.append(block)
    shell = code_blocks(section, "bash")
    assert len(shell) == 1 and len(scripts) == 1 and (project / "mymodels.py").is_file()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", shell[0]], cwd=project, env=shell_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    python = subprocess.run([sys.executable, "-c", scripts[0]], cwd=project, env=shell_env(), capture_output=True,
                            text=True, timeout=300)
    assert python.returncode == 0, python.stdout + python.stderr
    return project, proc.stdout, python.stdout


@pytest.mark.slow
def test_readme_section_runs_verbatim(readme_project):
    project, shell_out, python_out = readme_project
    assert sorted(p.name for p in (project / "shapes" / "images").iterdir())[:2] == ["test-000.png", "test-001.jpg"]
    example = code_blocks(readme_section(), "text")[0]  # the section's csv example is what the script wrote
    assert (project / "shapes" / "train.csv").read_text().startswith(example)
    # describe opened every image; train said which input size and normalisation it chose
    assert "train images: read 400 of 400; sizes 32x32 (400)" in shell_out
    assert "csv: image size 32 (the most common size, 32x32, of 440 of the 440 images read" in shell_out
    assert "normalisation inside the model: mean [0, 0, 0], std [1, 1, 1] (none: the default" in shell_out
    # certify: the default --num-inputs 500 is capped to the 40 test images, and the hint fits 5 classes
    assert "--num-inputs 500 is more than the 40 inputs of split test: using all 40" in shell_out
    assert re.search(r"next: multiguard report shapes-run --k 2 --k-prime 1 .*about the \d\.\d labels per input, at "
                     r"most half the 5 classes", shell_out)
    summary = (project / "shapes-report" / "summary.md").read_text()
    assert "## Reading this report" in summary and "**MultiGuard, first terms only**:" in summary
    assert "trivial: by counting alone" not in summary  # k = 2 of c = 5 with at most 3 labels: nothing trivial
    with open(project / "shapes-report" / "curves.csv", newline="") as handle:
        radii = sorted({float(row["radius"]) for row in csv.DictReader(handle)})
    assert radii[-1] == pytest.approx(1.0) and radii[1] == pytest.approx(0.0125)  # 0 to 4 sigma, sigma/20 steps
    assert "shapes/images/test-000.png: " in shell_out and "at least 1 of them" in shell_out
    assert "predicted: [" in python_out and "at least 1 of them: " in python_out
    assert "certified top-2 recall at R = 0, 0.25, 0.5: [" in python_out
    recall = [float(v) for v in re.findall(r"[\d.]+", python_out.rsplit("[", 1)[1])]
    assert len(recall) == 3 and recall[0] > 0.5 and recall[0] >= recall[1] >= recall[2]  # the model learnt


@pytest.mark.slow
def test_checkpoint_from_another_folder_and_a_moved_dataset(readme_project, tmp_path, capsys, monkeypatch):
    project, _, _ = readme_project
    checkpoint = project / "shapes-model.pt"
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True)["meta"]
    project = project.resolve()
    assert meta["arch"] == f"{project / 'mymodels.py'}:tiny_cnn" and meta["data_root"] == str(project / "shapes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = project / "shapes" / "images" / "test-001.jpg"
    out = run("predict", "--checkpoint", str(checkpoint), str(image), "--k", "2", "--n", "200", cwd=elsewhere)
    assert f"{image}: " in out.stdout
    monkeypatch.chdir(elsewhere)  # the variants run in this process, from the other folder
    code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), "--num-inputs", "2", "--n", "50",
                                  "--quiet", "--out", "run")
    assert code == 0, err
    moved = project / "shapes-moved"
    (project / "shapes").rename(moved)
    try:
        proc = run("certify", "--checkpoint", str(checkpoint), "--num-inputs", "2", "--n", "50", "--out", "run2",
                   cwd=elsewhere, check=False)
        assert_one_line_error(proc, f"dataset folder for csv not found: expected {project / 'shapes'}", "--data-root")
        code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), "--data-root", str(moved),
                                      "--num-inputs", "2", "--n", "50", "--quiet", "--out", "run2")
        assert code == 0, err
    finally:
        moved.rename(project / "shapes")


@pytest.mark.slow
def test_trivial_certificates_are_marked(readme_project, capsys, tmp_path):
    project, _, _ = readme_project
    image = str(project / "shapes" / "images" / "test-000.png")
    checkpoint = str(project / "shapes-model.pt")
    code, out, _ = run_in_process(capsys, "predict", "--checkpoint", checkpoint, image, "--k", "4", "--n", "200",
                                  "--json")
    assert code == 0
    assert json.loads(out)[0]["trivial"] == [True, True, True, False]  # any 4 of 5 classes keep 3 of these 4
    code, out, _ = run_in_process(capsys, "predict", "--checkpoint", checkpoint, image, "--k", "4", "--n", "200")
    assert out.count("trivial, not a guarantee about the model: any 4 of the 5 classes keep at least 3") == 3
    code, out, _ = run_in_process(capsys, "predict", "--checkpoint", checkpoint, image, "--k", "2", "--n", "200",
                                  "--json")
    assert json.loads(out)[0]["trivial"] == [False, False]  # control: 2 of 5 keep nothing by counting
    code, out, _ = run_in_process(capsys, "report", str(project / "shapes-run"), "--k", "2", "4", "--methods",
                                  "multiguard", "--out", str(tmp_path / "rep"))
    summary = (tmp_path / "rep" / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| trivial: by counting alone | 4 |")]
    assert len(rows) == 3 and "Keep k well below c." in summary
    labels = np.load(project / "shapes-run" / "counts.npz")["labels"]
    expected = np.mean(np.maximum(0, labels.sum(1) - 1) / labels.sum(1))  # recall part: (|L| - (5 - 4)) / |L|
    assert f"{100 * expected:.1f}" in rows[1].split("|")[3]
    assert not any(line.startswith("| trivial: by counting alone | 2 |") for line in summary.splitlines())


@pytest.mark.slow
def test_attack_in_the_summary(readme_project, tmp_path, capsys):
    project, _, _ = readme_project
    attack = run("attack", "--checkpoint", str(project / "shapes-model.pt"), "--radii", "0.1,0.3", "--k", "2",
                 "--num-inputs", "4", "--steps", "2", "--samples", "4", "--n", "100", "--out", str(tmp_path / "att"))
    assert "attack: apgd-targeted, 4 inputs x 2 radii" in attack.stdout  # the default attack, named
    assert "attack: R = 0.3: mean |L ∩ top-k|" in attack.stdout
    code, _, err = run_in_process(capsys, "report", str(project / "shapes-run"), "--k", "2", "--attack",
                                  str(tmp_path / "att"), "--quiet", "--out", str(tmp_path / "rep"))
    assert code == 0, err
    summary = (tmp_path / "rep" / "summary.md").read_text()
    section = summary[summary.index("## Under attack: att (k = 2, k' = 1, 4 inputs)"):]
    assert "| recall, empirical (attack) |" in section and "| recall, certified (MultiGuard, α = 0.001) |" in section
    assert re.search(r"\| inputs below their certificate \(count\) \| \d+ \| \d+ \|", section)
    assert "**attack**: 'empirical (attack)'" in summary


# ---------------------------------------------------------------- training, the command line, the Python API


def test_train_records_normalisation_paths_and_warns_on_probabilities(tmp_path, factory_file, monkeypatch):
    from multiguard.training.classifier import train

    write_shapes_folder(tmp_path / "shapes", {"train": 8, "test": 4}, size=(16, 16))
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    with pytest.warns(UserWarning, match=r"seems to output probabilities, not logits \(its last layer is Sigmoid\)"):
        _, meta = train("csv", data_root="shapes", arch=f"project/{factory_file.name}:ends_in_sigmoid", epochs=1,
                        mean=[0.5], std=[0.25], num_threads=1, progress=False, log=lines.append)
    assert meta["data_root"] == str((tmp_path / "shapes").resolve())
    assert meta["arch"] == f"{factory_file.resolve()}:ends_in_sigmoid"
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.25, 0.25, 0.25]
    assert "normalisation inside the model: mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25] (given" in lines[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # control: a model returning logits trains without the warning
        train("csv", data_root="shapes", arch=f"{factory_file}:tiny_cnn", epochs=1, progress=False)


def test_train_flags_on_the_command_line(tmp_path, factory_file, capsys):
    root = write_shapes_folder(tmp_path / "shapes", {"train": 8, "test": 4}, size=(16, 16))
    out = tmp_path / "m.pt"
    code, text, err = run_in_process(capsys, "train", "--dataset", "csv", "--data-root", str(root), "--arch",
                                     f"{factory_file}:tiny_cnn", "--epochs", "1", "--mean", "0.4", "0.5", "0.6",
                                     "--std", "0.2", "--threads", "1", "--out", str(out))
    assert code == 0, err
    assert "normalisation inside the model: mean [0.4, 0.5, 0.6], std [0.2, 0.2, 0.2] (given" in text
    meta = torch.load(out, map_location="cpu", weights_only=True)["meta"]
    assert meta["mean"] == pytest.approx([0.4, 0.5, 0.6]) and meta["std"] == pytest.approx([0.2] * 3)
    code, text, err = run_in_process(capsys, "train", "--dataset", "csv", "--data-root", str(root), "--arch",
                                     f"{factory_file}:ends_in_sigmoid", "--epochs", "1", "--quiet", "--out",
                                     str(tmp_path / "sigmoid.pt"))
    assert code == 0 and err.strip().splitlines() == [
        f"multiguard: warning: the model {factory_file}:ends_in_sigmoid seems to output probabilities, not logits "
        "(its last layer is Sigmoid); MultiGuard's losses apply the sigmoid themselves: return the scores before "
        "any sigmoid"]


def test_help_names_the_registered_datasets(capsys, register_for_test):
    info = DatasetInfo("toyshapes", "test shapes", "fit", "check", 16, True, (), lambda *a, **k: None)
    register_for_test(DATASETS, "toyshapes", info)
    code, out, _ = run_in_process(capsys, "train", "--help")
    assert code == 0 and "multidigits, voc2007, coco2014, nuswide, csv or toyshapes" in " ".join(out.split())
    code, out, _ = run_in_process(capsys, "report", "--help")
    text = " ".join(out.split())
    assert "recall@R = e/|L|" in text and "'trivial: by counting alone'" in text and "first terms only" in text


def test_python_api_refuses_uint8_and_takes_one_image_and_index_lists():
    from multiguard.sampling.smoothed import MultiGuard

    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=5, image_size=16).eval()
    smoothed = MultiGuard(model, num_classes=5, sigma=0.25)
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"x holds uint8 values; .*pass x.float\(\) / 255"):
        smoothed.predict((image * 255).to(torch.uint8), k=2, n0=20, n=50)
    with pytest.raises(ValueError, match=r"x has values up to 2\d\d.*pixels in \[0, 1\].*divide 0-255 images by 255"):
        smoothed.certify((image * 255)[None], [[0, 1]], n=50, alpha=0.01, k=2)
    one = smoothed.predict(image, k=2, n0=20, n=50)
    batch = smoothed.predict(image[None], k=2, n0=20, n=50)
    assert one.labels.shape == (1, 2)
    np.testing.assert_array_equal(one.labels, batch.labels)
    np.testing.assert_array_equal(one.radii, batch.radii)
    images = torch.stack([image, image.flip(-1)])
    by_index = smoothed.certify(images, [[0, 3], [2]], n=50, alpha=0.01, k=2)
    mask = np.zeros((2, 5), dtype=bool)
    mask[0, [0, 3]] = mask[1, 2] = True
    by_mask = smoothed.certify(images, mask, n=50, alpha=0.01, k=2)
    np.testing.assert_array_equal(by_index.labels, mask)
    np.testing.assert_array_equal(by_index.radii, by_mask.radii)
    single = smoothed.certify(image, [0, 3], n=50, alpha=0.01, k=2)  # one image, its label indices
    np.testing.assert_array_equal(single.radii, by_mask.radii[:1])
    with pytest.raises(ValueError, match=r"class indices in 0\.\.4, got 7"):
        smoothed.certify(images, [[0, 7], [2]], n=50, alpha=0.01, k=2)


@pytest.mark.slow
def test_pretrained_imagenet_found_in_timms_cache_loads_offline(tmp_path):
    """Weights timm downloaded once (here: a real state_dict placed in the Hugging Face cache layout) are used
    from the cache, with no network (the hub points at a closed local port)."""
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18")
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    torch.save(source.conv1.weight.detach(), tmp_path / "conv1.pt")
    script = (
        "import torch\n"
        "from multiguard.models.factory import create_model\n"
        "model = create_model('timm:resnet18', num_classes=3, image_size=32, pretrained='imagenet')\n"
        f"assert torch.equal(model.net.conv1.weight, torch.load({str(tmp_path / 'conv1.pt')!r}))\n"
        "assert model.net.fc.out_features == 3 and model.pretrained == 'imagenet'\n"
    )
    child_env = {**env(), "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
