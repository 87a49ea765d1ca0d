"""Datasets: each real layout written as real files, exact labels, class order and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from multiguard.data import (
    DATASETS,
    DatasetFileError,
    default_splits,
    describe,
    format_description,
    get_dataset,
    load_image,
)
from multiguard.data.multidigits import HALF, NUM_SCANS
from multiguard.data.voc import VOC_CLASSES


def write_image(path: Path, color=(200, 30, 10), size=(20, 14), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def vec(n: int, *ones: int) -> list[float]:
    v = [0.0] * n
    for i in ones:
        v[i] = 1.0
    return v


# ---------------------------------------------------------------- image loading


def test_load_image_rgb_and_gray_resized_in_unit_range(tmp_path):
    write_image(tmp_path / "red.png", (255, 0, 0), size=(7, 5))
    image = load_image(tmp_path / "red.png", 9)
    assert image.shape == (3, 9, 9) and image.dtype == torch.float32
    assert torch.all(image[0] == 1.0) and torch.all(image[1:] == 0.0)
    write_image(tmp_path / "gray.png", (51, 0, 0), size=(4, 4), mode="L")
    gray = load_image(tmp_path / "gray.png", 6, channels=1)
    assert gray.shape == (1, 6, 6) and torch.allclose(gray, torch.full((1, 6, 6), 0.2))
    rgb = load_image(tmp_path / "gray.png", 6)
    assert rgb.shape == (3, 6, 6)


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.jpg"):
        load_image(tmp_path / "nothing.jpg", 8)
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.jpg"):
        load_image(tmp_path / "broken.jpg", 8)


# ---------------------------------------------------------------- VOC 2007

VOC_XML = """<annotation><folder>VOC2007</folder><filename>{id}.jpg</filename>
<size><width>20</width><height>14</height><depth>3</depth></size>
{objects}</annotation>"""
VOC_OBJ = ("<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
           "<difficult>{difficult}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
           "<ymax>9</ymax></bndbox></object>")

# image id -> {class: mark} (1 present, 0 difficult only); every other class is -1
VOC_MARKS = {
    "000005": {"dog": 1, "person": 1},
    "000007": {"cat": 1, "chair": 0},
    "000009": {"bottle": 0},
    "000012": {"aeroplane": 1, "tvmonitor": 1, "person": 0},
}


def make_voc(root: Path, split: str = "trainval") -> Path:
    base = root / "VOCdevkit" / "VOC2007"
    main = base / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (base / "Annotations").mkdir()
    for image_id, marks in VOC_MARKS.items():
        write_image(base / "JPEGImages" / f"{image_id}.jpg")
        objects = "".join(VOC_OBJ.format(name=n, difficult=int(m == 0)) for n, m in marks.items())
        (base / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(id=image_id, objects=objects))
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in VOC_MARKS))
    for name in VOC_CLASSES:
        lines = [f"{i} {marks.get(name, -1):>2}\n" for i, marks in VOC_MARKS.items()]
        (main / f"{name}_{split}.txt").write_text("".join(lines))
    return base


def test_voc_labels_class_order_and_difficult_rule(tmp_path):
    make_voc(tmp_path)
    ds = get_dataset("voc2007", root=tmp_path, split="trainval", image_size=16)
    assert ds.class_names == VOC_CLASSES
    assert ds.class_names[:3] == ["aeroplane", "bicycle", "bird"] and ds.class_names[-1] == "tvmonitor"
    assert len(ds) == 4
    idx = {name: i for i, name in enumerate(VOC_CLASSES)}
    expected = [
        vec(20, idx["dog"], idx["person"]),
        vec(20, idx["cat"]),  # chair difficult-only: negative
        vec(20),  # bottle difficult-only: negative, no label left
        vec(20, idx["aeroplane"], idx["tvmonitor"]),
    ]
    assert ds.labels.tolist() == expected
    image, labels = ds[0]
    assert image.shape == (3, 16, 16) and 0 <= image.min() and image.max() <= 1
    assert labels.tolist() == expected[0]

    pos = get_dataset("voc2007", root=tmp_path, split="trainval", difficult_positive=True)
    assert pos.labels.tolist() == [
        vec(20, idx["dog"], idx["person"]),
        vec(20, idx["cat"], idx["chair"]),
        vec(20, idx["bottle"]),
        vec(20, idx["aeroplane"], idx["person"], idx["tvmonitor"]),
    ]
    assert default_splits("voc2007") == ("trainval", "test")


def test_voc_errors(tmp_path):
    with pytest.raises(DatasetFileError, match=r"VOCdevkit/VOC2007"):
        get_dataset("voc2007", root=tmp_path)
    base = make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/aeroplane_test\.txt"):
        get_dataset("voc2007", root=tmp_path, split="test")
    (base / "ImageSets" / "Main" / "sofa_trainval.txt").unlink()
    with pytest.raises(ValueError, match=r"'sofa'.*ImageSets/Main/sofa_trainval\.txt"):
        get_dataset("voc2007", root=tmp_path, split="trainval")


def test_voc_missing_and_unreadable_image_named(tmp_path):
    base = make_voc(tmp_path)
    ds = get_dataset("voc2007", root=tmp_path, split="trainval")
    (base / "JPEGImages" / "000007.jpg").write_bytes(b"\xff\xd8 truncated garbage")
    with pytest.raises(ValueError, match=r"cannot read image .*000007\.jpg"):
        ds[1]
    (base / "JPEGImages" / "000009.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/000009\.jpg"):
        ds[2]


# ---------------------------------------------------------------- COCO 2014


def make_coco(root: Path, split: str = "val", extra_annotations=()) -> None:
    categories = [
        {"id": 18, "name": "dog", "supercategory": "animal"},
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
    ]
    images = [
        {"id": 42, "file_name": f"COCO_{split}2014_000000000042.jpg", "width": 20, "height": 14},
        {"id": 7, "file_name": f"COCO_{split}2014_000000000007.jpg", "width": 20, "height": 14},
        {"id": 9, "file_name": f"COCO_{split}2014_000000000009.jpg", "width": 20, "height": 14},
    ]
    annotations = [
        {"id": 1, "image_id": 42, "category_id": 90, "bbox": [1, 1, 3, 3], "iscrowd": 0, "area": 9},
        {"id": 2, "image_id": 42, "category_id": 1, "bbox": [1, 1, 3, 3], "iscrowd": 0, "area": 9},
        {"id": 3, "image_id": 42, "category_id": 1, "bbox": [2, 2, 3, 3], "iscrowd": 0, "area": 9},
        {"id": 4, "image_id": 7, "category_id": 18, "bbox": [1, 1, 3, 3], "iscrowd": 0, "area": 9},
        *extra_annotations,
    ]  # image 9 has no annotation
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    for img in images:
        write_image(root / f"{split}2014" / img["file_name"])


def test_coco_labels_category_order_and_skipped_images(tmp_path):
    make_coco(tmp_path)
    ds = get_dataset("coco2014", root=tmp_path, split="val", image_size=12)
    assert ds.class_names == ["person", "car", "dog", "toothbrush"]  # ascending category id
    assert len(ds) == 2 and ds.skipped_unannotated == 1
    assert ds.image_ids == [7, 42]
    assert ds.labels.tolist() == [vec(4, 2), vec(4, 0, 3)]
    image, labels = ds[1]
    assert image.shape == (3, 12, 12) and labels.tolist() == vec(4, 0, 3)
    assert len(get_dataset("coco2014", root=tmp_path, split="test")) == 2  # test means val
    assert default_splits("coco2014") == ("train", "val")


def test_coco_errors(tmp_path):
    with pytest.raises(DatasetFileError, match=r"annotations/instances_train2014\.json"):
        get_dataset("coco2014", root=tmp_path, split="train")
    make_coco(tmp_path, extra_annotations=[{"id": 9, "image_id": 9, "category_id": 5, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match=r"unknown label: category id 5 .*\[1, 3, 18, 90\]"):
        get_dataset("coco2014", root=tmp_path, split="val")


# ---------------------------------------------------------------- NUS-WIDE

NUS_CONCEPTS = ["airport", "animal", "beach", "clouds", "sky"]


def make_nuswide(root: Path, extra_rows: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Concepts81.txt").write_text("\n".join(NUS_CONCEPTS) + "\n")
    rows = [
        ("images/0001.jpg", "['sky', 'clouds']", "train"),
        ("images/0002.jpg", "['animal']", "val"),
        ("images/0003.jpg", "[]", "train"),
        ("images/0004.jpg", "['beach', 'airport', 'sky']", "train"),
    ]
    text = ",filepath,label,split_name\n"
    for i, (path, labels, split) in enumerate(rows):
        text += f'{i},{path},"{labels}",{split}\n'
        write_image(root / path)
    (root / "nus_wid_data.csv").write_text(text + extra_rows)


def test_nuswide_labels_and_splits(tmp_path):
    make_nuswide(tmp_path)
    train = get_dataset("nuswide", root=tmp_path, split="train", image_size=10)
    assert train.class_names == NUS_CONCEPTS
    assert [p.name for p in train.paths] == ["0001.jpg", "0003.jpg", "0004.jpg"]
    assert train.labels.tolist() == [vec(5, 3, 4), vec(5), vec(5, 0, 2, 4)]
    assert train[2][0].shape == (3, 10, 10)
    val = get_dataset("nuswide", root=tmp_path, split="val")
    assert val.labels.tolist() == [vec(5, 1)]
    assert default_splits("nuswide") == ("train", "val")


def test_nuswide_errors(tmp_path):
    with pytest.raises(DatasetFileError, match=r"nus_wid_data\.csv"):
        get_dataset("nuswide", root=tmp_path)
    make_nuswide(tmp_path, extra_rows="4,images/0001.jpg,\"['sky', 'rainbow']\",train\n")
    with pytest.raises(ValueError, match=r"unknown label 'rainbow'.*line 6.*\['airport', 'animal'"):
        get_dataset("nuswide", root=tmp_path, split="train")
    (tmp_path / "Concepts81.txt").unlink()
    with pytest.raises(DatasetFileError, match=r"Concepts81\.txt"):
        get_dataset("nuswide", root=tmp_path)


# ---------------------------------------------------------------- csv folder


def make_csv(root: Path, test_rows: str = "path,labels\nimg/c.png,bird\n") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("cat\ndog\nbird\n")
    (root / "train.csv").write_text("path,labels\nimg/a.png,dog|cat\nimg/b.jpg,\nimg/c.png,bird|dog\n")
    (root / "test.csv").write_text(test_rows)
    write_image(root / "img" / "a.png", (0, 255, 0))
    write_image(root / "img" / "b.jpg")
    write_image(root / "img" / "c.png")


def test_csv_labels_class_order_and_describe(tmp_path):
    make_csv(tmp_path)
    ds = get_dataset("csv", root=tmp_path, split="train", image_size=8)
    assert ds.class_names == ["cat", "dog", "bird"]
    assert ds.labels.tolist() == [vec(3, 0, 1), vec(3), vec(3, 1, 2)]
    image, labels = ds[0]
    assert image.shape == (3, 8, 8) and torch.all(image[1] == 1.0) and torch.all(image[0] == 0.0)
    desc = describe(ds)
    assert desc["images"] == 3 and desc["classes"] == 3
    assert desc["label_counts"] == {"cat": 1, "dog": 2, "bird": 1}
    assert desc["label_frequency"]["dog"] == pytest.approx(2 / 3)
    assert desc["mean_labels_per_image"] == pytest.approx(4 / 3)
    assert desc["images_without_labels"] == 1
    table = format_description([desc, describe(get_dataset("csv", root=tmp_path, split="test"))])
    assert "dog" in table and "2 (66.7%)" in table and "mean labels/image" in table and "1.33" in table


def test_csv_errors(tmp_path):
    with pytest.raises(DatasetFileError, match=r"classes\.txt"):
        get_dataset("csv", root=tmp_path)
    make_csv(tmp_path, test_rows="path,labels\nimg/c.png,bird|horse\n")
    with pytest.raises(ValueError, match=r"unknown label 'horse' in .*test\.csv, line 2.*\['cat', 'dog', 'bird'\]"):
        get_dataset("csv", root=tmp_path, split="test")
    with pytest.raises(DatasetFileError, match=r"val\.csv"):
        get_dataset("csv", root=tmp_path, split="val")


def test_get_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*coco2014.*multidigits"):
        get_dataset("imagenet")
    with pytest.raises(ValueError, match=r"root: .*needs root"):
        get_dataset("csv")
    with pytest.raises(ValueError, match=r"options: .*\['colour'\]"):
        get_dataset("multidigits", colour=True)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        get_dataset("voc2007", root=tmp_path / "nowhere")
    assert set(DATASETS) == {"multidigits", "voc2007", "coco2014", "nuswide", "csv"}


# ---------------------------------------------------------------- multidigits


def test_multidigits_deterministic_for_a_seed():
    a = get_dataset("multidigits", split="train", seed=3, size=300)
    b = get_dataset("multidigits", split="train", seed=3, size=300)
    c = get_dataset("multidigits", split="train", seed=4, size=300)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    longer = get_dataset("multidigits", split="train", seed=3, size=400)
    assert torch.equal(longer.images[:300], a.images)  # a larger size only appends
    image, labels = a[5]
    assert image.shape == (1, 32, 32) and labels.shape == (10,)
    assert a.in_channels == 1 and a.class_names == [str(d) for d in range(10)]


def test_multidigits_labels_equal_the_digits_placed():
    from sklearn.datasets import load_digits

    digits = load_digits()
    ds = get_dataset("multidigits", split="test", seed=0, size=200, image_size=32)
    scans = torch.from_numpy(digits.images.astype(np.float32) / 16).unsqueeze(1)
    for i in range(len(ds)):
        placed = [int(d) for d in ds.digits[i] if d >= 0]
        assert 1 <= len(placed) <= 4 and len(set(placed)) == len(placed)
        assert ds.labels[i].nonzero().flatten().tolist() == sorted(placed)
        for cell in range(4):
            block = ds.images[i, 0, (cell // 2) * 16 : (cell // 2 + 1) * 16, (cell % 2) * 16 : (cell % 2 + 1) * 16]
            scan = int(ds.scan_ids[i, cell])
            if scan < 0:
                assert torch.all(block == 0)
            else:
                assert digits.target[scan] == ds.digits[i, cell]
                expected = F.interpolate(scans[scan : scan + 1], size=(16, 16), mode="bilinear",
                                         align_corners=False).clamp(0, 1)[0, 0]
                # 8-bit: the resized scan rounded to the nearest i / 255
                assert torch.equal(block, (expected * 255).round() / 255)
                assert float((block - expected).abs().max()) <= 0.5 / 255 + 1e-6
    assert 2.2 < ds.labels.sum(1).mean() < 2.8
    assert ds.pixels.dtype == torch.uint8 and torch.equal(ds.images, ds.pixels.float() / 255)
    assert float(ds.images.min()) >= 0 and float(ds.images.max()) <= 1


def test_multidigits_train_and_test_share_no_scan():
    train = get_dataset("multidigits", split="train", seed=0, size=2000)
    test = get_dataset("multidigits", split="test", seed=0, size=2000)
    train_scans = set(train.scan_ids[train.scan_ids >= 0].tolist())
    test_scans = set(test.scan_ids[test.scan_ids >= 0].tolist())
    assert train_scans and test_scans and not train_scans & test_scans
    assert max(train_scans) < HALF <= min(test_scans) and max(test_scans) < NUM_SCANS
    desc = describe(train)
    assert desc["images"] == 2000 and 2.3 < desc["mean_labels_per_image"] < 2.7


def test_multidigits_argument_errors():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        get_dataset("multidigits", split="val")
    with pytest.raises(ValueError, match="size must be a positive integer"):
        get_dataset("multidigits", size=0)
    with pytest.raises(ValueError, match="image_size"):
        get_dataset("multidigits", image_size=-3)
