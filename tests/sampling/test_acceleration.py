"""Tests of the speed levers (multiguard.sampling.acceleration) through MultiGuard, on real torch models."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from multiguard import MultiGuard
from multiguard.sampling.acceleration import PRECISIONS, SamplingMode, auto_precision, has_native_bf16, resolve_mode

# ------------------------------------------------------------------------------------------------ models


class SmallCNN(torch.nn.Module):
    """Convolution, BatchNorm, pooling and a linear head: the layers autocast and channels_last change."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(32 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def seeded_cnn() -> SmallCNN:
    """A SmallCNN with fixed random weights; at sigma = 0.5 the noise moves its top-k' around."""
    torch.manual_seed(0)
    return SmallCNN().eval()


class ModeRecorder(torch.nn.Module):
    """Scores from a linear map; records, for every forward, the input and the autocast state it ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 4 * 4, 4)
        self.inputs: list[torch.Tensor] = []
        self.autocast: list[torch.dtype | None] = []
        self.score_dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
            enabled, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
        else:
            enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        self.autocast.append(dtype if enabled else None)
        scores = self.linear(x.reshape(x.shape[0], -1))
        self.score_dtypes.append(scores.dtype)
        return scores


class SignModel(torch.nn.Module):
    """Scores ``(z, -z)`` of a scalar input z, by a linear layer with weights +1 and -1 and no bias.

    Under bf16 or fp16 autocast the input is rounded and the products by +-1 and the sum with nothing are
    exact, so the scores are ``(r(z), -r(z))`` for a sign-preserving rounding r: the top-1 label (0 when
    z > 0, 1 when z < 0) is the same as in fp32. Its probability under noise is exactly Phi(x / sigma).
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        self.score_dtypes: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.linear(x)
        self.score_dtypes.add(scores.dtype)
        return scores


