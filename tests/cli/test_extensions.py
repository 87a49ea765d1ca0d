"""Every door works without other edits: an architecture, a denoiser architecture, a precision mode and a command
registered in-process are usable from the command line; retired names warn and still work; the README's
"Extending multiguard" examples run as written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import CERTIFY_ARGS, assert_one_line_error_in_process, env, load_counts, run_in_process

from multiguard.cli.commands import COMMANDS, Command
from multiguard.denoising.architectures import DENOISER_ARCHITECTURES, DenoiserArchitectureRecord
from multiguard.models.architectures import ARCHITECTURES
from multiguard.sampling.modes import PRECISION_MODES, PrecisionRecord

README = Path(__file__).resolve().parents[2] / "docs" / "extending.md"  # its examples
TRAIN_TINY = ["--epochs", "1", "--train-size", "32", "--test-size", "16", "--device", "cpu", "--quiet"]


def _flat_classifier(num_classes: int, in_channels: int = 3, image_size: int = 32) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size**2, num_classes))


@pytest.mark.slow
def test_a_registered_architecture_trains_and_certifies_from_the_command_line(tmp_path, capsys):
    model, run_dir = tmp_path / "model.pt", tmp_path / "run"
    result = run_in_process(capsys, "train", "--arch", "flat_test", *TRAIN_TINY, "--out", str(model))
    assert_one_line_error_in_process(result, "'flat_test'", "'small_cnn'")  # control: unknown before it is registered
    ARCHITECTURES.register("flat_test", help="a linear map of the flattened image")(_flat_classifier)
    try:
        assert "flat_test" in " ".join(run_in_process(capsys, "train", "--help")[1].split())
        assert run_in_process(capsys, "train", "--arch", "flat_test", *TRAIN_TINY, "--out", str(model))[0] == 0
        code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(model), "--num-samples", "50",
                                      "--num-inputs", "4", "--chunk-size", "2", "--device", "cpu", "--quiet",
                                      "--out", str(run_dir))
        assert code == 0, err
    finally:
        ARCHITECTURES.unregister("flat_test")
    assert load_counts(run_dir)["counts"].shape[0] == 4
    assert json.loads((run_dir / "metadata.json").read_text())["arch"] == "flat_test"


def _hub(name: str, *, num_classes: int, in_channels: int, image_size: int, pretrained: bool):
    """A family of the test's own: ``hub:linear`` a linear map of the flattened image, ``hub:wide`` one hidden layer,
    ``hub:broken`` a model whose output has the wrong shape (caught by the output check)."""
    flat = in_channels * image_size**2
    if name == "linear":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(flat, num_classes)), (0.5,), (0.25,)
    if name == "wide":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(flat, 16), torch.nn.ReLU(),
                                   torch.nn.Linear(16, num_classes))
    if name == "broken":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(flat, num_classes + 1))
    raise ValueError(f"arch: the hub has no model {name!r}")


def test_a_registered_prefix_family_builds_its_models_by_name(tmp_path, capsys):
    from multiguard.models.architectures import ARCH_PREFIXES, arch_forms
    from multiguard.models.checkpoints import load_checkpoint
    from multiguard.models.factory import create_model

    with pytest.raises(ValueError, match="myhub"):  # control: before it is registered, a module that is not there
        create_model("myhub:linear", num_classes=3, image_size=8, in_channels=1)
    assert "myhub:<name>" not in " ".join(run_in_process(capsys, "train", "--help")[1].split())
    ARCH_PREFIXES.register("myhub", _hub, help="the test's hub")
    try:
        assert "myhub:<name>" in " ".join(run_in_process(capsys, "train", "--help")[1].split())
        assert "'myhub:<name>'" in arch_forms()
        model = create_model("myhub:linear", num_classes=3, image_size=8, in_channels=1)
        assert model.arch == "myhub:linear" and (model.mean, model.std) == ([0.5], [0.25])  # the family's default
        assert model(torch.rand(5, 1, 8, 8)).shape == (5, 3)
        wide = create_model("myhub:wide", num_classes=3, image_size=8, in_channels=2)
        assert (wide.mean, wide.std) == ([0.0, 0.0], [1.0, 1.0]) and wide.net[1].out_features == 16
        with pytest.raises(ValueError, match=r"returns shape \(2, 4\).*\(2, 3\)"):
            create_model("myhub:broken", num_classes=3, image_size=8, in_channels=1)
        with pytest.raises(ValueError, match="the hub has no model 'none'"):
            create_model("myhub:none", num_classes=3, image_size=8, in_channels=1)
        with pytest.raises(ValueError, match="only timm:<name> and torchvision:<name> models have ImageNet"):
            create_model("myhub:linear", num_classes=3, image_size=8, in_channels=1, pretrained="imagenet")
        out = tmp_path / "hub.pt"
        code, _, err = run_in_process(capsys, "train", "--arch", "myhub:wide", *TRAIN_TINY, "--image-size", "8",
                                      "--out", str(out))
        assert code == 0, err
        loaded, meta = load_checkpoint(out)
        assert meta["arch"] == "myhub:wide" and loaded.net[1].out_features == 16
    finally:
        ARCH_PREFIXES.unregister("myhub")


class _Smoothing(torch.nn.Module):
    """A residual 3x3 convolution of ``width`` hidden channels."""

    def __init__(self, in_channels: int = 3, width: int = 4) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(width, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


@pytest.mark.slow
def test_a_registered_denoiser_architecture_trains_and_sits_in_front_of_a_classifier(tmp_path, capsys,
                                                                                      tiny_model_checkpoint):
    from multiguard.denoising.denoisers import load_denoiser

    denoiser = tmp_path / "denoiser.pt"
    args = ["train-denoiser", "--sigma", "0.5", "--arch", "smooth_test", "--arch-option", "width=3", *TRAIN_TINY,
            "--out", str(denoiser)]
    assert_one_line_error_in_process(run_in_process(capsys, *args), "'smooth_test'", "'dncnn'")
    DENOISER_ARCHITECTURES.register("smooth_test", _Smoothing, record=DenoiserArchitectureRecord(options=("width",)))
    try:
        assert run_in_process(capsys, *args)[0] == 0
        net, meta = load_denoiser(denoiser)
        assert (meta["arch"], meta["arch_options"]) == ("smooth_test", {"width": 3})
        assert isinstance(net, _Smoothing) and net.body[0].out_channels == 3
        code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(tiny_model_checkpoint), "--denoiser",
                                      str(denoiser), "--num-samples", "50", "--num-inputs", "2", "--device", "cpu",
                                      "--quiet", "--out", str(tmp_path / "run"))
        assert code == 0, err
    finally:
        DENOISER_ARCHITECTURES.unregister("smooth_test")


@pytest.mark.slow
def test_a_registered_precision_mode_is_a_choice_and_runs_its_autocast(tmp_path, capsys, tiny_model_checkpoint):
    args = ["certify", "--checkpoint", str(tiny_model_checkpoint), *CERTIFY_ARGS, "--num-inputs", "4",
            "--device", "cpu", "--quiet"]
    result = run_in_process(capsys, *args, "--precision", "full", "--out", str(tmp_path / "refused"))
    assert_one_line_error_in_process(result, "invalid choice: 'full'")  # control: not a choice before
    assert run_in_process(capsys, *args, "--precision", "fp32", "--out", str(tmp_path / "fp32"))[0] == 0
    PRECISION_MODES.register("full", "full", help="fp32 under another name", record=PrecisionRecord())
    try:
        code, _, err = run_in_process(capsys, *args, "--precision", "full", "--out", str(tmp_path / "full"))
        assert code == 0, err
    finally:
        PRECISION_MODES.unregister("full")
    assert json.loads((tmp_path / "full" / "metadata.json").read_text())["precision"] == "full"
    np.testing.assert_array_equal(load_counts(tmp_path / "full")["counts"], load_counts(tmp_path / "fp32")["counts"])


class _Shrink(torch.nn.Module):
    """A denoiser of the test's own source form: pulls every pixel towards 0.5 by a fixed factor."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.identity = {"kind": "shrink", "factor": factor}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 + self.factor * (x - 0.5)


