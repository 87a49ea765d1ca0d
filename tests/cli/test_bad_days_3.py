"""Bad days, round three (issue 22): no silently wrong result.

One test per finding of the third round of bad-day probes, each with the probe's command (the command line
run as a user runs it, in-process where that is enough) or its Python equivalent, and a control where one
makes sense. Images are real files in real layouts written here (PNG, JPEG with EXIF, TIFF), models real
torch models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error_in_process, run_in_process
from PIL import Image

from multiguard.data import describe, get_dataset, load_image
from multiguard.data._common import MAX_IMAGE_PIXELS_ENV, ImageTooLargeError
from multiguard.data.voc import VOC_CLASSES

# ------------------------------------------------------------------------------------------ layouts


def write_csv_folder(root: Path, images: dict[str, Image.Image], classes: tuple[str, ...] = ("a", "b"),
                     splits: tuple[str, ...] = ("train", "test"), encoding: str = "utf-8") -> Path:
    """A csv-layout folder: classes.txt, <split>.csv listing every image (labels: the first class), the files."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        img.save(root / "images" / name)
    (root / "classes.txt").write_bytes(("\n".join(classes) + "\n").encode(encoding))
    for split in splits:
        rows = "".join(f"images/{name},{classes[0]}\n" for name in images)
        (root / f"{split}.csv").write_bytes(("path,labels\n" + rows).encode(encoding))
    return root


def write_voc(root: Path, marks: dict[str, list[str]], ids: tuple[str, ...] = ("000001", "000002")) -> Path:
    """A VOCdevkit layout with the given per-class marks (1, -1, 0) for the trainval split; others all -1."""
    base = root / "VOCdevkit" / "VOC2007"
    for folder in ("JPEGImages", "ImageSets/Main", "Annotations"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        Image.new("RGB", (8, 8), (90, 90, 90)).save(base / "JPEGImages" / f"{image_id}.jpg")
    for name in VOC_CLASSES:
        column = marks.get(name, ["-1"] * len(ids))
        (base / "ImageSets" / "Main" / f"{name}_trainval.txt").write_text(
            "".join(f"{image_id} {mark}\n" for image_id, mark in zip(ids, column, strict=True)))
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def describe_json(capsys, *args: str) -> dict:
    code, out, err = run_in_process(capsys, "datasets", "describe", *args, "--json")
    assert code == 0, (code, out, err)
    return json.loads(out)


# ------------------------------------------------------------------- 1: 16-bit and other Pillow modes


def test_16_bit_png_is_scaled_not_clipped_and_describe_says_so(tmp_path, capsys):
    # The probe: a 16-bit grayscale PNG (mode I;16) loaded as all-white.
    values = np.array([[1000, 30000], [45000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16"
    image = load_image(tmp_path / "gray16.png", 2)
    assert image.shape == (3, 2, 2) and image.dtype == torch.float32
    np.testing.assert_allclose(image[0].numpy(), values / 65535.0, rtol=1e-6)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])  # gray repeated over RGB
    assert load_image(tmp_path / "gray16.png", 2, channels=1).shape == (1, 2, 2)
    # Control: the same picture as 8 bits gives the same values to 8-bit precision.
    Image.fromarray((values // 257).astype(np.uint8)).save(tmp_path / "gray8.png")
    np.testing.assert_allclose(load_image(tmp_path / "gray8.png", 2)[0].numpy(), values / 65535.0, atol=1 / 255)
    # A 32-bit integer TIFF in [0, 65535] (Pillow mode I) and a float TIFF in [0, 1] (mode F).
    Image.fromarray(values.astype(np.int32)).save(tmp_path / "int32.tif")
    assert Image.open(tmp_path / "int32.tif").mode == "I"
    np.testing.assert_allclose(load_image(tmp_path / "int32.tif", 2)[0].numpy(), values / 65535.0, rtol=1e-6)
    Image.fromarray((values / 65535.0).astype(np.float32)).save(tmp_path / "float.tif")
    np.testing.assert_allclose(load_image(tmp_path / "float.tif", 2)[0].numpy(), values / 65535.0, rtol=1e-6)
    Image.fromarray(np.full((2, 2), 3.5, np.float32)).save(tmp_path / "outside.tif")
    with pytest.raises(ValueError, match="outside.tif: its float pixel values span"):
        load_image(tmp_path / "outside.tif", 2)
    # describe (--json here; the text table below) counts what loading does to the files.
    root = write_csv_folder(tmp_path / "data", {"x.png": Image.fromarray(values), "y.png": Image.new("RGB", (2, 2))})
    found = describe_json(capsys, "--dataset", "csv", "--data-root", str(root), "--split", "train")
    assert found["image_modes"] == {"I;16": 1, "RGB": 1}
    assert found["image_conversions"] == {"16-bit: values divided by 65535": 1}


def test_describe_text_warns_on_converted_modes(tmp_path, capsys):
    values = np.full((4, 4), 30000, np.uint16)
    root = write_csv_folder(tmp_path / "data", {"x.png": Image.fromarray(values),
                                                "y.png": Image.new("RGBA", (4, 4), (9, 9, 9, 100))})
    code, out, _ = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root),
                                  "--split", "train")
    assert code == 0
    assert "images: converted when loaded: 16-bit: values divided by 65535 (1), transparency composited on white (1)" \
        in out


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(tmp_path, mode):
    red = (220, 20, 20)
    rgba = Image.new("RGBA", (4, 1))
    rgba.putdata([(*red, 255), (*red, 0), (*red, 128), (*red, 255)])
    if mode == "RGBA":
        img = rgba
    elif mode == "LA":
        img = rgba.convert("LA")
    else:  # a palette image with a transparent entry (as GIFs and small PNGs are saved)
        img = Image.new("P", (4, 1))
        img.putpalette([*red, 0, 0, 0])
        img.putdata([0, 1, 0, 0])
        img.info["transparency"] = 1
    img.save(tmp_path / "x.png")
    loaded = Image.open(tmp_path / "x.png")
    assert loaded.mode == mode, loaded.mode
    image = load_image(tmp_path / "x.png", 4)  # the same size: the resize keeps each pixel
    opaque = image[:, 0, 0]
    hidden = image[:, 0, 1]
    np.testing.assert_allclose(hidden.numpy(), [1.0, 1.0, 1.0], atol=1 / 255)  # transparent: the white background
    assert float(opaque.sum()) < 2.0  # control: an opaque pixel keeps its colour
    if mode in ("RGBA", "LA"):
        half = image[:, 0, 2]
        np.testing.assert_allclose(half.numpy(), (opaque.numpy() + 1.0) / 2, atol=3 / 255)


def test_cmyk_and_ycbcr_are_converted_to_rgb(tmp_path):
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "white.jpg", quality=100)
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "red.tif")
    assert Image.open(tmp_path / "white.jpg").mode == "CMYK"
    np.testing.assert_allclose(load_image(tmp_path / "white.jpg", 2).numpy(), 1.0, atol=3 / 255)
    np.testing.assert_allclose(load_image(tmp_path / "red.tif", 2)[:, 0, 0].numpy(), [1.0, 0.0, 0.0], atol=1 / 255)