class RangeCheckedLinear(torch.nn.Module):
    """A linear model that refuses out-of-range inputs with a data-dependent Python branch.

    ``bool(tensor)`` inside ``forward`` cannot be traced into one graph, so ``torch.compile(fullgraph=True)``
    fails on it: a model that really cannot be compiled.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 100).any()):
            raise ValueError("input out of range for RangeCheckedLinear")
        return self.linear(x)


MODES = [
    pytest.param({"precision": "fp32"}, id="fp32"),
    pytest.param({"precision": "fp32", "channels_last": True}, id="channels_last"),
    pytest.param({"precision": "bf16"}, id="bf16"),
    pytest.param({"precision": "bf16", "channels_last": True}, id="bf16+channels_last"),
    pytest.param({"precision": "fp16"}, id="fp16"),
]


# ------------------------------------------------------------------------------------------------ the mode


def cpuinfo_has_bf16() -> bool:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return False
    flags = set()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def test_auto_picks_bf16_and_channels_last_only_where_bf16_is_native() -> None:
    native = has_native_bf16("cpu")
    if Path("/proc/cpuinfo").exists():
        assert native == cpuinfo_has_bf16()
    assert auto_precision("cpu") == (("bf16", True) if native else ("fp32", False))
    auto = resolve_mode("auto", device="cpu")
    assert auto == SamplingMode("bf16" if native else "fp32", channels_last=native, compile=False)
    assert resolve_mode("auto", channels_last=False, device="cpu").channels_last is False
    assert has_native_bf16("meta") is False
    guard = MultiGuard(torch.nn.Linear(4, 3), num_classes=3, sigma=0.5, precision="auto")
    assert guard.mode == auto
    assert guard.autocast_dtype == (torch.bfloat16 if native else None)


def test_modes_resolve_and_describe_themselves() -> None:
    assert resolve_mode() == SamplingMode("fp32", False, False)
    mode = resolve_mode("bf16", channels_last=True, compile=True)
    assert mode.autocast_dtype == torch.bfloat16 and mode.describe() == "bf16 + channels_last + compile"
    assert mode.as_metadata() == {"precision": "bf16", "channels_last": True, "compile": True}
    assert resolve_mode("fp16").autocast_dtype == torch.float16 and resolve_mode("fp32").autocast_dtype is None
    assert set(PRECISIONS) == {"fp32", "bf16", "fp16", "auto"}
    guard = MultiGuard(torch.nn.Linear(4, 3), num_classes=3, sigma=0.5, precision="bf16")
    assert guard.mode == SamplingMode("bf16") and "bf16" in repr(guard)
    with pytest.raises(TypeError, match="autocast_dtype"):  # the 0.1 spelling is gone (CHANGELOG.md)
        MultiGuard(torch.nn.Linear(4, 3), num_classes=3, sigma=0.5, autocast_dtype=torch.bfloat16)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"precision": "bfloat16"}, "precision"),
        ({"channels_last": "yes"}, "channels_last"),
        ({"compile": 1}, "compile"),
    ],
)
def test_bad_mode_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be"):
        MultiGuard(torch.nn.Linear(4, 3), num_classes=3, sigma=0.5, **kwargs)


def test_noise_is_added_in_fp32_before_any_cast_and_the_forward_runs_in_the_mode() -> None:
    x = torch.rand(2, 3, 4, 4)
    seen = {}
    for label, kwargs in (("fp32", {}), ("bf16", {"precision": "bf16", "channels_last": True}),
                          ("fp16", {"precision": "fp16"})):
        torch.manual_seed(0)
        model = ModeRecorder()
        MultiGuard(model, num_classes=4, sigma=0.5, **kwargs).sample_counts(x, n=120, seed=4, batch_size=50)
        seen[label] = model
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        assert set(seen[label].autocast) == {dtype}
        assert set(seen[label].score_dtypes) == {dtype or torch.float32}
        # The classifier receives the same fp32 inputs in every mode: x + sigma * noise, formed before autocast.
        assert all(batch.dtype == torch.float32 for batch in seen[label].inputs)
        for a, b in zip(seen["fp32"].inputs, seen[label].inputs, strict=True):
            assert torch.equal(a, b)
    assert seen["bf16"].inputs[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen["fp32"].inputs[0].is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------ determinism, batch sizes


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_is_deterministic_and_batch_size_invariant(mode: dict) -> None:
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    guard = MultiGuard(seeded_cnn(), num_classes=5, sigma=0.5, **mode)
    n = 250  # not a multiple of the noise block: blocks are cut at both ends of batches
    reference = guard.sample_counts(x, n=n, seed=3, batch_size=100, max_k_prime=3)
    np.testing.assert_array_equal(guard.sample_counts(x, n=n, seed=3, batch_size=100, max_k_prime=3), reference)
    for batch_size in (37, 1000):
        np.testing.assert_array_equal(
            guard.sample_counts(x, n=n, seed=3, batch_size=batch_size, max_k_prime=3), reference
        )
    alone = guard.sample_counts(x[2:3], n=n, seed=3, index=[2], batch_size=64, max_k_prime=3)
    np.testing.assert_array_equal(alone[0], reference[2])
    # The noise moves the top-k' around: the counts are not all on one label.
    assert (reference[:, 0].max(axis=1) < n).any()


def test_reduced_precision_is_a_different_classifier_with_close_counts() -> None:
    """bf16 changes the base classifier (so counts may differ from fp32) but only near its decision
    boundaries: the counts stay within a few percent of n."""
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    model = seeded_cnn()
    fp32 = MultiGuard(model, num_classes=5, sigma=0.5).sample_counts(x, n=1000, seed=3)
    bf16 = MultiGuard(model, num_classes=5, sigma=0.5, precision="bf16").sample_counts(x, n=1000, seed=3)
    assert np.abs(fp32 - bf16).max() <= 30


# --------------------------------------------------------------------------------- exact probabilities


def binomial_p_values(counts: np.ndarray, n: int, probabilities: np.ndarray) -> np.ndarray:
    return np.array([stats.binomtest(int(k), n, float(p)).pvalue for k, p in zip(counts, probabilities, strict=True)])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_counts_match_exact_probabilities(precision: str) -> None:
    sigma, n = 0.5, 20_000
    x = np.array([[-0.4], [0.0], [0.15], [0.6]], dtype=np.float32)
    model = SignModel()
    counts = MultiGuard(model, num_classes=2, sigma=sigma, precision=precision).sample_counts(x, n=n, seed=11)
    assert model.score_dtypes == {torch.bfloat16 if precision == "bf16" else torch.float16}
    exact = stats.norm.cdf(x[:, 0] / sigma)  # Pr(label 0 on top) = Pr(x + sigma * eps > 0)
    assert (binomial_p_values(counts[:, 0], n, exact) > 1e-4).all()
    # Rounding cannot change this model's top-1: the counts are those of the fp32 classifier, sample for sample.
    fp32 = MultiGuard(SignModel(), num_classes=2, sigma=sigma).sample_counts(x, n=n, seed=11)
    np.testing.assert_array_equal(counts, fp32)
    # Control: the same test rejects probabilities that are off by a shift of 0.04 in x.
    shifted = stats.norm.cdf((x[:, 0] + 0.04) / sigma)
    assert (binomial_p_values(counts[:, 0], n, shifted) < 1e-4).all()


# ----------------------------------------------------------------------------------------- torch.compile


def test_compile_falls_back_cleanly_for_a_model_that_cannot_be_compiled(caplog: pytest.LogCaptureFixture) -> None:
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(2))
    eager = MultiGuard(RangeCheckedLinear(), num_classes=3, sigma=0.5).sample_counts(x, n=300, seed=1)
    guard = MultiGuard(RangeCheckedLinear(), num_classes=3, sigma=0.5, compile=True)
    with caplog.at_level(logging.WARNING, logger="multiguard"):
        counts = guard.sample_counts(x, n=300, seed=1)
        again = guard.sample_counts(x, n=300, seed=1)
    np.testing.assert_array_equal(counts, eager)
    np.testing.assert_array_equal(again, eager)
    assert guard.compile_seconds is None and guard.compile_fallback
    assert guard.compiled_model.compiled is False
    lines = [record.getMessage() for record in caplog.records if record.name == "multiguard"]
    assert len(lines) == 1 and lines[0].startswith("torch.compile failed") and "\n" not in lines[0]
    # The model's own errors are not swallowed by the fallback.
    with pytest.raises(ValueError, match="out of range"):
        MultiGuard(RangeCheckedLinear(), num_classes=3, sigma=0.5, compile=True).sample_counts(x + 1000, n=10)


@pytest.mark.slow
def test_compile_runs_the_fastest_mode_deterministically(caplog: pytest.LogCaptureFixture) -> None:
    """Where a C++ compiler exists, the CNN compiles (once, whatever the batch sizes) and its counts are
    deterministic, batch-size invariant and close to eager's; where none exists, it falls back cleanly."""
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    model = seeded_cnn()
    mode = {"precision": "bf16", "channels_last": True}
    eager = MultiGuard(model, num_classes=5, sigma=0.5, **mode).sample_counts(x, n=250, seed=3, batch_size=100)
    guard = MultiGuard(model, num_classes=5, sigma=0.5, compile=True, **mode)
    with caplog.at_level(logging.WARNING, logger="multiguard"):
        warm = guard.warm_up(x, batch_size=100)
        reference = guard.sample_counts(x, n=250, seed=3, batch_size=100)
        for batch_size in (37, 100, 1000):  # padded to, or cut into, the compiled batch of 100
            np.testing.assert_array_equal(guard.sample_counts(x, n=250, seed=3, batch_size=batch_size), reference)
    if shutil.which("g++") or shutil.which("c++"):
        assert guard.compiled_model.compiled is True, guard.compile_fallback
        assert 0 < guard.compile_seconds <= warm and guard.compiled_model.compiled_batch_size == 100
        assert not [record for record in caplog.records if record.name == "multiguard"]
        assert np.abs(reference - eager).max() <= 10  # fused kernels round differently, rarely
    else:
        assert guard.compiled_model.compiled is False and guard.compile_fallback
        np.testing.assert_array_equal(reference, eager)


