"""Noise-augmented training: the loss falls, checkpoints rebuild the model, resume, determinism."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from multiguard import __version__
from multiguard.models import create_model
from multiguard.train import evaluate_map, load_checkpoint, mean_average_precision, train

QUICK = {"train_size": 256, "test_size": 96, "batch_size": 32, "progress": False, "sigma": 0.25,
         "num_threads": 1}


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_short_run_lowers_loss_and_checkpoint_rebuilds_identical_model(tmp_path):
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    out = tmp_path / "sub" / "md.pt"
    model, meta = train("multidigits", epochs=3, seed=1, out=out, **QUICK)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    assert torch.get_num_threads() == threads_before  # and so is the thread count
    losses = [m["train_loss"] for m in meta["metrics"]]
    assert [m["epoch"] for m in meta["metrics"]] == [1, 2, 3]
    assert losses[2] < losses[0]
    for m in meta["metrics"]:
        assert 0 < m["noisy_map"] <= 1 and 0 < m["clean_map"] <= 1 and m["seconds"] > 0
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["md.pt"]  # no temp file left

    loaded, saved = load_checkpoint(out)
    assert not loaded.training and loaded.class_names == [str(d) for d in range(10)]
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    for key, value in {
        "arch": "small_cnn", "num_classes": 10, "dataset": "multidigits", "image_size": 32, "in_channels": 1,
        "sigma": 0.25, "clamp": False, "mean": [0.0], "std": [1.0], "epochs": 3, "epoch": 3, "seed": 1,
        "train_split": "train", "test_split": "test", "train_size": 256, "test_size": 96, "loss": "asl",
        "lr": 1e-3, "batch_size": 32, "multiguard_version": __version__,
    }.items():
        assert saved[key] == value, key
    assert saved["class_names"] == [str(d) for d in range(10)] and saved["metrics"] == meta["metrics"]
    # a checkpoint also serves as pretrained=PATH for create_model
    warm = create_model("small_cnn", 10, 32, in_channels=1, pretrained=out)
    assert weights_equal(warm.net, loaded.net)
    # the metrics are recomputed exactly from the rebuilt model
    from multiguard.data import get_dataset

    test_set = get_dataset("multidigits", split="test", seed=1, size=96)
    assert evaluate_map(loaded, test_set, 0.25, seed=1) == pytest.approx(meta["metrics"][-1]["noisy_map"])
    assert evaluate_map(loaded, test_set) == pytest.approx(meta["metrics"][-1]["clean_map"])


def test_resume_continues_from_saved_epoch_and_matches_an_uninterrupted_run(tmp_path):
    full, full_meta = train("multidigits", epochs=3, seed=2, out=tmp_path / "full.pt", **QUICK)
    first, first_meta = train("multidigits", epochs=2, seed=2, out=tmp_path / "part.pt", **QUICK)
    assert first_meta["epoch"] == 2
    lines: list[str] = []
    resumed, meta = train("multidigits", epochs=3, seed=2, out=tmp_path / "part.pt", resume=True,
                          log=lines.append, **QUICK)
    assert lines[0].startswith("resuming") and "after epoch 2 of 3" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("epoch 3/3")  # only epoch 3 was trained
    assert [m["epoch"] for m in meta["metrics"]] == [1, 2, 3]
    assert meta["metrics"][:2] == first_meta["metrics"]
    assert weights_equal(resumed, full)  # deterministic for a seed, resume included
    assert [m["train_loss"] for m in meta["metrics"]] == [m["train_loss"] for m in full_meta["metrics"]]
    again, again_meta = train("multidigits", epochs=3, seed=2, out=tmp_path / "part.pt", resume=True,
                              log=lines.append, **QUICK)
    assert again_meta["epoch"] == 3 and weights_equal(again, full)  # nothing left to train
    with pytest.raises(ValueError, match=r"resume: .*part\.pt was trained with other settings \(sigma: saved 0.25"):
        train("multidigits", epochs=4, seed=2, out=tmp_path / "part.pt", resume=True,
              **{**QUICK, "sigma": 0.5})


def test_other_seed_gives_other_model_and_bce_and_clamp_run(tmp_path):
    a, _ = train("multidigits", epochs=1, seed=3, **QUICK)
    b, meta = train("multidigits", epochs=1, seed=4, loss="bce", clamp=True, **QUICK)
    assert not weights_equal(a, b)
    assert meta["loss"] == "bce" and meta["clamp"] is True


def test_training_on_a_file_dataset(tmp_path):
    root = tmp_path / "mine"
    (root / "img").mkdir(parents=True)
    (root / "classes.txt").write_text("red\ngreen\n")
    rows = {
        "train": [("a", "red"), ("b", "green"), ("c", "red|green"), ("d", "")],
        "test": [("e", "red"), ("f", "green")],
    }
    for split, items in rows.items():
        lines = ["path,labels"]
        for name, labels in items:
            color = (255 * ("red" in labels), 255 * ("green" in labels), 0)
            Image.new("RGB", (12, 12), color).save(root / "img" / f"{name}.png")
            lines.append(f"img/{name}.png,{labels}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    model, meta = train("csv", data_root=root, epochs=2, image_size=16, batch_size=2, progress=False,
                        out=tmp_path / "csv.pt", sigma=0.1)
    assert meta["class_names"] == ["red", "green"] and meta["in_channels"] == 3 and meta["image_size"] == 16
    assert meta["train_size"] == 4 and meta["test_size"] == 2 and meta["data_root"] == str(root)
    loaded, _ = load_checkpoint(tmp_path / "csv.pt")
    assert loaded(torch.rand(1, 3, 16, 16)).shape == (1, 2)


def test_load_checkpoint_rejects_other_files(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    message = r"other\.pt is not a MultiGuard checkpoint \(no 'multiguard_checkpoint' key\)"
    with pytest.raises(ValueError, match=message):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt is not a MultiGuard checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match=r"no such file: .*missing\.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_train_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"dataset: unknown dataset 'mnist'"):
        train("mnist")
    with pytest.raises(ValueError, match=r"sigma must be a number >= 0"):
        train("multidigits", sigma=-0.5)
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 0"):
        train("multidigits", epochs=-1)
    with pytest.raises(ValueError, match=r"epochs: 0 epochs imports pretrained weights without training"):
        train("multidigits", epochs=0)
    with pytest.raises(ValueError, match=r"loss must be 'asl' or 'bce'"):
        train("multidigits", loss="hinge")
    with pytest.raises(ValueError, match=r"resume: needs out"):
        train("multidigits", resume=True)
    with pytest.raises(ValueError, match=r"device: not a torch device"):
        train("multidigits", device="gpu0")


def test_mean_average_precision_macro_over_classes_with_positives():
    import numpy as np
    from sklearn.metrics import average_precision_score

    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.4, 0.3, 0.2], [0.5, 0.2, 0.9]])
    per_class = [average_precision_score(labels[:, j], scores[:, j]) for j in (0, 1)]  # class 2: no positive
    expected = sum(per_class) / 2
    assert mean_average_precision(labels, scores) == pytest.approx(expected)