# --------------------------------------------------------------------------------- 6: EXIF orientation


def _phone_photo(path: Path, orientation: int | None) -> None:
    """A 20x10 landscape-stored JPEG whose left half is blue, right half red, with an EXIF orientation tag."""
    img = Image.new("RGB", (20, 10), (230, 0, 0))
    img.paste((0, 0, 230), (0, 0, 10, 10))
    exif = img.getexif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied(tmp_path, capsys):
    # Orientation 6: the camera was turned; viewers rotate the stored pixels 90 degrees clockwise, so the
    # left (blue) half of the stored picture is shown on top.
    _phone_photo(tmp_path / "turned.jpg", 6)
    image = load_image(tmp_path / "turned.jpg", 20)
    top, bottom = image[:, :10, :], image[:, 10:, :]
    assert top[2].mean() > 0.8 and top[0].mean() < 0.2, "the top half is the blue half"
    assert bottom[0].mean() > 0.8 and bottom[2].mean() < 0.2
    # Control: without the tag the stored picture is shown as stored (blue on the left).
    _phone_photo(tmp_path / "upright.jpg", None)
    image = load_image(tmp_path / "upright.jpg", 20)
    assert image[2, :, :10].mean() > 0.8 and image[0, :, :10].mean() < 0.2
    # describe counts the rotated photo among what loading changes
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    _phone_photo(root / "images" / "turned.jpg", 6)
    _phone_photo(root / "images" / "upright.jpg", 1)
    (root / "classes.txt").write_text("a\n")
    (root / "train.csv").write_text("path,labels\nimages/turned.jpg,a\nimages/upright.jpg,\n")
    found = describe_json(capsys, "--dataset", "csv", "--data-root", str(root), "--split", "train")
    assert found["image_conversions"] == {"rotated upright by its EXIF orientation": 1}


# ------------------------------------------------------------------------- 10: decompression bombs


def test_an_image_over_the_pixel_limit_is_a_named_one_line_error(tmp_path, monkeypatch, capsys):
    Image.new("RGB", (30, 20)).save(tmp_path / "big.png")
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "500")
    with pytest.raises(ImageTooLargeError) as caught:
        load_image(tmp_path / "big.png", 8)
    message = str(caught.value)
    assert "\n" not in message
    for needle in (str(tmp_path / "big.png"), "30x20 = 600 pixels", "limit of 500", f"{MAX_IMAGE_PIXELS_ENV}=600"):
        assert needle in message, (needle, message)
    # describe lists the file with the reason instead of stopping, and the other images are still checked
    root = write_csv_folder(tmp_path / "data", {"big.png": Image.new("RGB", (30, 20)),
                                                "small.png": Image.new("RGB", (10, 10))})
    code, out, err = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root),
                                    "--split", "train", "--image-size", "8")
    assert code == 2 and "1 image file cannot be read (listed above)" in err, (out, err)
    assert "read 1 of 2" in out
    assert "big.png: 30x20 = 600 pixels, over the limit of 500" in out and MAX_IMAGE_PIXELS_ENV in out
    # control: raising the limit as the message says reads it
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "600")
    assert load_image(tmp_path / "big.png", 8).shape == (3, 8, 8)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "none")
    assert load_image(tmp_path / "big.png", 8).shape == (3, 8, 8)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_IMAGE_PIXELS_ENV):
        load_image(tmp_path / "big.png", 8)


def test_a_real_decompression_bomb_is_listed_by_describe(tmp_path, capsys, monkeypatch):
    # The probe: a 14000 x 14000 PNG (a few kilobytes) over Pillow's own limit crashed describe with
    # "unexpected DecompressionBombError". Default limit here.
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)
    root = write_csv_folder(tmp_path / "data", {"good.png": Image.new("RGB", (10, 10))})
    Image.new("1", (14000, 14000)).save(root / "images" / "bomb.png")
    (root / "train.csv").write_text("path,labels\nimages/good.png,a\nimages/bomb.png,b\n")
    code, out, err = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root),
                                    "--split", "train", "--image-size", "8")
    assert code == 2 and "unexpected" not in err, (out, err)
    assert "bomb.png: 14000x14000 = 196,000,000 pixels, over the limit" in out
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        load_image(root / "images" / "bomb.png", 8)


