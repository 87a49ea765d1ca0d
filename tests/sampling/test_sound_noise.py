"""Sound noise (rounded Gaussian on the 1/255 grid, drawn exactly) and shared noise: the distribution of the
values, the grid, reproducibility, the off-grid rule, calibration under sharing, and the false certificate of
the float sampler that the sound one does not give (in the manner of Voráček & Hein, ICLR 2023)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, chisquare, norm

from multiguard.certificates.bounds import label_probability_bounds
from multiguard.sampling.smoothed import MultiGuard
from multiguard.sampling.sound_noise import RoundedGaussianTable


def _chi_square_p(values: np.ndarray, sigma: float) -> float:
    """p-value of the draws (grid steps) against Pr(round(255 e) = k), e ~ N(0, sigma^2), from SciPy's normal
    CDF; cells with fewer than 20 expected draws are pooled into the two tails."""
    top = int(np.abs(values).max()) + 1
    edges = (np.arange(-top, top + 1) - 0.5) / (255 * sigma)
    probabilities = np.diff(np.concatenate(([0.0], norm.cdf(edges), [1.0])))  # k = -top-1 (tail) .. top (tail)
    observed = np.bincount(np.clip(values, -top - 1, top) + top + 1, minlength=probabilities.size)
    expected = probabilities * values.size
    keep = expected >= 20
    low, high = np.argmax(keep), keep.size - np.argmax(keep[::-1])
    obs = np.concatenate(([observed[:low].sum()], observed[low:high], [observed[high:].sum()]))
    exp = np.concatenate(([expected[:low].sum()], expected[low:high], [expected[high:].sum()]))
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def _draw(table: RoundedGaussianTable, size: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return table.draw(torch.empty(size, dtype=torch.int32), generator).numpy().astype(np.int64)


@pytest.mark.parametrize("sigma", [0.12, 0.5])
def test_sound_values_follow_the_rounded_gaussian(sigma):
    values = _draw(RoundedGaussianTable(sigma), 400_000, seed=1)
    assert _chi_square_p(values, sigma) > 1e-4
    # the control: the same test rejects the draws of a table 3 % wider
    wrong = _draw(RoundedGaussianTable(sigma * 1.03), 400_000, seed=1)
    assert _chi_square_p(wrong, sigma) < 1e-6


def test_table_entries_are_the_floors_of_phi_at_the_cell_edges():
    table = RoundedGaussianTable(0.25)
    k = np.arange(-table.half_width, table.half_width)
    reference = norm.cdf((2 * k + 1) / (510 * 0.25)) * 2.0**62  # float64: right to about 1e-16 relative
    cumulative = table.cumulative.numpy().astype(np.float64)
    assert np.all(np.abs(cumulative - np.floor(reference)) <= 2048 + 1e-16 * reference)
    assert np.all(np.diff(table.cumulative.numpy()) >= 0) and table.cumulative.max() < 2**62
    # the coupling slack: each of the 2K gaps is below 2^-62, the tails below 2^-64 each
    assert 0 < table.slack <= (2 * table.half_width) * 2.0**-62 + 2 * 2.0**-64
    # the guide table agrees with the full search on every word it decides
    words = torch.randint(0, 2**62, (200_000,), generator=torch.Generator().manual_seed(3), dtype=torch.int64)
    expected = torch.searchsorted(table.cumulative, words, right=True) - table.half_width
    assert torch.equal(table.values_of_words(words).long(), expected)


class Recorder(torch.nn.Module):
    """A 2-label linear model that keeps every batch it is given (its inputs are what the test inspects)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim, 2)
        torch.nn.init.normal_(self.linear.weight, generator=torch.Generator().manual_seed(0))
        self.seen: list[torch.Tensor] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.seen.append(z.detach().clone())
        return self.linear(z.flatten(1))


def _grid_inputs(num: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (num, 1, 4, 4), generator=torch.Generator().manual_seed(2)).float() / 255


def _on_grid(batch: torch.Tensor) -> bool:
    scaled = batch.double() * 255
    return bool((scaled - scaled.round()).abs().max() < 1e-3)


def test_every_noisy_input_is_on_the_grid_and_the_float_sampler_is_not():
    x = _grid_inputs()
    sound = Recorder(16)
    MultiGuard(sound, 2, sigma=0.25, noise="sound", clamp=(0.0, 1.0)).sample_counts(x, 300, batch_size=128)
    assert sum(b.shape[0] for b in sound.seen) == 900
    assert all(_on_grid(b) for b in sound.seen)
    float_model = Recorder(16)
    MultiGuard(float_model, 2, sigma=0.25, noise="float", clamp=(0.0, 1.0)).sample_counts(x, 300, batch_size=128)
    assert not any(_on_grid(b) for b in float_model.seen)  # the control fails the grid check


@pytest.mark.parametrize(("noise", "shared"), [("sound", False), ("sound", True), ("float", True)])
def test_counts_do_not_depend_on_batch_size_or_the_other_inputs(noise, shared):
    x = _grid_inputs(5)
    smoothed = MultiGuard(Recorder(16), 2, sigma=0.5, noise=noise, shared_noise=shared)
    whole = smoothed.sample_counts(x, 450, seed=4, index=[10, 11, 12, 13, 14], batch_size=1000)
    for batch_size in (7, 100, 333):
        assert np.array_equal(smoothed.sample_counts(x, 450, seed=4, index=[10, 11, 12, 13, 14],
                                                     batch_size=batch_size), whole)
    # a shard: inputs 3 and 4 alone, and a resume: samples [0, 200) then [200, 450)
    assert np.array_equal(smoothed.sample_counts(x[3:], 450, seed=4, index=[13, 14], batch_size=64), whole[3:])
    engine = smoothed.engine
    first = engine.count(x, 200, seed=4, index=[10, 11, 12, 13, 14], batch_size=90)[:, 0]
    rest = engine.count(x, 250, seed=4, index=[10, 11, 12, 13, 14], batch_size=90, start=np.full(5, 200))[:, 0]
    assert np.array_equal(first + rest, whole)


