"""`datasets verify`: real VOC 2007, COCO 2014 and NUS-WIDE layouts written by the test; a missing image, a
corrupt image and a wrong split count are each reported by name."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from data_server import COCO_IMAGES, VOC_SPLITS, coco_archives, coco_file_name, file_entry, jpeg_bytes, voc_tar

from multiguard.data.verify import verify_dataset


def unpack_voc(root: Path) -> Path:
    for split in VOC_SPLITS:
        with tarfile.open(fileobj=io.BytesIO(voc_tar(split))) as tar:
            tar.extractall(root, filter="data")
    return root / "VOCdevkit" / "VOC2007" / "JPEGImages"


def manifest_with_counts(path: Path, name: str, **counts) -> Path:
    entry = {"files": [file_entry("x.tar", b"x", ["https://example.org/x.tar"], "tar", ["x"])], **counts}
    path.write_text(json.dumps({"manifest_version": 1, "datasets": {name: entry}}))
    return path


def test_voc_complete_layout_verifies_with_label_statistics(tmp_path):
    unpack_voc(tmp_path)
    manifest = manifest_with_counts(tmp_path / "m.json", "voc2007", splits={"trainval": 3, "test": 2})
    report = verify_dataset("voc2007", tmp_path, manifest=manifest, progress=False)
    assert report.ok and [c.split for c in report.splits] == ["trainval", "test"]
    assert [(c.images, c.expected) for c in report.splits] == [(3, 3), (2, 2)]
    text = report.text()
    assert "trainval: 3 images (official: 3); ok" in text and "verify: ok" in text
    assert "mean labels/image" in text and "person" in text and "images without labels" in text
    assert report.splits[0].description["label_counts"]["dog"] == 1


def test_voc_missing_image_corrupt_image_and_wrong_count_each_named(tmp_path):
    images = unpack_voc(tmp_path)
    (images / "000007.jpg").unlink()
    (images / "000012.jpg").write_bytes(b"this is not a jpeg")
    report = verify_dataset("voc2007", tmp_path, progress=False)  # the shipped manifest: the official counts
    assert not report.ok
    trainval, test = report.splits
    assert trainval.missing == [str(images / "000007.jpg")]
    assert [item["path"] for item in trainval.corrupt] == [str(images / "000012.jpg")]
    assert trainval.problems[0] == "trainval: wrong split count: 3 images where the official count is 5011"
    assert f"trainval: missing image: {images / '000007.jpg'}" in trainval.problems
    assert any(p.startswith(f"trainval: corrupt image: {images / '000012.jpg'}: ") for p in trainval.problems)
    assert test.problems == ["test: wrong split count: 2 images where the official count is 4952"]
    assert report.text().endswith("verify: 4 problem(s) found")


def test_a_split_that_cannot_be_loaded_is_named_with_the_missing_file(tmp_path):
    unpack_voc(tmp_path)
    (tmp_path / "VOCdevkit/VOC2007/ImageSets/Main/sofa_test.txt").unlink()
    report = verify_dataset("voc2007", tmp_path, progress=False)
    assert report.splits[1].images is None
    assert report.splits[1].problems[0].startswith("test: cannot be loaded: ")
    assert "sofa_test.txt" in report.splits[1].problems[0]


def test_coco_counts_annotated_images_json_and_folder(tmp_path):
    for data in coco_archives().values():
        with zipfile.ZipFile(io.BytesIO(data)) as zipped:
            zipped.extractall(tmp_path)
    manifest = manifest_with_counts(tmp_path / "m.json", "coco2014", splits={"train": 3, "val": 2},
                                    annotated={"train": 2, "val": 2})
    report = verify_dataset("coco2014", tmp_path, manifest=manifest, progress=False)
    assert report.ok, report.text()
    assert "3 images in instances_train2014.json, 1 without any label (skipped)" in report.splits[0].notes
    (tmp_path / "val2014" / coco_file_name("val", COCO_IMAGES["val"][0][0])).unlink()
    shipped = verify_dataset("coco2014", tmp_path, progress=False)
    train, val = shipped.splits
    assert train.problems == [
        "train: wrong split count: 2 annotated images where the official count is 82081",
        "train: wrong split count: instances_train2014.json lists 3 images where the official count is 82783",
        f"train: wrong split count: {tmp_path / 'train2014'} holds 3 files where the official count is 82783",
    ]
    missing = tmp_path / "val2014" / coco_file_name("val", 42)
    assert f"val: missing image: {missing}" in val.problems


def test_nuswide_split_is_the_csv_and_every_listed_image_is_checked(tmp_path):
    (tmp_path / "Concepts81.txt").write_text("clouds\nsky\nzebra\n")
    (tmp_path / "nus_wid_data.csv").write_text(
        ",filepath,label,split_name\n0,images/a.jpg,\"['sky', 'clouds']\",train\n1,images/b.jpg,\"['zebra']\",val\n"
        "2,images/c.jpg,\"[]\",val\n")
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        (tmp_path / "images" / f"{name}.jpg").write_bytes(jpeg_bytes((1, 2, 3)))
    report = verify_dataset("nuswide", tmp_path, progress=False)
    train, val = report.splits
    assert train.ok and train.expected is None and train.images == 1
    assert any("about 154,000" in note for note in train.notes)
    assert val.problems == [f"val: missing image: {tmp_path / 'images' / 'c.jpg'}"]


def test_verify_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="name: verify checks a dataset folder: one of coco2014, csv, nuswide, "
                                         "voc2007, got 'imagenet'"):
        verify_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match=r"root: .*nowhere is not a folder .*datasets download voc2007"):
        verify_dataset("voc2007", tmp_path / "nowhere")


def test_your_own_csv_dataset_is_checked_without_official_counts(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "train.csv").write_text("path,labels\na.jpg,cat\nb.jpg,dog|cat\n")
    (tmp_path / "test.csv").write_text("path,labels\nc.jpg,dog\n")
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes((5, 5, 5)))
    (tmp_path / "b.jpg").write_bytes(b"broken")
    report = verify_dataset("csv", tmp_path, progress=False)
    train, test = report.splits
    assert train.expected is None and train.images == 2
    assert [p.split(": ")[1] for p in train.problems] == ["corrupt image"]
    assert test.problems == [f"test: missing image: {tmp_path / 'c.jpg'}"]


@pytest.mark.slow
def test_command_line_verify_names_each_problem_and_exits_1(tmp_path):
    from clitools import run

    images = unpack_voc(tmp_path)
    (images / "000007.jpg").unlink()
    manifest = manifest_with_counts(tmp_path / "m.json", "voc2007", splits={"trainval": 3, "test": 5})
    proc = run("datasets", "verify", "voc2007", "--root", str(tmp_path), "--manifest", str(manifest), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"trainval: missing image: {images / '000007.jpg'}" in proc.stdout
    assert "test: wrong split count: 2 images where the official count is 5" in proc.stdout
    assert "mean labels/image" in proc.stdout
    assert proc.stderr.startswith("multiguard: error: 2 problem(s) in ") and len(proc.stderr.splitlines()) == 1
    as_json = run("datasets", "verify", "voc2007", "--root", str(tmp_path), "--manifest", str(manifest), "--json",
                  check=False)
    found = json.loads(as_json.stdout)
    assert found["ok"] is False and found["splits"][0]["missing"] == [str(images / "000007.jpg")]