# ------------------------------------------------------------------------------ csv: encoding, duplicates


def test_a_latin_1_csv_names_the_file_and_the_fix(tmp_path, capsys):
    root = write_csv_folder(tmp_path / "data", {"x.png": Image.new("RGB", (4, 4))}, classes=("café", "thé"),
                            encoding="latin-1")
    result = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root))
    assert_one_line_error_in_process(result, str(root / "classes.txt"), "not UTF-8", "iconv -f latin1 -t utf-8")
    (root / "classes.txt").write_text("café\nthé\n", encoding="utf-8")  # the class list fixed, the csv not yet
    result = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root))
    assert_one_line_error_in_process(result, str(root / "train.csv"), "not UTF-8")
    # control: the same folder written as UTF-8 reads
    root = write_csv_folder(tmp_path / "utf8", {"x.png": Image.new("RGB", (4, 4))}, classes=("café", "thé"))
    assert get_dataset("csv", root=root, split="train").class_names == ["café", "thé"]


def test_a_duplicate_class_is_refused_by_name(tmp_path, capsys):
    root = write_csv_folder(tmp_path / "data", {"x.png": Image.new("RGB", (4, 4))}, classes=("cat", "dog", "cat"))
    result = run_in_process(capsys, "datasets", "describe", "--dataset", "csv", "--data-root", str(root))
    assert_one_line_error_in_process(result, str(root / "classes.txt"), "'cat' twice", "lines 1 and 3")
    root = write_csv_folder(tmp_path / "ok", {"x.png": Image.new("RGB", (4, 4))}, classes=("cat", "dog"))
    assert get_dataset("csv", root=root, split="train").class_names == ["cat", "dog"]


# ----------------------------------------------------------------------------------- 5: boolean options


def test_boolean_dataset_options_are_strict(tmp_path, capsys):
    # image 1 has a cat, image 2 only a difficult one: 1 cat image by default, 2 with difficult_positive
    root = write_voc(tmp_path, {"cat": ["1", "0"]})

    def cats(*option: str) -> int:
        found = describe_json(capsys, "--dataset", "voc2007", "--data-root", str(root), "--split", "trainval",
                              "--labels-only", *option)
        return found["label_counts"]["cat"]

    assert cats() == 1
    for word in ("no", "false", "0", "No"):
        assert cats("--dataset-option", f"difficult_positive={word}") == 1, word
    for word in ("yes", "true", "1", "TRUE"):
        assert cats("--dataset-option", f"difficult_positive={word}") == 2, word
    for word in ("off", "maybe", "2", ""):
        result = run_in_process(capsys, "datasets", "describe", "--dataset", "voc2007", "--data-root", str(root),
                                "--labels-only", "--dataset-option", f"difficult_positive={word}")
        assert_one_line_error_in_process(result, "difficult_positive", repr(word) if word != "2" else "2")
    with pytest.raises(ValueError, match="difficult_positive"):
        get_dataset("voc2007", root=root, split="trainval", difficult_positive="off")


# ------------------------------------------------------------------------- VOC annotations, COCO left out


def test_voc_says_its_labels_come_from_imagesets_not_annotations(tmp_path, capsys):
    root = write_voc(tmp_path, {"cat": ["1", "-1"]})
    (root / "VOCdevkit/VOC2007/ImageSets/Main/dog_trainval.txt").unlink()
    result = run_in_process(capsys, "datasets", "describe", "--dataset", "voc2007", "--data-root", str(root),
                            "--labels-only")
    assert_one_line_error_in_process(result, "dog_trainval.txt", "Annotations/*.xml are not read")


def test_voc_in_datasets_list_says_where_labels_come_from(capsys):
    code, out, _ = run_in_process(capsys, "datasets", "list")
    line = next(line for line in out.splitlines() if line.startswith("voc2007"))
    assert "labels from ImageSets/Main" in line and "Annotations" in line
    walkthrough = (Path(__file__).resolve().parents[2] / "docs" / "gpu.md").read_text()
    assert "Annotations/*.xml" in walkthrough


def _coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images = [{"id": i, "file_name": f"img{i}.jpg"} for i in (1, 2, 3)]
    for image in images:
        Image.new("RGB", (8, 8)).save(root / "val2014" / image["file_name"])
    annotations = [{"id": 10, "image_id": 1, "category_id": 1}, {"id": 11, "image_id": 2, "category_id": 2}]
    categories = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_coco_describe_counts_images_without_annotations(tmp_path, capsys):
    root = _coco(tmp_path)
    found = describe_json(capsys, "--dataset", "coco2014", "--data-root", str(root), "--split", "val",
                          "--labels-only")
    assert found["images"] == 2
    assert found["images_left_out"]["count"] == 1 and "without any annotation" in found["images_left_out"]["why"]
    # control: a dataset that leaves nothing out says nothing
    assert describe(get_dataset("multidigits", split="test", size=4), check_images=False)["images_left_out"] is None


def test_coco_describe_text_says_how_many_images_are_left_out(tmp_path, capsys):
    root = _coco(tmp_path)
    code, out, _ = run_in_process(capsys, "datasets", "describe", "--dataset", "coco2014", "--data-root", str(root),
                                  "--split", "val", "--labels-only")
    assert code == 0
    assert "val images: 1 image left out: listed in the annotation file without any annotation" in out or \
        "images: 1 image left out: listed in the annotation file without any annotation" in out


# ================================================================ the run, the model and the command line

