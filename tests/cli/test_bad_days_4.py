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
