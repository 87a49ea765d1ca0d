"""Denoised smoothing: the composition is a base classifier like any other, denoiser training and checkpoints,
refusals of a denoiser made for another sigma or image size, and the certified gain on a clean classifier."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from clitools import assert_one_line_error_in_process, run, run_in_process
from PIL import Image
from torch import nn

from multiguard.common.files import file_sha256
from multiguard.common.seeds import NOISE_BLOCK, STREAM_ESTIMATION, noise_seed
from multiguard.common.torch_files import read_denoiser_checkpoint, save_denoiser_checkpoint
from multiguard.data import get_dataset
from multiguard.denoising.denoisers import (
    DenoisedClassifier,
    DnCNN,
    SmallUNet,
    check_denoiser,
    create_denoiser,
    load_denoiser,
)
from multiguard.models.checkpoints import load_checkpoint
from multiguard.models.factory import create_model
from multiguard.sampling.smoothed import MultiGuard
from multiguard.training.classifier import train
from multiguard.training.denoiser import train_denoiser
from multiguard.training.objectives import stability_loss

SIGMA = 0.5
TINY = {"train_size": 192, "test_size": 64, "batch_size": 32, "progress": False, "num_threads": 1}


def scrambled(module: nn.Module, seed: int) -> nn.Module:
    """``module`` with every parameter redrawn from a seeded normal (scale 0.3): no longer the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


@pytest.fixture(scope="module")
def classifier() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 8, in_channels=1)
    return scrambled(model, 1)


# ------------------------------------------------------------------------------------ the composition


@pytest.mark.parametrize("arch", ["dncnn", "unet"])
def test_denoised_counts_equal_an_explicit_sequential_and_a_plain_loop(classifier: nn.Module, arch: str) -> None:
    denoiser = scrambled(create_denoiser(arch, 1, 8, width=4), 2)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    index = [7, 0, 12]
    composed = MultiGuard(DenoisedClassifier(denoiser, classifier), 10, SIGMA).sample_counts(
        x, n=250, seed=5, index=index, batch_size=96)
    explicit = MultiGuard(nn.Sequential(denoiser, classifier), 10, SIGMA).sample_counts(
        x, n=250, seed=5, index=index, batch_size=250)
    np.testing.assert_array_equal(composed, explicit)
    alone = MultiGuard(classifier, 10, SIGMA).sample_counts(x, n=250, seed=5, index=index)
    assert not np.array_equal(composed, alone)  # the denoiser is really in the path

    # a plain loop over the documented noise blocks: classifier(denoiser(x + sigma * eps)), top-1 by a
    # stable argsort (ties to the lower label)
    expected = np.zeros((3, 10), dtype=np.int64)
    with torch.no_grad():
        for i in range(3):
            for block in range(3):  # 250 samples: blocks 0, 1 and half of 2
                generator = torch.Generator().manual_seed(noise_seed(5, index[i], block, STREAM_ESTIMATION))
                eps = torch.empty(NOISE_BLOCK, 1, 8, 8).normal_(generator=generator)[: 250 - block * NOISE_BLOCK]
                scores = classifier(denoiser(x[i] + SIGMA * eps)).numpy()
                np.add.at(expected[i], np.argsort(-scores, axis=1, kind="stable")[:, 0], 1)
    np.testing.assert_array_equal(composed, expected)


def test_architectures_start_as_the_identity_and_keep_the_shape() -> None:
    x = torch.rand(2, 3, 16, 16)
    for denoiser in (DnCNN(3), SmallUNet(3), SmallUNet(3, levels=4), create_denoiser("dncnn", 3, 16, width=8, depth=3)):
        with torch.no_grad():
            assert torch.equal(denoiser(x), x)
    for levels in (1, 2, 3):
        unet = scrambled(create_denoiser("unet", 3, 16, width=4, levels=levels, depth=0), 0)
        assert unet(x).shape == x.shape
    assert DenoisedClassifier(DnCNN(1), create_model("small_cnn", 4, 8, 1))(torch.rand(5, 1, 8, 8)).shape == (5, 4)


