"""The training engine (issue 18): several processes, exact resume with every part of the state, objectives,
recipes, the ASL loss against timm's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from clitools import env

from multiguard.common.torch_files import read_checkpoint
from multiguard.data import get_dataset
from multiguard.models.checkpoints import load_checkpoint
from multiguard.models.factory import create_model
from multiguard.training.classifier import train
from multiguard.training.losses import AsymmetricLoss, paper_asl
from multiguard.training.objectives import ObjectiveContext, consistency_loss, vote_loss
from multiguard.training.registries import RECIPES, TRAINING_OBJECTIVES
from multiguard.training.settings import TrainSettings

TINY = {"train_size": 128, "test_size": 32, "batch_size": 16, "progress": False, "num_threads": 1}

# A model without BatchNorm: its gradient on a batch split over processes is the gradient on the whole batch.
NO_BATCHNORM = """
from torch import nn


def tiny(num_classes):
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, num_classes))
"""


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def torchrun(*args: str, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "multiguard", "train", *args]


@pytest.mark.slow
def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(tmp_path):
    """torchrun with 2 gloo processes (each half of every batch of 16) against one process: the per-epoch
    training loss agrees to 1e-5 relative (only the order of float sums differs: no noise, sigma = 0, and a
    model without BatchNorm, whose per-process batch statistics would differ), the weights to 1e-4, and the
    checkpoint has the same format and keys."""
    (tmp_path / "nobn.py").write_text(NO_BATCHNORM)
    arch = f"{tmp_path / 'nobn.py'}:tiny"
    common = ["--arch", arch, "--sigma", "0", "--epochs", "3", "--train-size", "128", "--test-size", "32",
              "--batch-size", "16", "--lr", "3e-3", "--threads", "1"]
    done = subprocess.run(torchrun(*common, "--out", str(tmp_path / "two.pt")), env=env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with warnings.catch_warnings():  # the tiny model's first outputs may all lie in [0, 1]: a warning, not our topic
        warnings.simplefilter("ignore", UserWarning)
        _, one = train("multidigits", arch=arch, sigma=0.0, epochs=3, lr=3e-3, out=tmp_path / "one.pt", **TINY)
    two = read_checkpoint(tmp_path / "two.pt")
    reference = read_checkpoint(tmp_path / "one.pt")
    assert two["meta"]["world_size"] == 2 and one["world_size"] == 1
    losses_one = [m["train_loss"] for m in one["metrics"]]
    losses_two = [m["train_loss"] for m in two["meta"]["metrics"]]
    assert losses_one == pytest.approx(losses_two, rel=1e-5)
    assert losses_one[-1] < losses_one[0]
    assert two.keys() == reference.keys() and two["meta"].keys() == reference["meta"].keys()
    assert two["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], value, rtol=1e-4, atol=1e-5)
    load_checkpoint(tmp_path / "two.pt")  # serves as any checkpoint does


@pytest.mark.slow
def test_a_two_process_run_killed_with_sigkill_resumes_and_finishes(tmp_path):
    """kill -9 of every process of a torchrun job once its first checkpoint is on disk; the checkpoint left
    behind is whole (atomic writes), and resuming it (here with one process) trains the missing epoch."""
    out = tmp_path / "md.pt"
    args = ["--epochs", "200", "--train-size", "256", "--test-size", "32", "--batch-size", "16", "--threads", "1",
            "--out", str(out)]
    job = subprocess.Popen(torchrun(*args), env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not out.exists() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.2)
        assert out.exists(), job.stderr.read().decode()[-3000:] if job.poll() is not None else "no checkpoint"
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    saved = read_checkpoint(out)["meta"]
    assert 1 <= saved["epoch"] < 200 and saved["world_size"] == 2
    _, meta = train("multidigits", epochs=saved["epoch"] + 1, train_size=256, test_size=32, batch_size=16,
                    progress=False, num_threads=1, out=out, resume=True)
    assert meta["epoch"] == saved["epoch"] + 1 and len(meta["metrics"]) == saved["epoch"] + 1
    assert meta["metrics"][: saved["epoch"]] == saved["metrics"]


class _Interrupt(Exception):
    pass


def _stop_after_first_epoch(line: str) -> None:
    if line.startswith("epoch 1/"):  # logged once epoch 1 is saved: as a crash right after the checkpoint
        raise _Interrupt


def test_an_interrupted_run_resumed_equals_an_uninterrupted_one_with_every_part_of_the_state(tmp_path):
    """AdamW with weight decay, a one-cycle schedule with warm-up, EMA weights, bf16 autocast, channels_last,
    accumulation, cutout + RandAugment and the consistency objective: stopped after epoch 1 of 2 and resumed,
    the served (EMA) weights equal those of the uninterrupted run bit for bit; the checkpoint says it holds the
    EMA weights and keeps the trained ones apart."""
    options = dict(ema=0.9, schedule="onecycle", warmup=0.3, optimizer="adamw", weight_decay=1e-4,
                   precision="bf16", channels_last=True, accumulate=2, augment=("cutout", "randaugment"),
                   objective="consistency", objective_options={"weight": 2, "warmup": 0.5})
    whole, meta = train("multidigits", epochs=2, **TINY, **options)
    out = tmp_path / "md.pt"
    with pytest.raises(_Interrupt):
        train("multidigits", epochs=2, out=out, log=_stop_after_first_epoch, **TINY, **options)
    assert read_checkpoint(out)["meta"]["epoch"] == 1
    resumed, resumed_meta = train("multidigits", epochs=2, out=out, resume=True, **TINY, **options)
    assert weights_equal(whole, resumed)
    assert [m["train_loss"] for m in resumed_meta["metrics"]] == [m["train_loss"] for m in meta["metrics"]]
    checkpoint = read_checkpoint(out)
    assert checkpoint["meta"]["weights"] == "ema"
    assert set(checkpoint["train_state"]) == {"model", "ema", "scheduler"}
    assert not weights_equal_dict(checkpoint["train_state"]["model"], checkpoint["state_dict"])
    served, _ = load_checkpoint(out)
    assert weights_equal(served, resumed)
    # without the EMA the served weights are the trained ones
    plain, plain_meta = train("multidigits", epochs=1, **TINY)
    assert plain_meta["weights"] == "trained"


def weights_equal_dict(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["gaussian", "consistency", "vote"])
def test_each_classifier_objective_lowers_its_loss_in_a_few_steps(name):
    """Ten Adam steps on 16 images: the objective's loss on the same batch with the same noise falls."""
    data = get_dataset("multidigits", split="train", size=16, seed=0)
    images, labels = data.images, data.labels.float()
    torch.manual_seed(0)
    model = create_model("small_cnn", 10, 32, in_channels=1)
    step = TRAINING_OBJECTIVES.get(name)(ObjectiveContext(0.5, criterion=paper_asl()))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_now() -> float:
        model.eval()  # BatchNorm in inference mode: the same function before and after
        with torch.no_grad():
            return float(step(model, images, labels, torch.Generator().manual_seed(1))[0])

    before = loss_now()
    model.train()
    for i in range(10):
        loss, _ = step(model, images, labels, torch.Generator().manual_seed(100 + i))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_now() < 0.9 * before