CLASSES = ("red", "green", "blue", "dark", "light", "stripe")
SMALL = ["--num-samples", "100", "--num-inputs", "4", "--chunk-size", "2", "--max-k-prime", "2", "--device", "cpu",
         "--quiet"]
FACTORY = """import torch.nn as nn


def net(num_classes, image_size=8, in_channels=3):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 16), nn.ReLU(),
                         nn.Linear(16, num_classes))
"""


def _write_colour_folder(root: Path, classes: tuple[str, ...] = CLASSES, rename: dict[str, str] | None = None) -> Path:
    """A csv folder of 8x8 PNGs: image i carries class j when bit j of i is set (real files, 16 a split)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rename = rename or {}
    (root / "classes.txt").write_text("\n".join(rename.get(c, c) for c in classes) + "\n")
    for split in ("train", "test"):
        rows = ["path,labels"]
        for i in range(16):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"{split}{i}.png")
            names = [rename.get(c, c) for j, c in enumerate(CLASSES) if (i >> (j % 4)) & 1]
            rows.append(f"images/{split}{i}.png,{'|'.join(names)}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def own_model(tmp_path_factory) -> dict[str, Path]:
    """A model from the user's own file, trained one epoch on a csv folder of 6 classes; and that folder."""
    from multiguard.cli import main

    folder = tmp_path_factory.mktemp("own")
    data = _write_colour_folder(folder / "data")
    factory = folder / "mynet.py"
    factory.write_text(FACTORY)
    checkpoint = folder / "model.pt"
    assert main(["train", "--dataset", "csv", "--data-root", str(data), "--arch", f"{factory}:net", "--sigma", "0.25",
                 "--epochs", "1", "--quiet", "--device", "cpu", "--out", str(checkpoint)]) == 0
    return {"data": data, "factory": factory, "checkpoint": checkpoint, "folder": folder}


