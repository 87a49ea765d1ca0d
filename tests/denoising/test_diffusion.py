"""One-step diffusion denoisers (multiguard.denoising.diffusion) with tiny randomly initialised diffusers models
built and
saved in the tests (no download): the timestep rule, the noise the model sees, the one-step formulas, the
resize policy, the recorded identity, and the one-line refusals (package missing, model not in the cache)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import env

from multiguard.common.seeds import NOISE_BLOCK, STREAM_ESTIMATION, noise_seed
from multiguard.denoising.denoisers import DenoisedClassifier
from multiguard.models.factory import create_model
from multiguard.sampling.smoothed import MultiGuard

diffusers = pytest.importorskip("diffusers")
from multiguard.denoising.diffusion import DiffusionDenoiser, load_diffusion_denoiser  # noqa: E402

SIZE = 8


def tiny_unet(sample_size: int = SIZE, channels: int = 1, seed: int = 0, **extra) -> torch.nn.Module:
    """A randomly initialised diffusers UNet2DModel of about 40k parameters, weights redrawn so it is not ~0."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                                 block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), **extra)
    return unet.eval()


def ddpm_abar(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """abar_t of DDPM's linear schedule (Ho et al. 2020), by hand: cumprod(1 - linspace(beta_start, beta_end))."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0).double().numpy()


def hand_timestep(abar: np.ndarray, noise_std: float) -> int:
    """The integer t minimising |sqrt((1 - abar_t) / abar_t) - noise_std|, smallest t on ties (by a loop)."""
    best, best_gap = 0, math.inf
    for t, a in enumerate(abar):
        gap = abs(math.sqrt((1 - a) / a) - noise_std)
        if gap < best_gap:
            best, best_gap = t, gap
    return best


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A diffusers model folder as ``save_pretrained`` writes it: UNet at the top, scheduler config beside it."""
    path = tmp_path_factory.mktemp("ddpm")
    tiny_unet().save_pretrained(path)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(path)
    return path


class Recorder:
    """Forward hooks on the real UNet: what it was called with and what it returned."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.outputs: list[torch.Tensor] = []
        unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self.inputs.append((sample.detach().clone(), torch.as_tensor(timestep).clone()))
        self.outputs.append(output.sample.detach().clone())


# ------------------------------------------------------------------------------------------ the timestep


@pytest.mark.parametrize("sigma", [0.05, 0.12, 0.25, 0.5, 1.0, 2.0])
def test_timestep_is_the_nearest_noise_level_to_two_sigma(folder: Path, sigma: float) -> None:
    denoiser = load_diffusion_denoiser(folder, sigma=sigma, image_size=SIZE, in_channels=1)
    abar = ddpm_abar()
    t = hand_timestep(abar, 2 * sigma)
    level = math.sqrt((1 - abar[t]) / abar[t])
    assert denoiser.timestep == t
    assert denoiser.noise_level == pytest.approx(level, rel=1e-6)
    assert denoiser.identity["timestep"] == t
    assert denoiser.identity["noise_mismatch"] == pytest.approx(level / (2 * sigma) - 1, abs=1e-6)
    # the mismatch is at most half the gap to the neighbouring levels
    neighbours = [math.sqrt((1 - abar[s]) / abar[s]) for s in (t - 1, t + 1)]
    assert abs(level - 2 * sigma) <= (neighbours[1] - neighbours[0]) / 2 + 1e-12


def test_noise_outside_the_models_levels_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"sigma: noise std 0.0002 .* outside the noise levels of its 1000 timesteps"):
        load_diffusion_denoiser(folder, sigma=1e-4, image_size=SIZE, in_channels=1)
    with pytest.raises(ValueError, match="outside the noise levels"):
        load_diffusion_denoiser(folder, sigma=500.0, image_size=SIZE, in_channels=1)


# ---------------------------------------------------------------------------------- the one-step call


def test_the_noise_the_model_sees_is_the_runs_noise(folder: Path) -> None:
    """Through MultiGuard: the UNet's input is sqrt(abar_t) (2 (x + sigma eps) - 1) with eps the run's documented
    noise block, and its noise part has the std the model expects at t up to the recorded mismatch."""
    sigma, seed, index = 0.25, 5, 3
    denoiser = load_diffusion_denoiser(folder, sigma=sigma, image_size=SIZE, in_channels=1)
    recorder = Recorder(denoiser.unet)
    classifier = create_model("small_cnn", 10, SIZE, in_channels=1).eval()
    x = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    MultiGuard(DenoisedClassifier(denoiser, classifier), 10, sigma).sample_counts(
        x, n=NOISE_BLOCK, seed=seed, index=[index], batch_size=NOISE_BLOCK)
    (sample, timestep), = recorder.inputs
    generator = torch.Generator().manual_seed(noise_seed(seed, index, 0, STREAM_ESTIMATION))
    eps = torch.empty(NOISE_BLOCK, 1, SIZE, SIZE).normal_(generator=generator)
    abar = ddpm_abar()
    t = hand_timestep(abar, 2 * sigma)
    scale = math.sqrt(abar[t])
    assert torch.equal(timestep, torch.full((NOISE_BLOCK,), t))
    torch.testing.assert_close(sample, scale * (2 * (x + sigma * eps) - 1), atol=1e-5, rtol=1e-5)
    # the noise in x_t, divided by the std the model expects at t, is eps / (1 + mismatch)
    seen = (sample - scale * (2 * x - 1)) / math.sqrt(1 - abar[t])
    torch.testing.assert_close(seen, eps / (1 + denoiser.noise_mismatch), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_one_step_output_is_the_clean_estimate_in_pixel_units(prediction_type: str) -> None:
    sigma = 0.5
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    denoiser = DiffusionDenoiser(tiny_unet(seed=1), scheduler, sigma=sigma, image_size=SIZE, in_channels=1)
    recorder = Recorder(denoiser.unet)
    generator = torch.Generator().manual_seed(1)
    noisy = torch.rand(6, 1, SIZE, SIZE, generator=generator)
    noisy = noisy + sigma * torch.randn(6, 1, SIZE, SIZE, generator=generator)
    with torch.no_grad():
        out = denoiser(noisy)
    assert out.shape == noisy.shape and out.dtype == noisy.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    (x_t, _), model_out = recorder.inputs[0], recorder.outputs[0]
    abar = ddpm_abar()[hand_timestep(ddpm_abar(), 2 * sigma)]
    if prediction_type == "epsilon":
        y0 = (x_t - math.sqrt(1 - abar) * model_out) / math.sqrt(abar)
    elif prediction_type == "sample":
        y0 = model_out
    else:
        y0 = math.sqrt(abar) * x_t - math.sqrt(1 - abar) * model_out
    torch.testing.assert_close(out, (y0.clamp(-1, 1) + 1) / 2, atol=1e-5, rtol=1e-5)
    assert 0 < float(out.std())  # not a constant image


def test_consistency_model_one_step_call(tmp_path: Path) -> None:
    """CMStochasticIterativeScheduler: sigma_k = 2 sigma exactly, the Karras input scaling, t = 250 log(sigma_k),
    and the boundary-condition combination c_skip y + c_out F(c_in y, t) (Song et al. 2023, appendix C); loaded
    from a folder laid out as a pipeline is (unet/ and scheduler/ subfolders)."""
    sigma, sigma_min, sigma_data = 0.3, 0.002, 0.5
    tiny_unet(seed=2).save_pretrained(tmp_path / "unet")
    diffusers.CMStochasticIterativeScheduler(sigma_min=sigma_min, sigma_data=sigma_data).save_pretrained(
        tmp_path / "scheduler")
    denoiser = load_diffusion_denoiser(tmp_path, sigma=sigma, image_size=SIZE, in_channels=1)
    assert denoiser.identity["scheduler"] == "CMStochasticIterativeScheduler"
    recorder = Recorder(denoiser.unet)
    noisy = torch.rand(4, 1, SIZE, SIZE)
    with torch.no_grad():
        out = denoiser(noisy)
    s = 2 * sigma
    assert denoiser.noise_level == s and denoiser.noise_mismatch == 0
    assert denoiser.identity["kind"] == "diffusers-consistency"
    (sample, timestep), model_out = recorder.inputs[0], recorder.outputs[0]
    torch.testing.assert_close(timestep.double(), torch.full((4,), 250 * math.log(s), dtype=torch.float64),
                               atol=1e-4, rtol=1e-6)
    y = 2 * noisy - 1
    torch.testing.assert_close(sample, y / math.sqrt(s**2 + sigma_data**2), atol=1e-6, rtol=1e-6)
    c_skip = sigma_data**2 / ((s - sigma_min) ** 2 + sigma_data**2)
    c_out = (s - sigma_min) * sigma_data / math.sqrt(s**2 + sigma_data**2)
    torch.testing.assert_close(out, ((c_skip * y + c_out * model_out).clamp(-1, 1) + 1) / 2, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------- resize policy


@pytest.mark.parametrize(("image_size", "mode", "gain"),
                         [(4, "nearest", 1.0), (16, "area", 0.5), (6, "bilinear", None)])
def test_resize_happens_after_the_noise_and_the_timestep_follows_the_effective_noise(
        folder: Path, image_size: int, mode: str, gain: float | None) -> None:
    sigma = 0.25
    denoiser = load_diffusion_denoiser(folder, sigma=sigma, image_size=image_size, in_channels=1)
    assert (denoiser.resize, denoiser.model_size, denoiser.image_size) == (mode, SIZE, image_size)
    # the effective noise: the std, over pixels, of the resized white noise (measured here on many draws)
    z = torch.randn(4000, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    resized = torch.nn.functional.interpolate(
        z, size=(SIZE, SIZE), **({"mode": mode} if mode != "bilinear" else
                                 {"mode": "bilinear", "align_corners": False, "antialias": True}))
    measured = float(resized.pow(2).mean().sqrt())
    if gain is not None:
        assert measured == pytest.approx(gain, rel=0.01)
    assert denoiser.effective_noise_std == pytest.approx(2 * sigma * measured, rel=0.01)
    assert denoiser.timestep == hand_timestep(ddpm_abar(), denoiser.effective_noise_std)
    recorder = Recorder(denoiser.unet)
    x = torch.rand(3, 1, image_size, image_size)
    with torch.no_grad():
        out = denoiser(x)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert recorder.inputs[0][0].shape == (3, 1, SIZE, SIZE)
    for key in ("resize", "model_size", "image_size", "effective_noise_std"):
        assert key in denoiser.identity


# -------------------------------------------------------------------------------------------- identity


def test_identity_names_the_folder_and_its_weights(folder: Path, tmp_path: Path) -> None:
    first = load_diffusion_denoiser(folder, sigma=0.5, image_size=SIZE, in_channels=1).identity
    assert first["source"] == str(folder.resolve()) and first["revision"] is None
    assert first["kind"] == "diffusers-ddpm" and first["scheduler"] == "DDPMScheduler"
    json.dumps(first)  # a run record
    other = tmp_path / "other"
    tiny_unet(seed=9).save_pretrained(other)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(other)
    second = load_diffusion_denoiser(other, sigma=0.5, image_size=SIZE, in_channels=1).identity
    assert second["weights_sha256"] != first["weights_sha256"]
    assert second["timestep"] == first["timestep"]


def test_refusals_are_one_line(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes 1 channel.* not the 3 of the certified images"):
        load_diffusion_denoiser(folder, sigma=0.5, image_size=SIZE, in_channels=3)
    with pytest.raises(ValueError, match="has no config.json .*not a diffusers UNet2DModel folder"):
        load_diffusion_denoiser(tmp_path, sigma=0.5, image_size=SIZE, in_channels=1)
    conditional = tmp_path / "conditional"
    tiny_unet(num_class_embeds=5).save_pretrained(conditional)
    diffusers.DDPMScheduler().save_pretrained(conditional)
    with pytest.raises(ValueError, match=r"class-conditional \(5 classes\): give class_label"):
        load_diffusion_denoiser(conditional, sigma=0.5, image_size=SIZE, in_channels=1)
    assert load_diffusion_denoiser(conditional, sigma=0.5, image_size=SIZE, in_channels=1,
                                   class_label=4).identity["class_label"] == 4


def test_a_model_id_not_in_the_cache_offline_is_one_line(monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError) as caught:
        load_diffusion_denoiser("multiguard-tests/no-such-model", sigma=0.5, image_size=SIZE, in_channels=1)
    message = str(caught.value)
    assert "\n" not in message
    assert "diffusers:multiguard-tests/no-such-model is not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message


def test_without_diffusers_one_line_names_the_extra(folder: Path) -> None:
    """The package hidden by a meta-path finder in a fresh interpreter, as if it were not installed."""
    script = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'diffusers' or name.startswith('diffusers.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from multiguard.denoising.diffusion import load_diffusion_denoiser\n"
        "try:\n"
        f"    load_diffusion_denoiser({str(folder)!r}, sigma=0.5, image_size=8, in_channels=1)\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "diffusers package, which is not installed" in lines[0]
    assert "pip install 'multiguard[diffusion]'" in lines[0]


# ------------------------------------------------------------- through the --denoiser door (CLI and Python API)


@pytest.fixture(scope="module")
def folder16(tmp_path_factory) -> Path:
    """A 16 x 16 model: the 32 x 32 multidigits images are area-averaged to it inside the base classifier."""
    path = tmp_path_factory.mktemp("ddpm16")
    tiny_unet(sample_size=16, seed=3).save_pretrained(path)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(path)
    return path


@pytest.mark.slow
def test_certify_with_a_diffusion_denoiser_records_it_and_refuses_a_resume_with_another_timestep(
        tiny_model_checkpoint: Path, folder16: Path, tmp_path: Path, capsys) -> None:
    from clitools import assert_one_line_error_in_process, run_in_process

    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        (model / name).write_bytes((folder16 / name).read_bytes())
    out = tmp_path / "run"
    args = ["certify", "--checkpoint", str(tiny_model_checkpoint), "--denoiser", f"diffusers:{model}",
            "--num-samples", "40", "--num-inputs", "2", "--max-k-prime", "1", "--device", "cpu", "--quiet",
            "--out", str(out)]
    code, _, err = run_in_process(capsys, *args)
    assert code == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    settings = meta["denoiser_settings"]
    t = hand_timestep(ddpm_abar(), 2 * 0.5 / 2)  # area averaging 32 -> 16 halves the noise std
    assert meta["denoiser"] == f"diffusers:{model}"
    assert (settings["timestep"], settings["resize"], settings["model_size"], settings["image_size"]) == (
        t, "area", 16, 32)
    assert settings["source"] == str(model.resolve()) and len(meta["denoiser_sha256"]) == 64
    code, _, err = run_in_process(capsys, "report", str(out), "--out", str(tmp_path / "report"), "--quiet")
    assert code == 0, err
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"one step at timestep {t}" in summary and "resized (area) inside the base classifier" in summary

    # the same model resumes; a scheduler with another noise schedule gives another timestep: refused
    code, _, err = run_in_process(capsys, *args, "--resume")
    assert code == 0, err
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_end=0.04).save_pretrained(model)
    other = hand_timestep(ddpm_abar(beta_end=0.04), 0.5)
    assert other != t
    assert_one_line_error_in_process(run_in_process(capsys, *args, "--resume"), "denoiser_sha256",
                                     f"timestep: the run has {t}, the arguments give {other}")


def test_attack_and_the_python_api_take_the_diffusion_denoiser(tiny_model_checkpoint: Path, folder16: Path,
                                                               tmp_path: Path, capsys) -> None:
    from clitools import run_in_process

    from multiguard.denoising.denoisers import denoiser_in
    from multiguard.models.checkpoints import load_checkpoint, smoothed_from_checkpoint

    classifier, meta = load_checkpoint(tiny_model_checkpoint)
    smoothed = smoothed_from_checkpoint(classifier, meta, sigma=0.5, denoiser=f"diffusers:{folder16}")
    assert isinstance(denoiser_in(smoothed), DiffusionDenoiser)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    counts = smoothed.sample_counts(x, n=30)
    assert counts.shape == (2, 10) and (counts.sum(1) == 30).all()

    out = tmp_path / "attack"
    code, _, err = run_in_process(capsys, "attack", "--checkpoint", str(tiny_model_checkpoint), "--denoiser",
                                  f"diffusers:{folder16}", "--num-inputs", "1", "--steps", "1", "--samples", "2",
                                  "--n", "20", "--radii", "0.25", "--device", "cpu", "--quiet",
                                  "--out", str(out))
    assert code == 0, err
    recorded = json.loads((out / "attack.json").read_text())
    assert recorded["denoiser"] == f"diffusers:{folder16}" and recorded["denoiser_settings"]["resize"] == "area"


def test_without_diffusers_the_command_line_names_the_extra(tiny_model_checkpoint: Path, folder16: Path,
                                                            tmp_path: Path) -> None:
    script = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'diffusers' or name.startswith('diffusers.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from multiguard.cli import main\n"
        f"sys.exit(main(['certify', '--checkpoint', {str(tiny_model_checkpoint)!r}, '--denoiser', "
        f"'diffusers:{folder16}', '--num-samples', '10', '--num-inputs', '1', '--device', 'cpu', '--out', "
        f"{str(tmp_path / 'run')!r}]))\n"
    )
    from clitools import assert_one_line_error

    proc = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "diffusers package, which is not installed", "pip install 'multiguard[diffusion]'")
    assert not (tmp_path / "run" / "metadata.json").exists()