def test_the_consistency_loss_is_zero_when_all_copies_agree_and_positive_otherwise():
    agree = torch.randn(1, 4, 5).expand(3, 4, 5)
    assert float(consistency_loss(agree)) == pytest.approx(0.0, abs=1e-6)
    differ = agree.clone()
    differ[1, 2, 3] += 0.5
    assert float(consistency_loss(differ)) > 1e-4
    # the vote loss is smallest when the soft vote is spread evenly over the label set
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    even = torch.tensor([[[5.0, 5.0, -5.0, -5.0]]])
    lopsided = torch.tensor([[[8.0, 2.0, -5.0, -5.0]]])
    assert float(vote_loss(even, labels)) < float(vote_loss(lopsided, labels))


def test_objective_options_are_checked_and_recorded(tmp_path):
    with pytest.raises(ValueError, match=r"^objective_options: consistency has no option wieght; its options"):
        train("multidigits", epochs=1, objective="consistency", objective_options={"wieght": 2}, **TINY)
    _, meta = train("multidigits", epochs=1, objective="vote", objective_options={"weight": 0.5, "copies": 3},
                    out=tmp_path / "v.pt", **TINY)
    saved = read_checkpoint(tmp_path / "v.pt")["meta"]
    assert saved["objective"] == "vote" and saved["objective_options"] == {"weight": 0.5, "copies": 3}


def test_our_asl_equals_timms_asymmetric_loss_on_the_same_inputs():
    from timm.loss import AsymmetricLossMultiLabel

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 20, generator=generator) * 4
    targets = (torch.rand(64, 20, generator=generator) < 0.3).float()
    loss = AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05, eps=1e-8, reduction="batchmean")
    theirs = loss(logits, targets)  # summed over labels, averaged over inputs: our reduction
    ours = paper_asl()(logits, targets)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    per_input = AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=0, clip=0.05, eps=1e-8, reduction="none")
    torch.testing.assert_close(AsymmetricLoss(0, 4, 0.05, reduction="none")(logits, targets),
                               per_input(logits, targets).sum(-1), rtol=1e-5, atol=1e-5)