def test_user_factory_denoiser(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_denoisers.py").write_text(
        "import torch.nn as nn\n"
        "def smooth(in_channels):\n"
        "    return nn.Conv2d(in_channels, in_channels, 3, padding=1)\n"
        "def not_a_module(in_channels, image_size):\n"
        "    return 'no'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    denoiser = create_denoiser("my_denoisers:smooth", 2, 8)
    assert denoiser(torch.rand(1, 2, 8, 8)).shape == (1, 2, 8, 8)
    assert denoiser.arch == f"{tmp_path.resolve() / 'my_denoisers.py'}:smooth"  # rebuilt from any folder
    assert create_denoiser(str(tmp_path / "my_denoisers.py") + ":smooth", 2, 8).arch == denoiser.arch
    assert denoiser.arch_options == {}
    assert create_denoiser("dncnn", 1, 8, width=8).arch_options == {"depth": 4, "width": 8}  # defaults recorded
    assert create_denoiser("unet", 1, 8).arch_options == {"depth": 2, "levels": 2, "width": 32}
    with pytest.raises(ValueError, match="arch: 'my_denoisers:not_a_module' returned str, not a torch.nn.Module"):
        create_denoiser("my_denoisers:not_a_module", 2, 8)
    sys.modules.pop("my_denoisers", None)


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"arch must be one of 'dncnn', 'unet', 'path/to/file.py:factory' or"):
        create_denoiser("bm3d", 1, 32)
    with pytest.raises(ValueError, match=r"arch_options: 'dncnn' takes \['depth', 'width'\], got \['channels'\]"):
        create_denoiser("dncnn", 1, 32, channels=8)
    with pytest.raises(ValueError, match=r"image_size must be divisible by 2\*\*levels = 4 for the unet denoiser"):
        create_denoiser("unet", 1, 30)
    with pytest.raises(ValueError, match="depth must be an integer >= 2, got 1"):
        create_denoiser("dncnn", 1, 32, depth=1)
    with pytest.raises(ValueError, match="classifier must be a torch.nn.Module, got function"):
        DenoisedClassifier(DnCNN(1), lambda x: x)
    with pytest.raises(ValueError, match="classifier: the stability objective needs a classifier checkpoint"):
        train_denoiser(sigma=SIGMA, objective="stability", **TINY)
    with pytest.raises(ValueError, match="objective must be one of 'mse', 'stability', got 'l1'"):
        train_denoiser(sigma=SIGMA, objective="l1", **TINY)
    with pytest.raises(ValueError, match="sigma must be a number > 0, got 0"):
        train_denoiser(sigma=0, **TINY)


def test_stability_loss_is_a_kl_divergence() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    assert float(stability_loss(logits, logits)) == pytest.approx(0.0, abs=1e-7)
    p, q = torch.sigmoid(logits), torch.sigmoid(torch.tensor([[0.0, 1.0, -3.0]]))
    kl = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).mean()
    assert float(stability_loss(torch.tensor([[0.0, 1.0, -3.0]]), logits)) == pytest.approx(float(kl), rel=1e-5)


# --------------------------------------------------------------------------------------------- training