def test_shared_noise_is_one_block_for_every_input_and_independent_noise_is_not():
    x = torch.full((3, 1, 4, 4), 100 / 255)
    for shared, same in ((True, True), (False, False)):
        model = Recorder(16)
        MultiGuard(model, 2, sigma=0.5, noise="sound", shared_noise=shared).sample_counts(x, 100, batch_size=300)
        batch = model.seen[0]
        assert torch.equal(batch[:100], batch[100:200]) is same


def test_off_grid_inputs_are_refused_naming_the_grid():
    smoothed = MultiGuard(Recorder(16), 2, sigma=0.5, noise="sound")
    x = _grid_inputs()
    x[1, 0, 2, 3] += 0.3 / 255
    with pytest.raises(ValueError, match=r"^x: off the 1/255 grid .*flat position 27"):
        smoothed.sample_counts(x, 10)
    # float32 and float64 copies of grid values are on it
    smoothed.sample_counts(_grid_inputs().double(), 10)
    with pytest.raises(ValueError, match="noise"):
        MultiGuard(Recorder(16), 2, sigma=0.5, noise="discrete")


class Threshold(torch.nn.Module):
    """Label 0 when the first coordinate is above t, else label 1."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.register_buffer("t", torch.tensor(t))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        above = (z[:, 0] > self.t).float()
        return torch.stack([above, 1 - above], 1)


def test_bounds_stay_calibrated_per_input_under_shared_noise():
    """Each input's Clopper-Pearson interval holds at rate >= 1 - alpha under shared noise (the true p from the
    rounded Gaussian by SciPy); the control, bounds that claim 4x the samples, misses far more often."""
    sigma, n, alpha, seeds = 0.25, 60, 0.1, 200
    levels = np.array([90, 110, 128, 140, 160])
    x = torch.tensor(levels, dtype=torch.float32)[:, None] / 255
    t = 0.5
    # label 0 iff (x_int + k) / 255 > t, i.e. k > 255 t - x_int: Pr = 1 - Phi((floor(255 t - x_int) + 1/2) / (255 s))
    p = 1 - norm.cdf((np.floor(255 * t - levels) + 0.5) / (255 * sigma))
    smoothed = MultiGuard(Threshold(t), 2, sigma=sigma, noise="sound", shared_noise=True)
    misses = np.zeros((2, levels.size), dtype=int)  # lower above p, upper below p: each one-sided at alpha
    control = np.zeros(levels.size, dtype=int)
    for seed in range(seeds):
        counts = smoothed.sample_counts(x, n, seed=seed)[:, 0]
        lower, upper = label_probability_bounds(counts[:, None], n, alpha)
        misses += np.stack((lower[:, 0] > p, upper[:, 0] < p))
        lower4, _ = label_probability_bounds(4 * counts[:, None], 4 * n, alpha)
        control += lower4[:, 0] > p
    for m in misses.reshape(-1):  # each input on its own: misses ~ Binomial(seeds, <= alpha)
        assert binomtest(int(m), seeds, alpha, alternative="greater").pvalue > 1e-3
    assert binomtest(int(control.sum()), seeds * levels.size, alpha, alternative="greater").pvalue < 1e-6


class Fingerprint(torch.nn.Module):
    """Label 0 when some coordinate z_i is small (|z_i| < c / 2) and not a multiple of 2^-29.

    Near 0 a float32 sample z = fl(sigma * g) has ulps down to far below 2^-29, so it is often off that grid;
    near c = 10/255 (in [2^-5, 2^-4), a multiple of 2^-28) every fl(c + g) with |c + g| < c / 2 is exactly c + g,
    a multiple of 2^-29. The label is the floating-point fingerprint of where the noise was added."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scaled = z.double() * 2**29
        fine = ((z.abs() < self.c / 2) & (scaled != torch.round(scaled))).any(dim=1)
        return torch.stack([fine, ~fine], 1).float()


def test_the_float_sampler_gives_a_false_certificate_that_the_sound_one_does_not():
    dim, c, n, alpha = 416, 10 / 255, 2000, 0.001
    x = torch.zeros(1, dim)
    neighbour = torch.full((1, dim), c)
    distance = math.sqrt(dim) * c  # 0.7998 (the grid values as reals)
    floating = MultiGuard(Fingerprint(c), 2, sigma=1.0, noise="float")
    certificate = floating.certify(x, [[0]], n=n, alpha=alpha, k=1)
    assert certificate.radii[0, 0] > 1.5 > distance  # label 0 certified beyond the neighbour ...
    there = floating.sample_counts(neighbour, n, seed=7)[0]
    assert there[0] == 0 and binomtest(int(there[0]), n, 0.5).pvalue < 1e-12  # ... where label 1 wins always
    sound = MultiGuard(Fingerprint(c), 2, sigma=1.0, noise="sound")
    radius = sound.certify(x, [[0]], n=n, alpha=alpha, k=1).radii[0, 0]
    there = sound.sample_counts(neighbour, n, seed=7)[0]
    # the sound certificate either stops short of the neighbour or is right there
    assert radius < distance or there[0] > n / 2
    assert radius > distance and there[0] > 0.9 * n  # here: certified, and right