def test_a_recipe_prints_and_records_every_value_and_an_explicit_setting_overrides_it(tmp_path):
    values = {"sigma": 0.25, "batch_size": 16, "lr": 2e-3, "optimizer": "adamw", "weight_decay": 1e-4,
              "schedule": "cosine", "warmup": 0.25, "ema": 0.9, "epochs": 2}
    RECIPES.register("test-tiny", values, help="a tiny recipe for this test")
    try:
        lines: list[str] = []
        _, meta = train("multidigits", recipe="test-tiny", epochs=1, out=tmp_path / "r.pt", log=lines.append,
                        train_size=64, test_size=32, progress=False, num_threads=1)
        printed = lines[0]
        assert printed.startswith("recipe test-tiny: ")
        for key, value in values.items():
            assert f"{key} {value}" in printed, key
        assert any(line.strip() == "epochs: 1 (given; the recipe says 2)" for line in lines)
        saved = read_checkpoint(tmp_path / "r.pt")["meta"]
        assert saved["recipe"] == {"name": "test-tiny", "values": values, "overridden": {"epochs": [2, 1]}}
        assert (saved["epochs"], saved["sigma"], saved["schedule"], saved["ema"]) == (1, 0.25, "cosine", 0.9)
        assert saved["weights"] == "ema"
    finally:
        RECIPES.unregister("test-tiny")


def test_the_paper_recipes_set_what_the_issue_names():
    for name, dataset in (("asl-voc2007", "voc2007"), ("asl-coco2014", "coco2014"), ("asl-nuswide", "nuswide")):
        values = RECIPES.get(name)
        assert values["dataset"] == dataset and values["image_size"] == 448 and values["loss"] == "asl"
        assert values["arch"] == "timm:tresnet_l" and values["sigma"] == 0.5
        TrainSettings(**values)  # every value passes the settings' checks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainSettings().objective == "gaussian" and TrainSettings().recipe is None  # the demo's default


def test_the_command_line_recipe_prints_its_values_and_every_given_option_wins(tmp_path, capsys):
    """`multiguard train --recipe NAME`: every recipe value printed and recorded; an option given on the command
    line overrides it, even where the option's value is its own default (--sigma 0.5 against the recipe's 0.25)."""
    from multiguard.cli import main

    RECIPES.register("test-cli", {"sigma": 0.25, "epochs": 2, "schedule": "cosine", "warmup": 0.5},
                     help="a tiny recipe for this test")
    try:
        out = tmp_path / "r.pt"
        status = main(["train", "--recipe", "test-cli", "--sigma", "0.5", "--epochs", "1", "--train-size", "64",
                       "--test-size", "32", "--threads", "1", "--out", str(out)])
        printed = capsys.readouterr().out
        assert status == 0
        assert "recipe test-cli: sigma 0.25, epochs 2, schedule cosine, warmup 0.5" in printed
        assert "sigma: 0.5 (given; the recipe says 0.25)" in printed
        saved = read_checkpoint(out)["meta"]
        assert (saved["sigma"], saved["epochs"], saved["schedule"], saved["warmup"]) == (0.5, 1, "cosine", 0.5)
        assert saved["recipe"]["overridden"] == {"sigma": [0.25, 0.5], "epochs": [2, 1]}
    finally:
        RECIPES.unregister("test-cli")


@pytest.mark.slow
def test_denoisers_train_on_the_same_engine_under_torchrun_in_bf16(tmp_path):
    """`torchrun ... -m multiguard train-denoiser --precision bf16 --channels-last`: two gloo processes train a
    denoiser on the same core, rank 0 writes one checkpoint, which loads and denoises."""
    from multiguard.denoising.denoisers import load_denoiser

    out = tmp_path / "d.pt"
    command = torchrun("--sigma", "0.5", "--epochs", "1", "--train-size", "64", "--test-size", "16",
                       "--batch-size", "16", "--precision", "bf16", "--channels-last", "--out", str(out))
    command[command.index("train")] = "train-denoiser"
    done = subprocess.run(command, env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained a unet denoiser") == 1  # rank 0 reports for the job (unet: the default)
    denoiser, meta = load_denoiser(out)
    assert meta["epoch"] == 1 and meta["metrics"][0]["test_mse"] < meta["metrics"][0]["noisy_mse"]
    with torch.no_grad():
        assert denoiser(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)