def _own_copy(own_model: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the checkpoint with its own copy of the factory file (so a test may edit the file)."""
    import shutil

    factory = tmp_path / "mynet.py"
    shutil.copy(own_model["factory"], factory)
    checkpoint = tmp_path / "model.pt"
    payload = torch.load(own_model["checkpoint"], map_location="cpu", weights_only=False)
    payload["meta"]["arch"] = payload["meta"]["arch"].replace(str(own_model["factory"]), str(factory))
    torch.save(payload, checkpoint)
    return checkpoint, factory


# --------------------------------------------------------------------------- 2: the class list and order


def test_a_reordered_class_list_is_refused_naming_the_permutation(own_model, tmp_path, capsys):
    reordered = _write_colour_folder(tmp_path / "reordered", classes=CLASSES[::-1])
    out = tmp_path / "run"
    result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), "--data-root",
                            str(reordered), *SMALL, "--out", str(out))
    assert_one_line_error_in_process(result, "classes", "another order", "'stripe'", str(reordered / "classes.txt"))
    assert not out.exists()
    result = run_in_process(capsys, "attack", "--checkpoint", str(own_model["checkpoint"]), "--data-root",
                            str(reordered), "--radii", "0.25", "--num-inputs", "2", "--steps", "1", "--samples", "2",
                            "--n", "20", "--device", "cpu", "--quiet", "--out", str(tmp_path / "att"))
    assert_one_line_error_in_process(result, "another order")
    # control: the same classes in the same order (another copy of the folder) certifies
    same = _write_colour_folder(tmp_path / "same")
    code, out_text, err = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]),
                                         "--data-root", str(same), *SMALL, "--out", str(tmp_path / "ok"))
    assert code == 0, err


def test_a_renamed_class_is_refused_by_name(own_model, tmp_path, capsys):
    renamed = _write_colour_folder(tmp_path / "renamed", rename={"stripe": "striped"})
    result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), "--data-root",
                            str(renamed), *SMALL, "--out", str(tmp_path / "run"))
    assert_one_line_error_in_process(result, "'stripe'", "'striped'")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 3: the model file's content is identity


def test_a_changed_model_file_is_refused_on_resume_and_named_on_certify_and_predict(own_model, tmp_path, capsys):
    checkpoint, factory = _own_copy(own_model, tmp_path)
    out = tmp_path / "run"
    code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), *SMALL, "--out", str(out))
    assert code == 0, err
    # control: the unchanged file resumes (nothing to do) without a word about the file
    code, out_text, err = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), *SMALL, "--out",
                                         str(out), "--resume")
    assert code == 0 and str(factory) not in out_text + err
    # the same weights, another forward: the run's counts came from the old code
    factory.write_text(FACTORY.replace("nn.ReLU()", "nn.Tanh()"))
    code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), *SMALL, "--out", str(out),
                                  "--resume")
    warning, error = err.splitlines()  # the warning of the load, then the refusal
    assert code == 2 and warning.startswith("multiguard: warning: the model file") and "changed since" in warning
    assert error.startswith("multiguard: error: resume:") and "model_file_sha256" in error
    assert f"{factory} changed since the run was made" in error
    code, out_text, err = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), *SMALL, "--out",
                                         str(tmp_path / "fresh"))
    assert code == 0 and f"{factory}" in err and "changed since" in err, (out_text, err)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "x.png")
    code, out_text, err = run_in_process(capsys, "predict", "--checkpoint", str(checkpoint), "--n", "40", "--n0",
                                         "10", "--device", "cpu", str(tmp_path / "x.png"))
    assert code == 0 and f"{factory}" in err and "changed since" in err, (out_text, err)


def test_a_model_file_whose_layers_changed_is_not_called_a_damaged_checkpoint(own_model, tmp_path, capsys):
    checkpoint, factory = _own_copy(own_model, tmp_path)
    factory.write_text(FACTORY.replace("nn.Linear(16, num_classes)", "nn.Linear(16, 5), nn.Linear(5, num_classes)"))
    result = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), *SMALL, "--out", str(tmp_path / "r"))
    code, out, err = result
    assert_one_line_error_in_process(result, str(factory), "changed since")
    assert "damaged" not in err


# ---------------------------------------------------------------- 4 and 7: attack folders and report --attack


def _attack(capsys, checkpoint: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_in_process(capsys, "attack", "--checkpoint", str(checkpoint), "--radii", "0.25", "--num-inputs", "4",
                          "--steps", "1", "--samples", "2", "--n", "40", "--device", "cpu", "--quiet", "--out",
                          str(out), *extra)


def test_report_attack_refuses_an_attack_on_another_checkpoint(own_model, tmp_path, capsys):
    checkpoint, _ = _own_copy(own_model, tmp_path)
    run_dir = tmp_path / "run"
    assert run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), *SMALL, "--out", str(run_dir))[0] == 0
    other = tmp_path / "other.pt"
    from multiguard.cli import main

    assert main(["train", "--dataset", "csv", "--data-root", str(own_model["data"]), "--arch",
                 f"{own_model['factory']}:net", "--sigma", "0.25", "--epochs", "1", "--seed", "7", "--quiet",
                 "--device", "cpu", "--out", str(other)]) == 0
    capsys.readouterr()
    assert _attack(capsys, other, tmp_path / "att-other")[0] == 0
    result = run_in_process(capsys, "report", str(run_dir), "--attack", str(tmp_path / "att-other"), "--k", "1",
                            "--out", str(tmp_path / "rep"))
    assert_one_line_error_in_process(result, "attack", str(tmp_path / "att-other"), "checkpoint")
    assert not (tmp_path / "rep").exists()
    # control: an attack on the run's own checkpoint is overlaid, and its table says which inputs and n
    assert _attack(capsys, checkpoint, tmp_path / "att")[0] == 0
    code, out, err = run_in_process(capsys, "report", str(run_dir), "--attack", str(tmp_path / "att"), "--k", "3",
                                    "--out", str(tmp_path / "rep"))
    assert code == 0, err
    assert "The certified column: the attack's 4 inputs at n = 40, sampled by the attack" in out


def test_attack_refuses_to_replace_an_attack_without_overwrite(own_model, tmp_path, capsys):
    out = tmp_path / "att"
    assert _attack(capsys, own_model["checkpoint"], out)[0] == 0
    before = (out / "empirical.csv").read_bytes()
    result = run_in_process(capsys, "attack", "--checkpoint", str(own_model["checkpoint"]), "--radii", "0.5",
                            "--num-inputs", "4", "--steps", "1", "--samples", "2", "--n", "40", "--device", "cpu",
                            "--quiet", "--out", str(out))
    assert_one_line_error_in_process(result, str(out), "--overwrite")
    assert (out / "empirical.csv").read_bytes() == before
    code, _, err = run_in_process(capsys, "attack", "--checkpoint", str(own_model["checkpoint"]), "--radii", "0.5",
                                  "--num-inputs", "4", "--steps", "1", "--samples", "2", "--n", "40", "--device",
                                  "cpu", "--quiet", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert (out / "empirical.csv").read_bytes() != before


# ---------------------------------------------------------------------------- 8: settings before folders


def test_invalid_settings_create_no_folder_for_any_command(own_model, tmp_path, capsys):
    ck = str(own_model["checkpoint"])
    cases = {
        "certify": ["certify", "--checkpoint", ck, *SMALL, "--stop-at-radius", "0.25", "--k", "9"],
        "attack": ["attack", "--checkpoint", ck, "--radii", "0.25", "--k", "9", "--device", "cpu"],
        "train": ["train", "--dataset", "csv", "--data-root", str(own_model["data"]), "--arch", "small_cnn",
                  "--sigma", "0.25", "--lr", "-1", "--device", "cpu"],
        "train-denoiser": ["train-denoiser", "--dataset", "multidigits", "--sigma", "0.5", "--arch", "dncnn",
                           "--arch-option", "depth=0", "--device", "cpu"],
    }
    for name, args in cases.items():
        out = tmp_path / name / "inner" / ("model.pt" if name.startswith("train") else "out")
        result = run_in_process(capsys, *args, "--out", str(out))
        assert_one_line_error_in_process(result)
        assert not (tmp_path / name).exists(), name
    # the corrected certify command then runs, without --resume
    code, _, err = run_in_process(capsys, "certify", "--checkpoint", ck, *SMALL, "--stop-at-radius", "0.25", "--k",
                                  "3", "--out", str(tmp_path / "certify" / "inner" / "out"))
    assert code == 0, err


# ------------------------------------------------------------------------------------- 11: metadata

def test_metadata_without_sigma_is_repaired_by_resume_as_the_readme_promises(own_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--out",
                          str(out))[0] == 0
    meta = json.loads((out / "metadata.json").read_text())
    del meta["sigma"]
    (out / "metadata.json").write_text(json.dumps(meta))
    result = run_in_process(capsys, "report", str(out), "--out", str(tmp_path / "rep"))
    assert_one_line_error_in_process(result, "metadata.json", "sigma", "certify --resume")
    code, out_text, err = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL,
                                         "--out", str(out), "--resume")
    assert code == 0, err
    assert json.loads((out / "metadata.json").read_text())["sigma"] == 0.25
    assert run_in_process(capsys, "report", str(out), "--out", str(tmp_path / "rep"))[0] == 0


# ------------------------------------------------------------------------------------------- friction


@pytest.mark.parametrize(("value", "needles"), [("-0.5", ("sigma", "-0.5")), ("nan", ("sigma", "nan"))])
def test_a_bad_sigma_is_not_blamed_on_training_without_noise(own_model, tmp_path, capsys, value, needles):
    result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--sigma", value,
                            "--out", str(tmp_path / "r"))
    assert_one_line_error_in_process(result, *needles)
    assert "without noise" not in result[2]


def test_a_negative_seed_names_the_option(own_model, tmp_path, capsys):
    result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--seed", "-1",
                            "--out", str(tmp_path / "r"))
    assert_one_line_error_in_process(result, "seed", "-1")


def test_k_without_stop_at_radius_is_refused(own_model, tmp_path, capsys):
    result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--k", "2",
                            "--out", str(tmp_path / "r"))
    assert_one_line_error_in_process(result, "--k", "--stop-at-radius")
    assert not (tmp_path / "r").exists()


def test_a_bare_resume_lists_every_changed_setting_at_once(own_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--out",
                          str(out))[0] == 0
    changed = [a if a != "100" else "120" for a in SMALL]
    result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *changed, "--seed", "9",
                            "--out", str(out), "--resume")
    assert_one_line_error_in_process(result, "n: the run has 100", "seed: the run has 0")
    # a bare --resume takes every setting not given from the run (and says which)
    (out / "counts.npz").unlink()
    (out / "chunks" / "chunk-000001.npz").unlink()
    code, out_text, err = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), "--out",
                                         str(out), "--resume", "--device", "cpu")
    assert code == 0, err
    assert "resume: as the run was made (not given here): n = 100, " in out_text
    assert "num_inputs = 4, chunk_size = 2, max_k_prime = 2" in out_text


def test_resume_with_fewer_epochs_says_so(own_model, tmp_path, capsys):
    checkpoint, factory = _own_copy(own_model, tmp_path)
    train = ["train", "--dataset", "csv", "--data-root", str(own_model["data"]), "--arch", f"{factory}:net", "--sigma",
             "0.25", "--quiet", "--device", "cpu", "--out", str(checkpoint), "--resume"]
    assert run_in_process(capsys, *train, "--epochs", "2")[0] == 0  # control: more epochs train the missing one
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["meta"]["epoch"] == 2
    before = checkpoint.read_bytes()
    result = run_in_process(capsys, *train, "--epochs", "1")
    assert_one_line_error_in_process(result, "epochs", "2", "1")
    assert checkpoint.read_bytes() == before


def test_train_denoiser_checks_arch_options_before_any_work(tmp_path, capsys):
    import time

    started = time.perf_counter()
    result = run_in_process(capsys, "train-denoiser", "--dataset", "multidigits", "--sigma", "0.5", "--arch", "unet",
                            "--arch-option", "levels=10", "--device", "cpu", "--out", str(tmp_path / "d.pt"))
    assert_one_line_error_in_process(result, "arch-option", "levels")
    assert time.perf_counter() - started < 5.0  # refused before the data and the training (it took 23 s)
    result = run_in_process(capsys, "train-denoiser", "--dataset", "multidigits", "--sigma", "0.5", "--arch", "unet",
                            "--arch-option", "width=abc", "--device", "cpu", "--out", str(tmp_path / "d.pt"))
    assert_one_line_error_in_process(result, "arch-option", "width", "'abc'")
    assert "int()" not in result[2]


def test_a_path_component_over_255_characters_is_a_user_error(own_model, tmp_path, capsys):
    out = tmp_path / ("a" * 300)
    result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--out", str(out))
    assert_one_line_error_in_process(result, "out", "255")


def test_python_api_errors_name_the_shape_and_the_device():
    from multiguard import MultiGuard

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 4))
    guard = MultiGuard(model, num_classes=4, sigma=0.5, device="cpu")
    for x, needle in ((torch.rand(16, 16, 3), "(16, 16, 3)"), (torch.rand(1, 2, 3, 16, 16), "5"),
                      (torch.rand(2, 16, 16), "2 channels"), (torch.rand(4, 16, 16, 3), "permute(0, 3, 1, 2)")):
        with pytest.raises(ValueError) as caught:
            guard.predict(x, k=1, n0=10, n=20)
        assert needle in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    assert guard.predict(torch.rand(3, 16, 16), k=1, n0=10, n=20) is not None  # control
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda"):
            MultiGuard(model, num_classes=4, sigma=0.5, device="cuda")


def test_train_quiet_prints_nothing(tmp_path, capsys):
    code, out, err = run_in_process(capsys, "train", "--dataset", "multidigits", "--arch", "small_cnn", "--sigma",
                                    "0.5", "--epochs", "1", "--train-size", "32", "--test-size", "16", "--quiet",
                                    "--device", "cpu", "--out", str(tmp_path / "m.pt"))
    assert code == 0 and out == "" and err == "", (out, err)
    code, out, err = run_in_process(capsys, "certify", "--checkpoint", str(tmp_path / "m.pt"), "--num-samples",
                                    "50", "--num-inputs", "2", "--device", "cpu", "--quiet", "--out",
                                    str(tmp_path / "run"))
    assert code == 0 and out == "" and err == "", (out, err)
    code, out, err = run_in_process(capsys, "certify", "--checkpoint", str(tmp_path / "m.pt"), "--num-samples",
                                    "50", "--num-inputs", "2", "--device", "cpu", "--out", str(tmp_path / "run2"))
    assert "run complete" in out  # control: without --quiet it speaks


def test_a_full_stdout_is_blamed_on_stdout_not_on_out(own_model, tmp_path):
    import subprocess

    from clitools import command, env

    with open("/dev/full", "w") as full:
        proc = subprocess.run([*command(), "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL[:-1],
                               "--out", str(tmp_path / "run")], stdout=full, stderr=subprocess.PIPE, text=True,
                              env=env(), timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "stdout" in proc.stderr and "--out" not in proc.stderr, proc.stderr


def test_predict_refuses_a_batch_with_an_unreadable_image_before_sampling(own_model, tmp_path, capsys, monkeypatch):
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "good.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "huge.png")
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1000")
    result = run_in_process(capsys, "predict", "--checkpoint", str(own_model["checkpoint"]), "--n", "40", "--n0", "10",
                            "--device", "cpu", str(tmp_path / "good.png"), str(tmp_path / "huge.png"))
    assert_one_line_error_in_process(result, str(tmp_path / "huge.png"), MAX_IMAGE_PIXELS_ENV)
    assert "good.png" not in result[1]


def test_a_killed_reports_temporary_folder_is_removed_by_the_next_report(own_model, tmp_path, capsys):
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    assert run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--out",
                          str(run_dir))[0] == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    from multiguard.common.files import staging_folder_name

    left = tmp_path / staging_folder_name(tmp_path / "rep", dead_pid)
    left.mkdir()
    (left / "f1.png").write_bytes(b"x" * 1000)
    alive = tmp_path / staging_folder_name(tmp_path / "rep", os.getpid())  # control: a live report's folder stays
    alive.mkdir()
    assert run_in_process(capsys, "report", str(run_dir), "--out", str(tmp_path / "rep"))[0] == 0
    assert not left.exists() and alive.exists()


def test_two_processes_writing_one_run_dir_are_refused(own_model, tmp_path, capsys):
    from multiguard.runs.job import run_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()  # as the first certify made it
    with run_lock(run_dir, shard=(0, 1), rank=0):
        result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--out",
                                str(run_dir))
        assert_one_line_error_in_process(result, str(run_dir), "another process", str(os.getpid()))
    assert run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--out",
                          str(run_dir), "--resume")[0] == 0  # control: the lock is gone with its holder


def test_report_with_an_ascii_terminal_and_a_tex_like_run_name(own_model, tmp_path):
    import subprocess

    from clitools import command, env

    from multiguard.cli import main

    run_dir = tmp_path / "run"
    assert main(["certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--out", str(run_dir)]) == 0
    environment = dict(env(), PYTHONIOENCODING="ascii")
    proc = subprocess.run([*command(), "report", str(run_dir), "--names", "$x_{$", "--out", str(tmp_path / "rep")],
                          capture_output=True, text=True, env=environment, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rep" / "f1.png").stat().st_size > 1000
    assert "$x_{$" in (tmp_path / "rep" / "summary.md").read_text()
    assert "\\u03c3" in proc.stdout  # sigma, written as an escape the ascii terminal can show


def test_predict_gives_the_same_answer_for_the_same_image(own_model, tmp_path, capsys):
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), (200, 20, 30)).save(tmp_path / "b.png")
    args = ["predict", "--checkpoint", str(own_model["checkpoint"]), "--n", "200", "--n0", "20", "--k", "2",
            "--device", "cpu", "--json"]
    code, out, err = run_in_process(capsys, *args, str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                                    str(tmp_path / "a.png"))
    assert code == 0, err
    first, _, third = json.loads(out)
    assert first["labels"] == third["labels"] and first["radii"] == third["radii"]
    code, out, err = run_in_process(capsys, *args, str(tmp_path / "a.png"))
    assert json.loads(out)[0]["radii"] == first["radii"]  # its position in the batch does not matter


def test_mode_of_refuses_a_run_of_another_checkpoint(own_model, tmp_path, capsys):
    checkpoint, _ = _own_copy(own_model, tmp_path)
    run_dir = tmp_path / "run"
    assert run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--out",
                          str(run_dir))[0] == 0
    other = tmp_path / "other.pt"
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = payload["state_dict"][first] + 1.0
    torch.save(payload, other)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    result = run_in_process(capsys, "predict", "--checkpoint", str(other), "--mode-of", str(run_dir), "--n", "40",
                            "--n0", "10", "--device", "cpu", str(tmp_path / "x.png"))
    assert_one_line_error_in_process(result, "mode-of", str(run_dir), "checkpoint")
    code, _, err = run_in_process(capsys, "predict", "--checkpoint", str(own_model["checkpoint"]), "--mode-of",
                                  str(run_dir), "--n", "40", "--n0", "10", "--device", "cpu", str(tmp_path / "x.png"))
    assert code == 0, err


def test_nan_in_training_evaluation_names_the_model_and_keeps_the_epoch(own_model, tmp_path, capsys):
    (tmp_path / "nanmodel.py").write_text(
        "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self, c, s, ch):\n"
        "        super().__init__()\n        self.f = nn.Sequential(nn.Flatten(), nn.Linear(ch * s * s, c))\n\n"
        "    def forward(self, x):\n        y = self.f(x)\n"
        "        return y if self.training else y * float('nan')\n\n\n"
        "def net(num_classes, image_size=8, in_channels=3):\n    return Net(num_classes, image_size, in_channels)\n")
    result = run_in_process(capsys, "train", "--dataset", "csv", "--data-root", str(own_model["data"]), "--arch",
                            f"{tmp_path / 'nanmodel.py'}:net", "--sigma", "0.25", "--epochs", "1", "--quiet",
                            "--device", "cpu", "--out", str(tmp_path / "m.pt"))
    assert_one_line_error_in_process(result, "NaN", "epoch 1", "--resume continues after it")
    assert "Input contains NaN" not in result[2]
    saved = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=False)["meta"]
    assert saved["epoch"] == 1 and "NaN" in saved["metrics"][-1]["evaluation_error"]


def test_a_fresh_logits_model_without_batchnorm_is_not_taken_for_probabilities():
    from multiguard.models.factory import looks_like_probabilities

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    with torch.no_grad():
        plain[2].bias.fill_(0.5)  # small weights, positive bias: every output of a batch in [0, 1]
        outputs = plain(torch.rand(32, 8))
    assert bool(outputs.ge(0).all() and outputs.le(1).all())
    assert looks_like_probabilities(plain, outputs) is None
    # control: a model that does output probabilities (near 0 and near 1) is still caught
    probabilities = torch.cat([torch.full((16, 5), 0.02), torch.full((16, 5), 0.97)])
    assert looks_like_probabilities(plain, probabilities) is not None
    assert looks_like_probabilities(torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.Sigmoid())) is not None


def test_the_denoiser_folder_hint_does_not_suggest_a_classifier(own_model, tmp_path, capsys):
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(own_model["checkpoint"], folder / "model.pt")  # a classifier, not a denoiser
    result = run_in_process(capsys, "certify", "--checkpoint", str(own_model["checkpoint"]), *SMALL, "--denoiser",
                            str(folder), "--out", str(tmp_path / "r"))
    assert_one_line_error_in_process(result, "denoiser", str(folder), "train-denoiser")
    assert "model.pt" not in result[2]


def test_the_demo_table_names_the_sampling_mode_it_was_made_with():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    caption = readme[readme.index("(k' = 1, k = 3, sigma = 0.5, n = 1000"):][:600]
    assert "sampling mode" in caption and "reproducible" in caption


@pytest.mark.slow
def test_a_killed_attack_resumes_to_the_same_numbers(own_model, tmp_path):
    import signal
    import subprocess
    import time

    from clitools import command, env, run

    args = ["attack", "--checkpoint", str(own_model["checkpoint"]), "--radii", "0.25,0.5", "--num-inputs", "6",
            "--steps", "10", "--samples", "2", "--batch-size", "2", "--n", "60", "--device", "cpu", "--quiet"]
    run(*args, "--out", str(tmp_path / "whole"))  # uninterrupted, for comparison
    out = tmp_path / "killed"
    proc = subprocess.Popen([*command(), *args, "--out", str(out)], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300  # two blocks of r000 (a loaded 2-core CPU may need over 120 s)
        while len(list((out / "parts").glob("r000-*.npz"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = len(list((out / "parts").glob("r*.npz")))
    assert 2 <= done < 12 and not (out / "empirical.csv").exists(), done
    refused = run(*args, "--out", str(out), check=False)
    assert refused.returncode == 2 and "unfinished attack; continue it with --resume" in refused.stderr
    changed = run(*[a if a != "60" else "80" for a in args], "--out", str(out), "--resume", check=False)
    assert changed.returncode == 2 and "n: the attack has 60, the arguments give 80" in changed.stderr
    run(*args, "--out", str(out), "--resume")
    assert not (out / "parts").exists()
    with np.load(out / "per_input.npz") as resumed, np.load(tmp_path / "whole" / "per_input.npz") as whole:
        assert sorted(resumed.files) == sorted(whole.files)
        for key in whole.files:
            np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)
    assert (out / "empirical.csv").read_bytes() == (tmp_path / "whole" / "empirical.csv").read_bytes()


def test_predict_refuses_stop_rule_options_without_stop_at_radius(own_model, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(image)
    for option, value in (("--futility", "margin"), ("--bounds", "betting"), ("--spending", "0.5")):
        result = run_in_process(capsys, "predict", "--checkpoint", str(own_model["checkpoint"]), str(image),
                                "--n", "100", "--device", "cpu", option, value)
        assert_one_line_error_in_process(result, f"{option} only sets the stopping rule of --stop-at-radius",
                                         "every image gets --n samples")
    code, _, err = run_in_process(capsys, "predict", "--checkpoint", str(own_model["checkpoint"]), str(image), "--n",
                                  "100", "--device", "cpu", "--bounds", "betting", "--stop-at-radius", "0.1")
    assert code == 0, err


def test_a_sequential_run_resumes_with_its_own_rule_and_a_changed_rule_option_names_that_option(
        own_model, tmp_path, capsys):
    """--resume of a sequential run without --stop-at-radius continues it under its stored rule; a rule option
    given then (--bounds, --futility-margin) is compared with the run's rule, not refused as 'no
    --stop-at-radius', and the refusal names only the fields that differ."""
    ck, out = str(own_model["checkpoint"]), tmp_path / "seq"
    made = run_in_process(capsys, "certify", "--checkpoint", ck, *SMALL, "--stop-at-radius", "0.25", "--bounds",
                          "betting", "--out", str(out))
    assert made[0] == 0, made[2]
    resumed = run_in_process(capsys, "certify", "--checkpoint", ck, "--out", str(out), "--resume", "--device", "cpu")
    assert resumed[0] == 0, resumed[2]
    assert "stop_at_radius = 0.25" in resumed[1] and "sequential at R = 0.25" in resumed[1]
    result = run_in_process(capsys, "certify", "--checkpoint", ck, "--out", str(out), "--resume", "--device", "cpu",
                            "--bounds", "union", "--futility-margin", "0.3")
    assert_one_line_error_in_process(result, "stop_rule's bounds: the run has 'betting', the arguments give 'union'",
                                     "stop_rule's margin: the run has 0.2")
    assert "stop-at-radius, which is not given" not in result[2] and "'schedule'" not in result[2]