def test_a_registered_denoiser_source_is_a_denoiser_form_of_certify(tmp_path, capsys, tiny_model_checkpoint):
    from multiguard.denoising.sources import DENOISER_SOURCES, DenoiserSourceRecord

    args = ["certify", "--checkpoint", str(tiny_model_checkpoint), *CERTIFY_ARGS, "--num-inputs", "4",
            "--device", "cpu", "--quiet"]
    result = run_in_process(capsys, *args, "--denoiser", "shrink:0.5", "--out", str(tmp_path / "refused"))
    assert_one_line_error_in_process(result, "shrink:0.5")  # control: before it is registered, a missing file

    def shrink(spec, *, sigma, image_size, in_channels, device):
        return _Shrink(float(spec))

    DENOISER_SOURCES.register("shrink", shrink, record=DenoiserSourceRecord(spec="<factor>"),
                              help="pull pixels towards grey")
    try:
        assert "shrink:<factor>" in " ".join(run_in_process(capsys, "certify", "--help")[1].split())
        code, _, err = run_in_process(capsys, *args, "--denoiser", "shrink:0.5", "--out", str(tmp_path / "half"))
        assert code == 0, err
        code, _, err = run_in_process(capsys, *args, "--denoiser", "shrink:0.5", "--resume", "--out",
                                      str(tmp_path / "half"))
        assert code == 0, err
        assert_one_line_error_in_process(run_in_process(
            capsys, *args, "--denoiser", "shrink:0.25", "--resume", "--out", str(tmp_path / "half")),
            "denoiser_sha256", "factor: the run has 0.5, the arguments give 0.25")
    finally:
        DENOISER_SOURCES.unregister("shrink")
    meta = json.loads((tmp_path / "half" / "metadata.json").read_text())
    assert meta["denoiser"] == "shrink:0.5" and meta["denoiser_settings"] == {"kind": "shrink", "factor": 0.5}
    assert not np.array_equal(load_counts(tmp_path / "half")["counts"],
                              load_counts(run_dir_plain(tmp_path, capsys, args))["counts"])