def heldout_mse(denoiser: nn.Module, images: torch.Tensor, seed: int) -> float:
    """MSE of ``denoiser`` on ``images`` with noise from a generator the test owns (not the trainer's)."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float(((denoiser(images + SIGMA * noise) - images) ** 2).mean())


def test_mse_training_lowers_heldout_mse_checkpoints_and_resumes(tmp_path) -> None:
    held_out = get_dataset("multidigits", split="test", seed=9, size=64).images  # never seen in training
    options = {"sigma": SIGMA, "arch": "dncnn", "arch_options": {"width": 8, "depth": 3}, "seed": 1, "lr": 3e-3,
               **{**TINY, "train_size": 640}}
    out = tmp_path / "den" / "mse.pt"
    denoiser, meta = train_denoiser(epochs=2, out=out, **options)
    assert [m["epoch"] for m in meta["metrics"]] == [1, 2] and [p.name for p in out.parent.iterdir()] == ["mse.pt"]
    untrained = create_denoiser("dncnn", 1, 32, width=8, depth=3)  # the identity: the noisy image itself
    noisy = heldout_mse(untrained, held_out, seed=4)
    assert noisy == pytest.approx(SIGMA**2, rel=0.02)
    trained = heldout_mse(denoiser, held_out, seed=4)
    assert trained < 0.5 * noisy, (trained, noisy)
    assert meta["metrics"][-1]["test_mse"] < 0.5 * meta["metrics"][-1]["noisy_mse"]

    loaded, saved = load_denoiser(out)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), denoiser(x))
    for key, value in {"sigma": SIGMA, "arch": "dncnn", "arch_options": {"width": 8, "depth": 3}, "image_size": 32,
                       "in_channels": 1, "dataset": "multidigits", "objective": "mse", "classifier": None,
                       "epoch": 2, "train_size": 640, "clamp": False}.items():
        assert saved[key] == value, key

    part = tmp_path / "part.pt"
    train_denoiser(epochs=1, out=part, **options)
    lines: list[str] = []
    resumed, resumed_meta = train_denoiser(epochs=2, out=part, resume=True, log=lines.append, **options)
    assert lines[0] == f"resuming {part} after epoch 1 of 2" and lines[1].startswith("epoch 2/2: mse loss")
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), denoiser.state_dict().values(),
                                                 strict=True))
    assert [m["train_loss"] for m in resumed_meta["metrics"]] == [m["train_loss"] for m in meta["metrics"]]
    with pytest.raises(ValueError, match=r"out: .*part\.pt already exists; continue training it with --resume"):
        train_denoiser(epochs=1, out=part, **options)  # a trained denoiser is never replaced unasked
    with pytest.raises(ValueError, match=r"resume: .*part\.pt was trained with other settings \(sigma: saved 0.5"):
        train_denoiser(epochs=3, out=part, resume=True, **{**options, "sigma": 0.25})


def test_stability_training_from_the_mse_denoiser(tmp_path) -> None:
    clf = tmp_path / "clean.pt"
    train("multidigits", sigma=0.0, epochs=1, out=clf, lr=3e-3, seed=0, **TINY)
    start = tmp_path / "mse.pt"
    options = {"sigma": SIGMA, "arch": "unet", "arch_options": {"width": 4, "levels": 1}, "classifier": clf, **TINY}
    _, mse_meta = train_denoiser(epochs=1, stability_epochs=0, out=start, **options)
    assert 0 <= mse_meta["metrics"][-1]["top1_agreement"] <= 1  # measured, not trained on
    denoiser, meta = train_denoiser(objective="stability", pretrained=start, epochs=1, out=tmp_path / "stab.pt",
                                    **options)
    assert meta["objective"] == "stability" and meta["pretrained"] == str(start)
    assert meta["classifier_sha256"] == mse_meta["classifier_sha256"] and len(meta["classifier_sha256"]) == 64
    assert meta["metrics"][0]["train_loss"] >= 0  # a KL divergence
    with pytest.raises(ValueError, match=r"pretrained: .*mse\.pt is a unet denoiser with options"):
        train_denoiser(objective="stability", pretrained=start, epochs=1,
                       **{**options, "arch_options": {"width": 8, "levels": 1}})


# ------------------------------------------------------------------------------------------ refusals


def test_denoiser_for_another_sigma_or_image_size_is_refused(tmp_path) -> None:
    path = tmp_path / "d.pt"
    denoiser = create_denoiser("dncnn", 1, 32, width=4, depth=2)
    save_denoiser_checkpoint(path, denoiser, {"arch": "dncnn", "arch_options": {"width": 4, "depth": 2},
                                              "in_channels": 1, "image_size": 32, "sigma": 0.5})
    _, meta = load_denoiser(path)
    check_denoiser(meta, sigma=0.5, image_size=32, in_channels=1)  # the right one passes
    with pytest.raises(ValueError, match=rf"denoiser {path} was trained for sigma = 0.5, not the sigma = 0.25"):
        check_denoiser(meta, sigma=0.25, image_size=32, in_channels=1, path=path)
    with pytest.raises(ValueError, match=r"denoiser was trained on 1x32x32 images, not the 1x64x64 images"):
        check_denoiser(meta, sigma=0.5, image_size=64, in_channels=1)
    with pytest.raises(ValueError, match=r"not the 3x32x32 images"):
        check_denoiser(meta, sigma=0.5, image_size=32, in_channels=3)


def test_files_that_are_not_denoisers_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="denoiser: no such file"):
        read_denoiser_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"denoiser: .*junk\.pt is not a MultiGuard denoiser: it is not a torch file"):
        read_denoiser_checkpoint(junk)
    classifier = tmp_path / "clf.pt"
    train("multidigits", sigma=0.5, epochs=1, out=classifier, **{**TINY, "train_size": 32, "test_size": 16})
    with pytest.raises(ValueError, match=r"it is a classifier checkpoint: pass it as --checkpoint"):
        read_denoiser_checkpoint(classifier)


# ----------------------------------------------------------------------- a classifier you already have


def test_train_epochs_zero_imports_a_state_dict_to_certify_without_training(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_nets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes, in_channels, image_size):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=4), nn.Flatten(),\n"
        "                         nn.Linear(4 * ((image_size - 3) // 4 + 1) ** 2, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_nets import tiny

    net = scrambled(tiny(10, 1, 32), 4)
    torch.save(net.state_dict(), tmp_path / "weights.pt")  # a plain state_dict, as any training code saves one
    options = {"arch": "my_nets:tiny", "sigma": 0.0, "epochs": 0, **{**TINY, "train_size": 32, "test_size": 32}}
    model, meta = train(pretrained=tmp_path / "weights.pt", out=tmp_path / "imported.pt", **options)
    assert meta["epoch"] == 0 and meta["metrics"][0]["epoch"] == 0 and meta["metrics"][0]["train_loss"] is None
    loaded, _ = load_checkpoint(tmp_path / "imported.pt")
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x)) and torch.equal(model(x), net(x))  # the weights, untouched
    with pytest.raises(ValueError, match="epochs: 0 epochs imports pretrained weights without training"):
        train(**options)
    torch.save(scrambled(tiny(3, 1, 32), 4).state_dict(), tmp_path / "three.pt")  # another head: must not pass
    with pytest.raises(ValueError, match=r"--pretrained .*three\.pt: does not fit the model as it is"):
        train(pretrained=tmp_path / "three.pt", **options)
    sys.modules.pop("my_nets", None)


# ------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_clean_classifier_and_denoiser_from_the_command_line(tmp_path, capsys) -> None:
    """train --sigma 0, train-denoiser, then certify / predict / attack with --denoiser, as a user runs them
    (the error variants and the report run in-process)."""
    clean = tmp_path / "clean.pt"
    proc = run("train", "--sigma", "0", "--epochs", "1", "--train-size", "200", "--test-size", "100",
               "--device", "cpu", "--out", str(clean))
    assert "sigma = 0): test mAP clean" in proc.stdout and "noisy" not in proc.stdout
    _, meta = load_checkpoint(clean)
    assert meta["sigma"] == 0.0 and meta["epoch"] == 1 and 0 < meta["metrics"][0]["clean_map"] <= 1
    assert_one_line_error_in_process(run_in_process(
        capsys, "certify", "--checkpoint", str(clean), "--num-inputs", "2", "--device", "cpu", "--quiet",
        "--out", str(tmp_path / "run0")), "trained without noise: pass --sigma")

    denoiser = tmp_path / "den.pt"
    proc = run("train-denoiser", "--sigma", "0.5", "--arch", "unet", "--arch-option", "width=4", "--classifier",
               str(clean), "--epochs", "1", "--stability-epochs", "1", "--train-size", "200", "--test-size", "50",
               "--device", "cpu", "--out", str(denoiser))
    assert "trained a unet denoiser (mse, then 1 stability epoch) for sigma = 0.5" in proc.stdout
    assert "top-1 agreement" in proc.stdout and "check on 50 held-out images with noise sigma = 0.5" in proc.stdout
    common = ["--checkpoint", str(clean), "--sigma", "0.5", "--device", "cpu"]
    run_dir = tmp_path / "run"
    certify_args = ["certify", *common, "--num-samples", "100", "--num-inputs", "4", "--quiet", "--out", str(run_dir)]
    run(*certify_args, "--denoiser", str(denoiser))
    recorded = json.loads((run_dir / "metadata.json").read_text())
    assert recorded["denoiser"] == str(denoiser) and recorded["denoiser_sha256"] == file_sha256(denoiser)
    assert recorded["denoiser_settings"]["arch"] == "unet" and recorded["denoiser_settings"]["objective"] == "mse"
    assert recorded["denoiser_settings"]["stability_epochs"] == 1 and recorded["denoiser_settings"]["epoch"] == 2
    other = tmp_path / "other.pt"
    save_denoiser_checkpoint(other, create_denoiser("unet", 1, 32, width=4), {
        "arch": "unet", "arch_options": {"width": 4}, "in_channels": 1, "image_size": 32, "sigma": 0.5})
    assert_one_line_error_in_process(run_in_process(capsys, *certify_args, "--resume", "--denoiser", str(other)),
                                     "denoiser_sha256")
    code, _, err = run_in_process(capsys, *certify_args, "--resume")  # without --denoiser: the run's own (issue 22)
    assert code == 0 and json.loads((run_dir / "metadata.json").read_text())["denoiser"] == str(denoiser), err
    code, out, _ = run_in_process(capsys, "report", str(run_dir), "--out", str(tmp_path / "report"))
    assert code == 0 and f"denoiser {denoiser} (unet, mse)" in out

    image = tmp_path / "digit.png"
    Image.fromarray((get_dataset("multidigits", split="test", size=1).images[0, 0].numpy() * 255).astype("uint8")
                    ).save(image)
    predicted = run("predict", *common, "--denoiser", str(denoiser), "--n0", "20", "--n", "100", "--json", str(image))
    answer = json.loads(predicted.stdout)[0]
    assert len(answer["labels"]) == 3
    # the answer names the denoiser it ran behind: its file, SHA-256 and training settings (issue 27)
    assert answer["denoiser"]["denoiser"] == str(denoiser) and answer["denoiser"]["sha256"] == file_sha256(denoiser)
    assert answer["denoiser"]["settings"]["arch"] == "unet"
    plain = json.loads(run("predict", *common, "--n0", "20", "--n", "100", "--json", str(image)).stdout)[0]
    assert plain["denoiser"] is None
    attack_dir = tmp_path / "attack"
    run("attack", *common, "--denoiser", str(denoiser), "--radii", "0.25", "--num-inputs", "2", "--steps", "2",
        "--samples", "4", "--n", "50", "--quiet", "--out", str(attack_dir))
    assert json.loads((attack_dir / "attack.json").read_text())["denoiser_sha256"] == file_sha256(denoiser)
    assert_one_line_error_in_process(run_in_process(
        capsys, "certify", "--checkpoint", str(clean), "--sigma", "0.25", "--device", "cpu", "--denoiser",
        str(denoiser), "--num-inputs", "2", "--quiet", "--out", str(tmp_path / "run25")),
        f"denoiser {denoiser} was trained for sigma = 0.5, not the sigma = 0.25")


def noisy_agreement(model: nn.Module, classifier: nn.Module, images: torch.Tensor, seed: int) -> float:
    """How often ``argmax model(x + eps) == argmax classifier(x)``, noise from a generator the test owns."""
    noise = SIGMA * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((model(images + noise).argmax(1) == classifier(images).argmax(1)).float().mean())


@pytest.mark.slow
def test_the_default_train_denoiser_improves_the_classifiers_noisy_agreement(tmp_path, capsys) -> None:
    """`train-denoiser --sigma 0.5 --classifier clean.pt` with every other setting at its default (the unet, MSE
    then stability through the classifier, in one command) on tiny data: behind the denoiser the clean classifier
    keeps its label on noisy held-out images far more often than alone, and the command says so at its end."""
    clean = tmp_path / "clean.pt"
    classifier, _ = train("multidigits", sigma=0.0, epochs=2, out=clean, lr=3e-3, seed=0,
                          **{**TINY, "train_size": 600})
    out = tmp_path / "den.pt"
    code, stdout, err = run_in_process(capsys, "train-denoiser", "--sigma", "0.5", "--classifier", str(clean),
                                       "--train-size", "400", "--test-size", "100", "--device", "cpu",
                                       "--out", str(out))
    assert code == 0, err
    assert "trained a unet denoiser (mse, then 8 stability epochs) for sigma = 0.5" in stdout
    assert "without the denoiser" in stdout
    denoiser, meta = load_denoiser(out)
    assert (meta["arch"], meta["arch_options"], meta["objective"], meta["epoch"], meta["stability_epochs"]) == (
        "unet", {"depth": 2, "levels": 2, "width": 32}, "mse", 12, 8)
    held_out = get_dataset("multidigits", split="test", seed=7, size=300).images  # never seen in training
    alone = noisy_agreement(classifier, classifier, held_out, seed=11)
    denoised = noisy_agreement(DenoisedClassifier(denoiser, classifier), classifier, held_out, seed=11)
    assert denoised > alone + 0.1, (denoised, alone)


def test_stability_epochs_follow_mse_and_resume_exactly(tmp_path) -> None:
    """MSE then stability in one call equals the same training interrupted at any epoch and resumed, and a resume
    that moves the switch to stability is refused naming it."""
    clf = tmp_path / "clean.pt"
    train("multidigits", sigma=0.0, epochs=1, out=clf, lr=3e-3, seed=0, **TINY)
    options = {"sigma": SIGMA, "arch": "dncnn", "arch_options": {"width": 4, "depth": 3}, "classifier": clf,
               "epochs": 1, "stability_epochs": 2, **TINY}
    whole, meta = train_denoiser(out=tmp_path / "whole.pt", **options)
    assert [m["epoch"] for m in meta["metrics"]] == [1, 2, 3] and meta["stability_after"] == 1
    lines: list[str] = []
    for stop in (1, 2):  # interrupted after the MSE epoch, and after the first stability epoch
        part = tmp_path / f"part{stop}.pt"
        train_denoiser(out=part, **{**options, "stability_epochs": stop - 1})
        resumed, resumed_meta = train_denoiser(out=part, resume=True, log=lines.append, **options)
        assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values(),
                                                     strict=True)), stop
        assert [m["train_loss"] for m in resumed_meta["metrics"]] == [m["train_loss"] for m in meta["metrics"]]
    assert any(line.startswith("epoch 3/3: stability loss") for line in lines)
    mse_only, _ = train_denoiser(**{**options, "stability_epochs": 0})
    assert not all(torch.equal(a, b) for a, b in zip(mse_only.state_dict().values(), whole.state_dict().values(),
                                                     strict=True))
    with pytest.raises(ValueError, match=r"resume: .*whole\.pt was trained with other settings \(stability_after: "
                                         r"saved 1, now 2\)"):
        train_denoiser(out=tmp_path / "whole.pt", resume=True, **{**options, "epochs": 2})
    with pytest.raises(ValueError, match="stability_epochs: stability epochs follow --objective mse, not stability"):
        train_denoiser(**{**options, "objective": "stability"})
    with pytest.raises(ValueError, match=r"classifier: stability epochs train through a classifier checkpoint"):
        train_denoiser(**{**options, "classifier": None})


@pytest.mark.slow
def test_denoiser_raises_certified_f1_of_a_clean_classifier(tmp_path) -> None:
    """The point of the feature, measured: a clean-trained classifier certifies almost nothing at R = 0.25 under
    sigma = 0.5 noise; behind an MSE denoiser trained a few epochs it certifies a good share of labels."""
    clf = tmp_path / "clean.pt"
    classifier, _ = train("multidigits", sigma=0.0, epochs=3, out=clf, lr=3e-3, seed=0,
                          **{**TINY, "train_size": 2000, "test_size": 200})
    denoiser, _ = train_denoiser(sigma=SIGMA, arch="dncnn", epochs=3, seed=0, **{**TINY, "train_size": 2000})
    test = get_dataset("multidigits", split="test", seed=0, size=60)
    labels = test.labels.numpy().astype(bool)
    radius = np.array([0.25])
    f1 = {}
    for name, model in (("alone", classifier), ("denoised", DenoisedClassifier(denoiser, classifier))):
        certificate = MultiGuard(model, 10, SIGMA).certify(test.images, labels, n=300, alpha=0.001, k=3, seed=0)
        f1[name] = float(certificate.metrics(radius).f1[0])
    assert f1["denoised"] > f1["alone"] + 0.10, f1  # measured: 0.215 against 0.035


@pytest.mark.slow
def test_denoised_demo_certifies_four_variants_on_the_same_inputs_and_resumes(tmp_path, monkeypatch) -> None:
    from multiguard import demo
    from multiguard.runs.folder import load_run

    tiny = {"classifier": {"epochs": 1, "train_size": 200, "test_size": 50, "lr": 3e-3},
            "denoiser": {"arch": "dncnn", "train_size": 200, "test_size": 50, "mse_epochs": 1, "stability_epochs": 1},
            "num_inputs": 4, "n": 100}
    monkeypatch.setattr(demo, "DENOISED_DEMO_SETTINGS", tiny)
    lines: list[str] = []
    result = demo.run_denoised_demo(tmp_path / "demo", device="cpu", log=lines.append)
    assert list(result.runs) == ["clean alone", "clean + MSE denoiser", "clean + stability denoiser", "noise-trained"]
    runs = {name: load_run(path) for name, path in result.runs.items()}
    assert all(np.array_equal(run.indices, runs["clean alone"].indices) for run in runs.values())  # same inputs
    assert [run.metadata["denoiser_settings"] and run.metadata["denoiser_settings"]["objective"]
            for run in runs.values()] == [None, "mse", "stability", None]
    assert runs["clean alone"].metadata["train_sigma"] == 0.0 and runs["noise-trained"].metadata["train_sigma"] == 0.5
    assert "denoiser-stability.pt (dncnn, stability)" in result.report.summary
    again: list[str] = []
    demo.run_denoised_demo(tmp_path / "demo", device="cpu", log=again.append)
    assert sum("4 found on disk" in line for line in again) == 4  # nothing sampled twice