# --------------------------------------------------------------------------------- the command line


def _write_pngs(folder: Path, count: int) -> list[str]:
    from PIL import Image

    from multiguard.data import get_dataset

    images = get_dataset("multidigits", split="test", size=count, seed=0)
    paths = []
    for i in range(count):
        path = folder / f"digit{i}.png"
        Image.fromarray((images[i][0][0].numpy() * 255).round().astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    return paths


@pytest.mark.slow
def test_the_mode_is_recorded_enforced_reported_and_reused(tmp_path_factory, tmp_path: Path, capsys) -> None:
    import json

    from clitools import assert_one_line_error_in_process, run, run_in_process, tiny_checkpoint

    from multiguard.models.checkpoints import load_checkpoint, smoothed_from_checkpoint
    from multiguard.runs.folder import load_run
    from multiguard.runs.job import load_batch
    from multiguard.sampling.modes import MODE_DEFAULTS

    checkpoint = str(tiny_checkpoint(tmp_path_factory))
    out = tmp_path / "run"
    common = ["--checkpoint", checkpoint, "--num-samples", "300", "--max-k-prime", "2", "--num-inputs", "6",
              "--chunk-size", "3", "--seed", "5", "--device", "cpu", "--out", str(out)]
    first = run("certify", *common, "--precision", "bf16", "--channels-last", "--shard", "0/2")
    assert "sampling mode: bf16 + channels_last" in first.stdout
    metadata = json.loads((out / "metadata.json").read_text())
    assert (metadata["precision"], metadata["channels_last"], metadata["compile"]) == ("bf16", True, False)

    # A resume in another mode is refused, naming the field; in the same mode it finishes the run.
    refused = run_in_process(capsys, "certify", *common, "--precision", "fp32", "--channels-last", "--resume")
    assert_one_line_error_in_process(refused, "precision", "'bf16'", "'fp32'")
    refused = run_in_process(capsys, "certify", *common, "--precision", "bf16", "--resume")
    assert_one_line_error_in_process(refused, "channels_last")
    assert not (out / "counts.npz").exists()
    run("certify", *common, "--precision", "bf16", "--channels-last", "--resume", "--quiet")
    run_dir = load_run(out)

    # The report names the mode of every run.
    code, _, _ = run_in_process(capsys, "report", str(out), "--k", "2", "--radii", "0:1:0.25", "--quiet",
                                "--out", str(tmp_path / "report"))
    assert code == 0 and "mode bf16 + channels_last" in (tmp_path / "report" / "summary.md").read_text()

    # predict in the run's mode gives the run's counts for the same inputs and seed.
    model, meta = load_checkpoint(checkpoint)
    mode = {name: run_dir.metadata[name] for name in MODE_DEFAULTS}
    smoother = smoothed_from_checkpoint(model, meta, k_prime=2, **mode, noise=run_dir.metadata["noise"])
    from multiguard.models.checkpoints import dataset_for_checkpoint

    data, _ = dataset_for_checkpoint(meta)
    x, _ = load_batch(data, run_dir.indices)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command line ran (clitools.env)
    try:
        prediction = smoother.predict(x, k=2, n0=50, n=300, seed=5, index=run_dir.indices)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(prediction.counts, run_dir.counts[:, 1])

    # predict --mode-of takes the run's mode and says so in its output; mixing it with a mode flag is refused.
    paths = _write_pngs(tmp_path, 1)
    code, text, _ = run_in_process(capsys, "predict", "--checkpoint", checkpoint, *paths, "--n", "100", "--device",
                                   "cpu", "--mode-of", str(out), "--json")
    assert code == 0
    assert json.loads(text)[0]["mode"] == {"precision": "bf16", "channels_last": True, "compile": False}
    refused = run_in_process(capsys, "predict", "--checkpoint", checkpoint, *paths, "--mode-of", str(out),
                             "--precision", "fp32")
    assert_one_line_error_in_process(refused, "mode-of")

    # attack certifies and measures in the mode it is given, and records it.
    code, text, _ = run_in_process(capsys, "attack", "--checkpoint", checkpoint, "--num-inputs", "2", "--steps", "1",
                                   "--samples", "4", "--n", "100", "--radii", "0.25", "--device", "cpu",
                                   "--precision", "bf16", "--out", str(tmp_path / "attack"))
    assert code == 0 and "sampling mode: bf16" in text
    assert json.loads((tmp_path / "attack" / "attack.json").read_text())["precision"] == "bf16"


@pytest.mark.slow
def test_certify_compile_reports_compile_time_apart(tmp_path_factory, tmp_path: Path) -> None:
    import json

    from clitools import run, tiny_checkpoint

    checkpoint = str(tiny_checkpoint(tmp_path_factory))
    out = tmp_path / "run"
    proc = run("certify", "--checkpoint", checkpoint, "--num-samples", "200", "--num-inputs", "3", "--batch-size",
               "200", "--device", "cpu", "--precision", "auto", "--compile", "--out", str(out))
    native = has_native_bf16("cpu")
    assert f"sampling mode: {'bf16 + channels_last' if native else 'fp32'} + compile (--precision auto on cpu)" \
        in proc.stdout
    if shutil.which("g++") or shutil.which("c++"):
        assert "torch.compile: compiled in" in proc.stdout and "not counted in the sampling time" in proc.stdout
    else:
        assert "torch.compile: not compiled" in proc.stdout
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["compile"] is True and metadata["precision"] == ("bf16" if native else "fp32")


def test_demo_defaults_to_the_mode_of_the_readmes_tables_and_help_says_what_auto_picks(capsys) -> None:
    """The demo's default is fp32 + compile, the mode the README's tables were measured in, so `make demo`
    prints them (auto would pick bf16 on a CPU with native bf16: another base classifier, other last digits)."""
    import inspect

    from clitools import run_in_process

    from multiguard.cli import build_parser
    from multiguard.demo import run_demo

    args = build_parser().parse_args(["demo"])
    assert (args.precision or args.default_precision, args.channels_last, args.compile) == ("fp32", None, True)
    defaults = inspect.signature(run_demo).parameters
    assert defaults["precision"].default == "fp32" and defaults["compile"].default is True
    args = build_parser().parse_args(["certify", "--checkpoint", "m.pt", "--out", "r"])
    assert (args.precision or args.default_precision, args.channels_last, args.compile) == ("fp32", None, False)
    for command, default in (("demo", "fp32"), ("certify", "fp32"), ("predict", "fp32"), ("attack", "fp32")):
        code, text, _ = run_in_process(capsys, command, "--help")
        text = " ".join(text.split())
        assert code == 0 and f"(default: {default})" in text and "auto picks bf16 + channels_last" in text
        assert ("--no-compile" if command == "demo" else "--compile") in text