def run_dir_plain(tmp_path: Path, capsys, args: list[str]) -> Path:
    out = tmp_path / "plain"
    assert run_in_process(capsys, *args, "--out", str(out))[0] == 0
    return out


def test_a_registered_command_runs_with_shared_option_groups(capsys):
    from multiguard.cli.options import add_output

    def hello(args) -> int:
        print(f"hello {args.name} into {args.out}")
        return 0

    def options(parser) -> None:
        parser.add_argument("--name", default="world")
        add_output(parser, metavar="DIR", help="where nothing goes")

    assert run_in_process(capsys, "hello", "--out", "x")[0] == 2  # control: no such command yet
    COMMANDS.register("hello", Command(hello, "Say hello.", options), help="say hello")
    try:
        code, out, _ = run_in_process(capsys, "hello", "--name", "you", "--out", "x")
    finally:
        COMMANDS.unregister("hello")
    assert (code, out) == (0, "hello you into x\n")


# ---------------------------------------------------------------------------------------- retired names


@pytest.mark.parametrize("old", ["multiguard.certify", "multiguard.smoothing", "multiguard.pipeline",
                                 "multiguard.runs.runs",
                                 "multiguard.report", "multiguard.deprecation", "multiguard.checkpoint_files"])
def test_the_flat_modules_of_0_1_are_gone_not_half_working(old):
    """0.2.0 moved every module into a room (CHANGELOG.md lists old -> new); the old paths raise, no shim."""
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_the_retired_keywords_of_0_1_are_refused(tiny_run, tmp_path):
    from multiguard.evaluation import attack, report

    with pytest.raises(TypeError, match="radii"):
        report.make_report([tiny_run], tmp_path / "old", k=[2], radii="0:1:0.25")
    for name in ("parse_radii", "DEFAULT_RADIUS_GRID", "DEFAULT_RADII"):
        assert not hasattr(report, name)
    assert not hasattr(attack, "evaluation_seed")


