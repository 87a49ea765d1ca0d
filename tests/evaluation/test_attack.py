"""multiguard.evaluation.attack: the PGD attack on the smoothed classifier, its constraints, ATTACK_DIR, and the
certificate.

The last test is the end-to-end soundness check of issue 6: on a noise-trained multidigits small_cnn, no
input's empirical |L ∩ top-k| under attack falls below its certified size, beyond what alpha allows.
"""

from __future__ import annotations

import contextlib
import csv
import json

import numpy as np
import pytest
import torch
from scipy import stats

from multiguard.common.seeds import attack_evaluation_seed
from multiguard.evaluation.attack import attack_smoothed
from multiguard.evaluation.attack_run import run_attack
from multiguard.evaluation.empirical import EMPIRICAL_COLUMNS, load_empirical
from multiguard.sampling.smoothed import MultiGuard, smoothed_top_k

# A linear toy: label 0 scores z_0, label 1 scores -z_0, label 2 scores z_1 - 0.5. At x = (0.4, 0) with
# sigma = 0.25 label 0 is the smoothed top-1 (p_0 ~ 0.9); moving z_0 below 0 hands the top-1 to label 1.
WEIGHTS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
BIAS = torch.tensor([0.0, 0.0, -0.5])


def toy_model(z: torch.Tensor) -> torch.Tensor:
    return z @ WEIGHTS.T + BIAS


TOY_X = torch.tensor([[0.4, 0.0], [0.5, 0.1], [0.3, -0.2], [0.45, 0.05]])
TOY_LABELS = np.array([[True, False, False]] * 4)


def test_attack_makes_the_smoothed_top_k_lose_a_label_it_had() -> None:
    result = attack_smoothed(toy_model, TOY_X, TOY_LABELS, radius=1.0, k=1, k_prime=1, sigma=0.25, n=500,
                             input_range=None, measure_clean=True)
    assert (result.clean_sizes == 1).all()  # the clean smoothed top-1 is label 0
    assert (result.sizes == 0).all()  # under attack it is not
    assert (result.predicted[:, 0] == 1).all()
    norms = result.deltas.double().norm(dim=1)
    assert (norms <= 1.0).all() and (norms > 0.9).all()
    # Below the distance to the boundary (minus what the noise needs) the label survives.
    small = attack_smoothed(toy_model, TOY_X, TOY_LABELS, radius=0.05, k=1, k_prime=1, sigma=0.25, n=500,
                            input_range=None)
    assert (small.sizes == 1).all()


def test_attack_with_k_prime_above_one_and_a_multiguard() -> None:
    smoother = MultiGuard(toy_model, 3, 0.25, k_prime=2)
    labels = np.array([[True, True, False]] * 3)  # k = k' = 2: L = {0, 1}; label 2 is the rival
    x = torch.tensor([[0.4, -0.2], [0.3, -0.3], [0.5, -0.25]])  # clean top-2 {0, 1}: p ~ (1.0, 0.8, 0.2)
    result = attack_smoothed(smoother, x, labels, radius=1.0, k=2, n=500, input_range=None, measure_clean=True)
    assert (result.clean_sizes == 2).all()
    assert (result.sizes < 2).all()
    with pytest.raises(ValueError, match="sigma"):
        attack_smoothed(smoother, x, labels, radius=1.0, k=2, sigma=0.5)


