"""A new user's path: their own csv folder of images and their own model file, each friction point as a test.

The images are real PNG/JPEG files drawn here (coloured shapes; the labels are the shapes drawn), the model
files are real Python files in temporary folders, and the command line runs as a user runs it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error, run
from PIL import Image, ImageDraw
from torch import nn

from multiguard.data import DATASETS, DatasetInfo, dataset_names, default_splits, describe, get_dataset
from multiguard.data.csvfolder import load_csv
from multiguard.models import create_model, looks_like_probabilities

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


def test_describe_opens_every_image(tmp_path):
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

    proc = run("datasets", "describe", "--dataset", "csv", "--data-root", str(root))
    assert "test images: 2 unreadable:" in proc.stdout
    assert f"{root / 'images' / 'test' / '0001.png'}: file not found" in proc.stdout
    assert str(root / "images" / "test" / "0002.png") in proc.stdout
    assert "train images: read 6 of 6; sizes 24x24 (6)" in proc.stdout
    assert "L grayscale [1 channel] (1)" in proc.stdout
    assert "model input: image size 24 (the most common size, 24x24" in proc.stdout
    data = json.loads(run("datasets", "describe", "--dataset", "csv", "--data-root", str(root), "--split", "test",
                          "--json").stdout)
    assert len(data["unreadable_images"]) == 2 and data["images_checked"] == 4


def test_a_dataset_is_added_in_one_place(tmp_path, monkeypatch):
    root = write_shapes_folder(tmp_path / "shapes", {"fit": 3, "check": 2})

    def load_toy(root_, split, image_size, seed, **options):
        return load_csv(root_, split=split, image_size=image_size)

    info = DatasetInfo("toyshapes", "test shapes: root/classes.txt + root/{fit,check}.csv", "fit", "check", 16,
                       True, (), load_toy)
    monkeypatch.setitem(DATASETS, "toyshapes", info)
    assert default_splits("toyshapes") == ("fit", "check")
    assert dataset_names().endswith(", csv or toyshapes")
    ds = get_dataset("toyshapes", root=root)  # default split and image size from the entry
    assert ds.split == "fit" and ds.image_size == 16 and len(ds) == 3
    assert dataset_names("and").startswith("multidigits, voc2007, coco2014, nuswide, csv and")


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
    assert "outputs on a batch lie in [0, 1]" in looks_like_probabilities(inside, inside(batch))
    # control: the same network without the sigmoid returns logits, some of them outside [0, 1]
    plain = create_model(f"{factory_file}:tiny_cnn", num_classes=4, image_size=16).eval()
    plain.net.load_state_dict(inside.net.body.state_dict())
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