# ------------------------------------------------------------------------------------------- README examples


def readme_example(name: str) -> str:
    """The python block after ``<!-- example: NAME -->`` in docs/extending.md."""
    match = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"docs/extending.md has no example {name!r}"
    return match.group(1)


def _run_example(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_the_readme_architecture_example_runs(tmp_path):
    code = readme_example("architecture")
    assert len(code.strip().splitlines()) <= 12
    proc = _run_example(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint: tiny.pt" in proc.stdout and (tmp_path / "tiny.pt").is_file()


def test_the_readme_method_example_runs(tiny_run, tmp_path):
    code = readme_example("method")
    assert len(code.strip().splitlines()) <= 12
    run_dir = Path(shutil.copytree(tiny_run, tmp_path / "RUN_DIR"))
    proc = _run_example(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = (tmp_path / "report" / "curves.csv").read_text().splitlines()
    floor = [row for row in rows if ",none," in row]
    assert floor and all([float(v) for v in row.split(",")[-4:-1]] == [0.0, 0.0, 0.0] for row in floor), floor[:3]
    assert any(",multiguard," in row for row in rows) and run_dir.is_dir()


@pytest.mark.slow
def test_a_registered_futility_rule_is_a_choice_of_certify(tmp_path, capsys, tiny_model_checkpoint):
    from multiguard.certificates.sequential import FUTILITY_RULES

    args = ["certify", "--checkpoint", str(tiny_model_checkpoint), "--num-samples", "1000", "--num-inputs", "4",
            "--chunk-size", "2", "--stop-at-radius", "0.25", "--k", "2", "--device", "cpu", "--quiet"]
    result = run_in_process(capsys, *args, "--futility", "remaining-again", "--out", str(tmp_path / "refused"))
    assert_one_line_error_in_process(result, "invalid choice: 'remaining-again'")  # control: not a choice before
    assert run_in_process(capsys, *args, "--futility", "remaining", "--out", str(tmp_path / "remaining"))[0] == 0
    FUTILITY_RULES.register("remaining-again", FUTILITY_RULES.get("remaining"), help="remaining, by another name")
    try:
        assert "remaining-again" in " ".join(run_in_process(capsys, "certify", "--help")[1].split())
        code, _, err = run_in_process(capsys, *args, "--futility", "remaining-again", "--out", str(tmp_path / "again"))
        assert code == 0, err
    finally:
        FUTILITY_RULES.unregister("remaining-again")
    assert json.loads((tmp_path / "again" / "metadata.json").read_text())["stop_rule"]["futility"] == "remaining-again"
    same, other = load_counts(tmp_path / "again"), load_counts(tmp_path / "remaining")
    for key in ("counts", "samples"):
        np.testing.assert_array_equal(same[key], other[key], err_msg=key)


def test_the_composed_flag_is_read_from_the_dataset_registry(register_for_test, capsys):
    from multiguard.data import DATASETS, DatasetInfo, is_composed

    assert is_composed("multidigits") and not is_composed("voc2007") and not is_composed("no-such-dataset")
    info = DatasetInfo("toygrid", "composed toy", "train", "test", 8, False, (), lambda *a, **k: None, composed=True)
    register_for_test(DATASETS, "toygrid", info)
    assert is_composed("toygrid")
    help_text = " ".join(run_in_process(capsys, "datasets", "describe", "--help")[1].split())
    assert "multidigits and toygrid only: the seed that composes it" in help_text