@pytest.mark.parametrize("radius", [0.05, 0.3, 2.0])
def test_deltas_stay_in_the_ball_and_the_input_range(radius: float) -> None:
    rng = np.random.default_rng(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    x = torch.as_tensor(rng.uniform(0, 1, size=(6, 3, 2, 2)), dtype=torch.float32).transpose(2, 3)
    assert not x.is_contiguous()  # projections must not act on a copy
    x[0] = 0.0  # on the edge of the range: a naive step leaves it
    x[1] = 1.0
    labels = rng.random((6, 5)) < 0.4
    labels[:, 0] = True
    result = attack_smoothed(model, x, labels, radius=radius, k=2, k_prime=1, sigma=0.5, steps=15, samples=8,
                             n=50, step_size=radius)
    norms = result.deltas.reshape(6, -1).double().norm(dim=1)
    assert (norms <= radius).all()
    attacked = x + result.deltas
    assert attacked.min() >= 0.0 and attacked.max() <= 1.0
    assert result.sizes.shape == (6,) and result.counts.shape == (6, 5)


def test_radius_zero_is_the_clean_measurement_and_results_are_reproducible() -> None:
    first = attack_smoothed(toy_model, TOY_X, TOY_LABELS, radius=0.0, k=1, sigma=0.25, n=200, input_range=None,
                            measure_clean=True)
    assert not first.deltas.any()
    assert (first.sizes == first.clean_sizes).all()
    a = attack_smoothed(toy_model, TOY_X, TOY_LABELS, radius=0.3, k=1, sigma=0.25, n=200, input_range=None, seed=3)
    b = attack_smoothed(toy_model, TOY_X[[2, 0]], TOY_LABELS[[2, 0]], radius=0.3, k=1, sigma=0.25, n=200,
                        input_range=None, seed=3, index=[2, 0])
    assert torch.equal(a.deltas[[2, 0]], b.deltas)  # the noise of an input depends on (seed, index) only
    assert (a.counts[[2, 0]] == b.counts).all()
    assert attack_evaluation_seed(0) != 0 and attack_evaluation_seed(0) == attack_evaluation_seed(0)


def test_smoothed_top_k_breaks_ties_by_label_index() -> None:
    counts = np.array([[5, 9, 9, 1], [3, 3, 3, 3]])
    assert smoothed_top_k(counts, 2).tolist() == [[1, 2], [0, 1]]


def test_bad_arguments_name_themselves() -> None:
    kwargs = dict(k=1, sigma=0.25, input_range=None, n=10)
    with pytest.raises(ValueError, match="radius"):
        attack_smoothed(toy_model, TOY_X, TOY_LABELS, radius=-1.0, **kwargs)
    with pytest.raises(ValueError, match="steps"):
        attack_smoothed(toy_model, TOY_X, TOY_LABELS, radius=0.1, steps=-1, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        attack_smoothed(toy_model, TOY_X, TOY_LABELS[:2], radius=0.1, **kwargs)
    with pytest.raises(ValueError, match="k must"):
        attack_smoothed(toy_model, TOY_X, TOY_LABELS, radius=0.1, **{**kwargs, "k": 4})
    with pytest.raises(ValueError, match="sigma"):
        attack_smoothed(toy_model, TOY_X, TOY_LABELS, radius=0.1, k=1)
    with pytest.raises(ValueError, match="input_range"):
        attack_smoothed(toy_model, TOY_X - 1.0, TOY_LABELS, radius=0.1, k=1, sigma=0.25)
    with pytest.raises(ValueError, match="attack_dir"):
        load_empirical("/nonexistent/attack")


# ------------------------------------------------------------------------------ attack vs the certificate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from multiguard.training.classifier import train

    path = tmp_path_factory.mktemp("model") / "md.pt"
    with one_thread():  # the same model on every machine (a float sum's order follows the thread count)
        train("multidigits", sigma=0.5, epochs=2, train_size=1500, test_size=100, out=path, progress=False)
    return str(path)


@contextlib.contextmanager
def one_thread():
    """torch on one CPU thread inside the block: bit-identical training and attacks whatever the machine's
    cores (the figures the tests below quote were measured so)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_no_certificate_is_beaten_by_the_attack(checkpoint: str, tmp_path) -> None:
    radii = [0.0, 0.25, 0.5]
    alpha = 0.001
    run = run_attack(checkpoint, out_dir=tmp_path / "attack", radii=radii, k=3, k_prime=1, num_inputs=20,
                     steps=8, samples=8, n=300, alpha=alpha, seed=0)
    # Every violation is a certificate failure (probability <= alpha per input) or Monte Carlo error of the
    # measurement on a near tie: fail only beyond what alpha allows.
    pairs = run.sizes.size
    allowed = int(stats.binom.ppf(1 - 1e-6, pairs, alpha))
    margin = (run.sizes - run.certified).min()
    print(f"\n[soundness] attack vs certificate: {run.sizes.shape[0]} inputs x {len(radii)} radii, violations "
          f"{run.violations.tolist()} (allowed {allowed} in total), min empirical - certified {margin}, "
          f"mean certified {run.certified.mean(axis=0).round(3).tolist()}, "
          f"mean empirical {run.sizes.mean(axis=0).round(3).tolist()}")
    assert run.violations.sum() <= allowed
    assert (run.certified[:, 1:] > 0).any()  # the comparison has teeth: something is certified at R > 0
    assert run.sizes[:, 2].mean() < run.sizes[:, 0].mean()  # the attack does something
    norms_ok = run.delta_norms <= np.asarray(radii)[None, :]
    assert norms_ok.all()

    with open(tmp_path / "attack" / "empirical.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == EMPIRICAL_COLUMNS and len(rows) == 1 + len(radii)
    curves = load_empirical(tmp_path / "attack")
    assert curves.radius.tolist() == radii and curves.num_inputs == 20
    assert np.allclose(curves.recall, run.curves.recall)
    assert curves.settings["k"] == 3 and curves.settings["violations"] == run.violations.tolist()
    assert not list((tmp_path / "attack").glob("*.tmp"))


@pytest.mark.slow
def test_apgd_targeted_matches_pgd_with_no_violations_on_a_demo_like_model(checkpoint: str, tmp_path) -> None:
    """Same checkpoint, inputs and seed, each attack at its default budget (apgd's is larger): no input falls
    below its certificate (each such input a probability-alpha failure: none at these seeds), and the default
    attack is no weaker than pgd beyond one input's Monte Carlo tie per radius. Measured here (20 inputs,
    R = 0.25, 0.5): pgd 34 / 30 labels kept, apgd-targeted 33 / 30 (33 / 31 before pgd's point was one of its
    candidates) -- on this model the two are about level (see benchmarks/README.md)."""
    common = dict(radii=[0.25, 0.5], k=3, k_prime=1, num_inputs=20, samples=8, n=300, alpha=0.001, seed=1)
    with one_thread():
        pgd = run_attack(checkpoint, out_dir=tmp_path / "pgd", attack="pgd", **common)
        apgd = run_attack(checkpoint, out_dir=tmp_path / "apgd", attack="apgd-targeted", **common)
    assert np.array_equal(pgd.certified, apgd.certified)  # the same inputs and certificate
    assert (apgd.sizes.sum(axis=0) <= pgd.sizes.sum(axis=0) + 1).all()
    assert apgd.violations.tolist() == [0, 0] and pgd.violations.tolist() == [0, 0]
    assert json.loads((tmp_path / "apgd" / "attack.json").read_text())["attack"] == "apgd-targeted"
