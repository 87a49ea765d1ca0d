"""The smoothed multi-label classifier: Monte Carlo sampling on any PyTorch model, certificates, predictions.

For a base classifier f that returns c scores, a noise level sigma and k' (``k_prime``), MultiGuard samples
``eps ~ N(0, sigma^2 I)`` and counts how often each label lands among the k' highest scores of
``f(x + eps)`` (ties broken by label index). Those counts give bounds on the label probabilities
``p_i = Pr(i in top-k'(f(x + eps)))``, and :mod:`multiguard.certificates.topk` turns the bounds into certified radii:
below ``radii[e-1]``, at least e labels of L(x) stay among the k labels of largest p_i (Jia, Cao, Wang,
Gong, NeurIPS 2022, Theorem 1). All the math lives in :mod:`multiguard.certificates.topk` and the sampling loop in
:mod:`multiguard.sampling.engine`; this module is the user-facing class that joins them, like Cohen et al.'s ``Smooth``.

Ties: the top-k' of a score row is the first k' entries of a stable descending sort, so equal scores go to
the lower label index (see :func:`multiguard.sampling.engine.top_k_prime`).

Reproducibility: the noise of input ``x[i]`` is a function of ``(seed, index[i])`` only. Sample ``s`` of an
input lies in noise block ``s // NOISE_BLOCK``; every block is drawn whole by one ``normal_`` call from a
generator seeded with :func:`multiguard.common.seeds.noise_seed` ``(seed, index, block, stream)``. Batch size, the
other inputs sharing a forward batch, shards and resume points therefore change nothing (on the same device
type: CUDA and CPU generators give different numbers).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import sequential as _sequential
from multiguard.certificates import thresholded as _thresholded
from multiguard.certificates import topk as _topk
from multiguard.certificates.bounds import as_label_mask
from multiguard.certificates.stop_rule import StopRule
from multiguard.certificates.thresholds import LabelThresholds
from multiguard.common.devices import resolve_device
from multiguard.common.noise_kinds import DEFAULT_NOISE, describe_noise
from multiguard.common.seeds import STREAM_ESTIMATION, STREAM_SELECTION
from multiguard.common.validation import (
    check_alpha,
    check_bool,
    check_float,
    check_int,
    check_interval,
    check_positive,
)
from multiguard.sampling.acceleration import CompiledModel, resolve_mode
from multiguard.sampling.certificate import Certificate, Prediction
from multiguard.sampling.engine import SamplingEngine, as_batch, as_index, module_device_dtype
from multiguard.sampling.inputs import as_image_batch, image_channels
from multiguard.sampling.noise import make_noise
from multiguard.sampling.soft import soft_scores_of

DEFAULT_ALPHA = 0.001  # the failure probability of certify and predict when neither the call nor its rule gives one

__all__ = ["MultiGuard", "smoothed_top_k"]


def smoothed_top_k(counts: np.ndarray, k: int) -> np.ndarray:
    """The smoothed classifier's top-k from Monte Carlo counts: int64 ``(N, k)``, ties by label index."""
    counts = np.asarray(counts)
    return np.argsort(-counts, axis=-1, kind="stable")[..., :k].astype(np.int64)


class MultiGuard:
    """A provably robust multi-label classifier built from any base classifier by randomized smoothing.

    Args:
        model: a ``torch.nn.Module`` or any callable mapping a float batch ``(B, *input_shape)`` to scores
            ``(B, num_classes)``. Noise is added to the input as given (pixels in [0, 1] for images), so any
            normalisation belongs inside the model.
        num_classes: c, the number of labels.
        sigma: standard deviation of the Gaussian noise (l2 radii are in the same units as the input).
        k_prime: k', the number of labels the base classifier predicts (its k' highest scores, ties broken
            by label index).
        clamp: optional ``(lo, hi)``: x + noise is clamped to it before the model (as the paper's code does
            with (0, 1)). It is part of the base classifier, so certificates stay valid.
        device: where to sample. A module is moved there (``model.to(device)``). Default: the device of the
            module's first parameter or buffer, else the CPU.
        precision: ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` (the forward under ``torch.autocast`` with
            that dtype) or ``"auto"``: bf16 + channels_last on CUDA GPUs and CPUs with native bf16, fp32
            elsewhere (:func:`multiguard.sampling.acceleration.auto_precision`).
        channels_last: feed 4-D batches in channels_last memory format; a module is converted in place.
            ``None`` (default): what ``precision`` implies (on where ``auto`` picks bf16, else off).
            The noise values are the same either way.
        compile: run the model through ``torch.compile`` (one graph, compiled at the first forward; where
            that fails the model runs eagerly and one line is logged). See :attr:`compile_seconds`.
        thresholds: per-label thresholds (:class:`multiguard.certificates.thresholds.LabelThresholds`, or one
            probability for every label): the base classifier then also decides each label on its own (on when
            its score passes its threshold), and :meth:`certify` and :meth:`predict` return the thresholded certificate
            (:mod:`multiguard.certificates.thresholded`) from the same samples as the top-k one. Part of the base
            classifier.
        noise: ``"float"`` (default: Gaussian in floating point) or ``"sound"``: the Gaussian rounded to the 1/255
            grid and added in integers to inputs on that grid (others refused), so the certificates hold for
            ``h = f ∘ clamp ∘ round`` as a computer runs it (``docs/soundness.md``; :attr:`alpha_slack`).
        shared_noise: one noise block per block index added to every input (Voráček & Hein's reuse): each
            input's certificate keeps its 1 - alpha, but failures are no longer independent across inputs.

    The mode (:attr:`mode`: precision, channels_last, compile) is part of the base classifier: certificates
    hold for the classifier run in this mode, so claim them only for the same mode. Noise is drawn on the
    model's device in the dtype of its first floating parameter (float32 for a callable without parameters)
    and added to the input in that dtype, before any autocast. Sampling runs under
    ``torch.inference_mode()`` with the module in eval mode; each submodule's training flag is restored
    afterwards.
    """

    def __init__(
        self,
        model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        k_prime: int = 1,
        clamp: tuple[float, float] | None = None,
        device: torch.device | str | None = None,
        channels_last: bool | None = None,
        precision: str = "fp32",
        compile: bool = False,
        thresholds: LabelThresholds | float | None = None,
        noise: str = DEFAULT_NOISE,
        shared_noise: bool = False,
    ) -> None:
        if not callable(model):
            raise ValueError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        self.num_classes = check_int(num_classes, "num_classes", 1)
        self.sigma = check_positive(sigma, "sigma")
        self.k_prime = check_int(k_prime, "k_prime", 1, self.num_classes)
        self.clamp = check_interval(clamp, "clamp")
        self.noise = make_noise(noise, self.sigma)
        self.shared_noise = check_bool(shared_noise, "shared_noise")
        if thresholds is not None and not isinstance(thresholds, LabelThresholds):
            thresholds = LabelThresholds.single(thresholds)
        self.thresholds: LabelThresholds | None = thresholds
        self.score_thresholds = None if thresholds is None else thresholds.score_thresholds(self.num_classes)

        module_device, module_dtype = module_device_dtype(model)
        if device is not None:
            self.device = resolve_device(device)  # "cuda" where there is none: one line naming the device
            if isinstance(model, torch.nn.Module):
                model.to(self.device)
        else:
            self.device = module_device if module_device is not None else torch.device("cpu")
        self.dtype = module_dtype if module_dtype is not None else torch.get_default_dtype()
        self.mode = resolve_mode(precision, channels_last, compile, self.device)
        self.autocast_dtype = self.mode.autocast_dtype
        self.channels_last = self.mode.channels_last
        if self.channels_last and isinstance(model, torch.nn.Module):
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.compiled_model = CompiledModel(model) if self.mode.compile else None
        self.engine = SamplingEngine(
            self.compiled_model if self.compiled_model is not None else model, self.num_classes, self.sigma,
            clamp=self.clamp, device=self.device, dtype=self.dtype, autocast_dtype=self.autocast_dtype,
            channels_last=self.channels_last, noise=self.noise, shared=self.shared_noise,
        )

    def alpha_slack(self, n: int, input_shape: tuple[int, ...]) -> float:
        """What the sampler adds to alpha over n samples of an input of ``input_shape``: 0 for float noise; for
        sound noise the bound of :meth:`multiguard.sampling.noise.SoundNoise.alpha_slack` (about 1e-8 at n = 1e5,
        32 x 32 x 3)."""
        return self.noise.alpha_slack(int(n), int(np.prod(input_shape)))

    def describe_noise(self) -> str:
        """``"sound, rounded Gaussian on the 1/255 grid"`` or the float line, as results print it."""
        return describe_noise(self.noise.name, self.shared_noise)

    def __repr__(self) -> str:
        thresholds = "" if self.thresholds is None else f", thresholds={self.thresholds.describe()!r}"
        return (
            f"MultiGuard(num_classes={self.num_classes}, sigma={self.sigma}, k_prime={self.k_prime}, "
            f"clamp={self.clamp}, noise={self.noise.name!r}, device={self.device}, dtype={self.dtype}, "
            f"mode={self.mode.describe()!r}{thresholds})"
        )

    @property
    def compile_seconds(self) -> float | None:
        """Wall time of the first forward with ``compile=True`` (compilation plus one batch), else ``None``:
        ``None`` too before the first forward and where compiling failed (see :attr:`compile_fallback`)."""
        return None if self.compiled_model is None else self.compiled_model.compile_seconds

    @property
    def compile_fallback(self) -> str | None:
        """Why ``torch.compile`` failed and the model runs eagerly, or ``None``."""
        return None if self.compiled_model is None else self.compiled_model.fallback_reason

    def warm_up(self, x: torch.Tensor | np.ndarray, batch_size: int = 1000) -> float:
        """Run one forward batch of ``batch_size`` noisy copies of ``x[0]`` now, so that compilation (with
        ``compile=True``) and lazy initialisation happen here rather than inside the first timed sampling
        call. Returns its wall time in seconds. The counts are thrown away; later counts do not change
        (noise is seeded per input and sample)."""
        batch_size = check_int(batch_size, "batch_size", 1)
        tensor = as_batch(x)
        if tensor.shape[0] == 0:
            raise ValueError("x must hold at least one input to warm up on")
        start = time.perf_counter()
        self.engine.count(tensor[:1], batch_size, seed=0, batch_size=batch_size, num_k=1, stream=STREAM_ESTIMATION)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def sample_counts(
        self,
        x: torch.Tensor | np.ndarray,
        n: int,
        seed: int = 0,
        index: np.ndarray | torch.Tensor | list[int] | None = None,
        batch_size: int = 1000,
        max_k_prime: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Count, over n noisy copies of each input, how often each label is in the base model's top-k'.

        Args:
            x: ``(N, *input_shape)`` tensor or array.
            n: number of noise samples per input.
            seed: non-negative integer; with ``index`` it fixes the noise.
            index: ``(N,)`` non-negative integers naming the inputs (default ``range(N)``). The noise of
                ``x[i]`` depends only on ``(seed, index[i])``, never on the batch or the other inputs.
            batch_size: samples per forward pass; inputs are packed together when n < batch_size.
            max_k_prime: if given (K), count every k' = 1..K from the same samples.
            progress: show a tqdm progress bar over inputs.

        Returns:
            int64 ``(N, c)`` counts for ``self.k_prime`` (each row sums to ``n * k_prime``), or with
            ``max_k_prime = K`` int64 ``(N, K, c)`` where ``[i, j-1]`` are the counts for k' = j (each sums
            to ``n * j``).
        """
        num_k = self.k_prime if max_k_prime is None else check_int(max_k_prime, "max_k_prime", 1, self.num_classes)
        counts = self.engine.count(x, n, seed=seed, index=index, batch_size=batch_size, num_k=num_k,
                                   stream=STREAM_ESTIMATION, progress=progress)
        return counts if max_k_prime is not None else counts[:, self.k_prime - 1]

    soft_scores = soft_scores_of  # a differentiable Monte Carlo estimate of the smoothed scores, for attacks

    def _need_thresholds(self) -> np.ndarray:
        if self.score_thresholds is None:
            raise ValueError("thresholds: this MultiGuard has none (MultiGuard(..., thresholds=0.5) or a "
                             "LabelThresholds)")
        return self.score_thresholds

    def sample_on_counts(
        self,
        x: torch.Tensor | np.ndarray,
        n: int,
        seed: int = 0,
        index: np.ndarray | torch.Tensor | list[int] | None = None,
        batch_size: int = 1000,
        progress: bool = False,
        thresholds: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per-label on-counts over n noisy copies of each input: int64 ``(N, c)``, how many had each label's
        score above its threshold (the classifier's, or ``thresholds``: float score thresholds ``(c,)``, or
        ``(T, c)`` for T sets at once, giving ``(N, T, c)``). Same noise as :meth:`sample_counts`."""
        rows = self._need_thresholds() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        counts = self.engine.count(x, n, seed=seed, index=index, batch_size=batch_size, num_k=1,
                                   stream=STREAM_ESTIMATION, progress=progress, thresholds=rows)
        return counts[:, 1] if np.ndim(rows) == 1 else counts[:, 1:]

    def certify(
        self,
        x: torch.Tensor | np.ndarray,
        labels: np.ndarray | torch.Tensor,
        n: int,
        alpha: float | None = None,
        k: int | None = None,
        seed: int = 0,
        index: np.ndarray | torch.Tensor | list[int] | None = None,
        batch_size: int = 1000,
        progress: bool = False,
        second_terms: bool = True,
        check_range: bool = True,
        stop_rule: StopRule | None = None,
        q: float = _thresholded.DEFAULT_Q,
    ) -> Certificate:
        """Certify, for each input, how many labels of its label set L stay in the smoothed top-k.

        With probability at least ``1 - alpha`` for each input, at least e labels of ``labels[i]`` are in
        the smoothed classifier's top k at every ``x[i] + delta`` with ``||delta||_2 < radii[i, e-1]``.

        Args:
            x: ``(N, *input_shape)``; labels: ``(N, c)`` boolean mask of L (e.g. the ground truth), or label
                index lists, one per input (``[[0, 2], [1]]``; ``[0, 2]`` for one input).
            n: noise samples per input (the most any input gets with a ``stop_rule``); alpha: failure
                probability (default 0.001, as in :meth:`predict`, or the stop rule's); k: labels the smoothed
                classifier predicts (needed, here or in the stop rule).
                seed, index, batch_size, progress: as in :meth:`sample_counts`.
            second_terms: ``False`` drops the u- and v-terms of Theorem 1 (the paper's ablation).
            check_range: refuse image batches with values above 1 (see :func:`as_image_batch`, which also
                refuses integer inputs such as uint8 images and turns one image ``(C, H, W)`` into a batch of one).
            stop_rule: a :class:`~multiguard.certificates.stop_rule.StopRule` (``StopRule(radius=R)``; its k,
                k' and alpha, left out, are this call's): sample in rounds at the looks of its ``schedule`` and
                stop each input as soon as its certified intersection size at R is settled, or its ``futility``
                rule gives up on it (:func:`multiguard.certificates.sequential.sequential_stopping_rule`). The
                bounds are then the anytime-valid ones its ``bounds`` names, and the radii are valid at every
                radius, not only at R. The counts, and so the certificate, are those
                :func:`multiguard.certificates.sequential.sequential_certification` gives on the nested counts
                of the same seed. The guarantee is the same for every futility rule.
            q: with thresholds, the thresholded smoothed classifier's cut (a label is predicted when it is on in
                more than a share q of the noise; :mod:`multiguard.certificates.thresholded`).

        Returns:
            a :class:`Certificate` with ``radii`` ``(N, k)`` from :func:`multiguard.certificates.topk.certified_radii`
            and ``samples`` ``(N,)`` the samples each input used; with thresholds, ``thresholded`` (a
            :class:`multiguard.certificates.thresholded.ThresholdedCertificate`: per-label on / off radii) from the same
            samples, its bounds holding for all labels at once with probability at least ``1 - alpha``.
        """
        rule, k, alpha = self._bind_stop_rule(stop_rule, k, alpha)
        k = check_int(k, "k", 1, self.num_classes)
        n = check_int(n, "n", 1)
        q = check_float(q, "q", 0.0, 1.0, low_open=True, high_open=True)
        tensor = as_image_batch(x, check_range, image_channels(self.model))
        mask = as_label_mask(labels, tensor.shape[0], self.num_classes)
        counts, samples, lower, upper, thresholded = self._estimate(
            tensor, mask, n, alpha, k, rule, second_terms,
            seed=seed, index=index, batch_size=batch_size, progress=progress, q=q,
        )
        radii = _topk.certified_radii(
            lower, upper, mask, k=k, k_prime=self.k_prime, sigma=self.sigma, second_terms=second_terms
        )
        return Certificate(
            counts=counts,
            lower=lower,
            upper=upper,
            labels=mask,
            radii=radii,
            k=k,
            k_prime=self.k_prime,
            sigma=self.sigma,
            n=int(n),
            alpha=alpha,
            second_terms=bool(second_terms),
            samples=samples,
            stop_at_radius=None if rule is None else rule.radius,
            thresholded=thresholded,
        )

    def _bind_stop_rule(self, stop_rule: StopRule | None, k: int | None, alpha: float | None,
                        ) -> tuple[StopRule | None, int | None, float]:
        """``(rule, k, alpha)`` of a call: its stop rule with the k, k' and alpha it leaves out filled from the
        call (and k' from this classifier), and the call's k and alpha (:data:`DEFAULT_ALPHA` where neither the
        call nor the rule gives one). ValueError where the rule and the call disagree."""
        if alpha is not None:
            alpha = check_alpha(alpha)
        if stop_rule is None:
            return None, k, DEFAULT_ALPHA if alpha is None else alpha
        if not isinstance(stop_rule, StopRule):
            raise ValueError(f"stop_rule: expected a multiguard.StopRule, got {type(stop_rule).__name__}")
        if alpha is None and stop_rule.alpha is None:
            alpha = DEFAULT_ALPHA
        rule = stop_rule.bind(k=k, k_prime=self.k_prime, alpha=alpha)
        return rule, rule.k, rule.alpha

    def sample_nested_counts(
        self,
        x: torch.Tensor | np.ndarray,
        sizes: np.ndarray | list[int],
        seed: int = 0,
        index: np.ndarray | torch.Tensor | list[int] | None = None,
        batch_size: int = 1000,
        max_k_prime: int | None = None,
        progress: bool = False,
        with_on_counts: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Cumulative counts at nested sample sizes: int64 ``(N, S, K, c)``, ``[i, s]`` equal to
        ``sample_counts(x, sizes[s], ..., max_k_prime=K)[i]`` exactly, for the cost of the largest size.

        ``sizes`` is strictly increasing (e.g. :func:`multiguard.certificates.sequential.sample_size_schedule`
        ``(n)``); K is
        ``max_k_prime`` (default ``self.k_prime``). See :meth:`multiguard.sampling.engine.SamplingEngine.count_nested`.
        ``with_on_counts`` (a classifier with thresholds): also the per-label on-counts ``(N, S, c)`` of the same
        samples, returned as a second array.
        """
        num_k = self.k_prime if max_k_prime is None else check_int(max_k_prime, "max_k_prime", 1, self.num_classes)
        thresholds = self._need_thresholds() if check_bool(with_on_counts, "with_on_counts") else None
        nested = self.engine.count_nested(x, sizes, seed=seed, index=index, batch_size=batch_size, num_k=num_k,
                                          stream=STREAM_ESTIMATION, progress=progress, thresholds=thresholds)
        return nested if thresholds is None else (nested[:, :, :num_k], nested[:, :, num_k])

    def sample_sequential_counts(
        self,
        x: torch.Tensor | np.ndarray,
        labels: np.ndarray | torch.Tensor,
        n: int,
        *,
        stop_rule: StopRule,
        alpha: float | None = None,
        k: int | None = None,
        seed: int = 0,
        index: np.ndarray | torch.Tensor | list[int] | None = None,
        batch_size: int = 1000,
        max_k_prime: int | None = None,
        second_terms: bool = True,
        progress: bool = False,
        with_on_counts: bool = False,
    ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample each input look by look until sequential certification by ``stop_rule`` stops it.

        The looks are the rule's (:meth:`~multiguard.certificates.stop_rule.StopRule.looks` ``(n)``); after each
        one, :func:`multiguard.certificates.sequential.sequential_stopping_rule` decides from the counts of
        ``self.k_prime`` (with the rule's radius, k, alpha, futility, spending, margin and bounds, and
        ``second_terms``) which inputs stop; ``k`` and ``alpha`` fill what the rule leaves out. Returns
        ``(counts, samples)``: int64 ``(N, K, c)`` counts for every k' <= K (``max_k_prime``, default
        ``self.k_prime``) of the samples each input used, and int64 ``(N,)`` those numbers of samples (looks).
        The counts are those of the same samples in a fixed-n call (same seed and index), cut at each input's
        stop. ``with_on_counts`` (a classifier with thresholds): also the per-label on-counts ``(N, c)`` of those
        samples, a third array.
        """
        tensor = as_batch(x)
        mask = as_label_mask(labels, tensor.shape[0], self.num_classes)
        num_k = self.k_prime if max_k_prime is None else check_int(max_k_prime, "max_k_prime", self.k_prime,
                                                                   self.num_classes)
        thresholds = self._need_thresholds() if check_bool(with_on_counts, "with_on_counts") else None
        if stop_rule is None:
            raise ValueError("stop_rule: needed (a multiguard.StopRule)")
        rule, k, _ = self._bind_stop_rule(stop_rule, k, alpha)
        check_int(k, "k", 1, self.num_classes)
        counts, samples = self._sample_sequentially(
            tensor, mask, check_int(n, "n", 1), rule, second_terms, seed=seed, index=index,
            batch_size=batch_size, progress=progress, num_k=num_k, thresholds=thresholds,
        )
        if thresholds is None:
            return counts, samples
        return counts[:, :num_k], samples, counts[:, num_k]

    # ------------------------------------------------------------------------------------------ estimation

    def _estimate(
        self, tensor: torch.Tensor, mask: np.ndarray, n: int, alpha: float, k: int, rule: StopRule | None,
        second_terms: bool, *, seed: int, index: object, batch_size: int, progress: bool,
        q: float = _thresholded.DEFAULT_Q,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, _thresholded.ThresholdedCertificate | None]:
        """The one estimation path of :meth:`certify` and :meth:`predict`: counts of ``self.k_prime`` over the
        estimation stream and their bounds, ``(counts (N, c), samples (N,), lower, upper, thresholded)``; with
        thresholds, the per-label on-counts of the same forward passes give ``thresholded`` (else ``None``).

        Fixed n: n samples per input, Clopper-Pearson bounds
        (:func:`multiguard.certificates.bounds.label_probability_bounds`).
        With a stop ``rule`` (bound: its k and alpha are ``k`` and ``alpha``): the sequential procedure
        (:func:`multiguard.certificates.sequential.sample_until_stopped`),
        anytime-valid bounds at each input's stop (for the on-counts too)."""
        thresholds = self.score_thresholds
        if rule is None:
            counts = self.engine.count(tensor, n, seed=seed, index=index, batch_size=batch_size,
                                       num_k=self.k_prime, stream=STREAM_ESTIMATION, progress=progress,
                                       thresholds=thresholds)
            samples = np.full(tensor.shape[0], n, dtype=np.int64)
            looks = None
            sample_sizes: object = n
        else:
            counts, samples = self._sample_sequentially(
                tensor, mask, n, rule, second_terms, seed=seed, index=index,
                batch_size=batch_size, progress=progress, num_k=self.k_prime, thresholds=thresholds,
            )
            # The looks and spending the stopping rule used: the anytime bounds of both certificates must be
            # those the rule read, or they would not hold at the rule's stopping time.
            looks = rule.looks(n)
            sample_sizes = samples
        thresholded = None
        if thresholds is not None:
            thresholded = _thresholded.certify_thresholded(
                counts[:, self.k_prime], sample_sizes, alpha=alpha, sigma=self.sigma, q=q, looks=looks,
                spending=None if rule is None else rule.spending,
                bounds="union" if rule is None else rule.bounds,
            )
        counts = counts[:, self.k_prime - 1]
        if looks is None:
            lower, upper = _bounds.label_probability_bounds(counts, n, alpha)
        else:
            lower, upper = _sequential.anytime_label_probability_bounds(counts, samples, alpha, looks, rule.spending,
                                                                        bounds=rule.bounds)
        return counts, samples, lower, upper, thresholded

    def _sample_sequentially(
        self, tensor: torch.Tensor, mask: np.ndarray, n: int, rule: StopRule, second_terms: bool, *, seed: int,
        index: object, batch_size: int, progress: bool, num_k: int, thresholds: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`multiguard.certificates.sequential.sample_until_stopped` on this classifier's estimation stream:
        each round
        samples only the inputs still going, continuing their sample streams, so stopped inputs leave the
        forward batches to the others. Returns ``(counts (N, num_k, c), samples (N,))`` (``(N, num_k + 1, c)``
        with ``thresholds``: the on-counts last, cut at the same stop)."""
        index_arr = as_index(index, tensor.shape[0])
        check_int(seed, "seed", 0)
        check_bool(second_terms, "second_terms")

        def count(rows: np.ndarray, done: int, size: int) -> np.ndarray:
            subset = tensor if rows.size == tensor.shape[0] else tensor[torch.as_tensor(rows)]
            return self.engine.count(subset, size - done, seed=seed, index=index_arr[rows], batch_size=batch_size,
                                     num_k=num_k, stream=STREAM_ESTIMATION, progress=progress,
                                     start=np.full(rows.size, done, dtype=np.int64), thresholds=thresholds)

        rows = num_k + (0 if thresholds is None else 1)  # the on-counts ride along; the rule reads k' only
        return _sequential.sample_until_stopped(
            count, mask, n, num_k=rows, alpha=rule.alpha, k=rule.k, k_prime=self.k_prime, sigma=self.sigma,
            radius=rule.radius, second_terms=second_terms, **rule.procedure(),
        )

    def predict(
        self,
        x: torch.Tensor | np.ndarray,
        k: int,
        n0: int = 100,
        n: int = 1000,
        alpha: float | None = None,
        seed: int = 0,
        index: np.ndarray | torch.Tensor | list[int] | None = None,
        batch_size: int = 1000,
        progress: bool = False,
        check_range: bool = True,
        stop_rule: StopRule | None = None,
        q: float = _thresholded.DEFAULT_Q,
    ) -> Prediction:
        """Predict k labels per input and certify how many of them survive any perturbation up to a radius.

        With probability at least ``1 - alpha`` for each input, at least e of the returned ``labels[i]`` are
        in the smoothed classifier's top k at every ``x[i] + delta`` with ``||delta||_2 < radii[i, e-1]``.

        The k labels most often in the base model's top-k' over n0 selection samples (ties by label index)
        become L; n estimation samples, drawn from an independent noise stream, bound the label
        probabilities and certify L. Unlike Cohen et al.'s ``predict`` nothing abstains: a radius of 0 means
        no guarantee for that e.

        ``x`` as in :meth:`certify` (one image ``(C, H, W)`` is a batch of one; uint8 and values above 1 are
        refused unless ``check_range=False``).

        ``alpha``: 0.001 by default (or the stop rule's). With ``stop_rule=StopRule(radius=R)``, n is the most
        estimation samples any input gets: each input stops as soon as the number of its predicted labels
        certified at R is settled (all k, or no more reachable within n; the rule's futility, schedule,
        spending, margin and bounds as in :meth:`certify`); the radii come from the anytime-valid bounds and
        hold at every radius.

        With thresholds (``MultiGuard(..., thresholds=...)``), ``thresholded`` holds the thresholded
        certificate of the same estimation samples at cut ``q``: per label, certified on up to ``on_radius``,
        certified off up to ``off_radius``, or undecided (``status()``); no selection samples are needed, the
        bounds hold for all labels at once.

        Returns:
            a :class:`Prediction` with ``labels`` int64 ``(N, k)`` (class indices: ``class_names[j]`` names
            them) and ``radii`` float ``(N, k)``.
        """
        rule, k, alpha = self._bind_stop_rule(stop_rule, k, alpha)
        k = check_int(k, "k", 1, self.num_classes)
        q = check_float(q, "q", 0.0, 1.0, low_open=True, high_open=True)
        n0 = check_int(n0, "n0", 1)
        n = check_int(n, "n", 1)
        if rule is not None:
            rule.looks(n)  # the schedule is checked before the first forward pass
        tensor = as_image_batch(x, check_range, image_channels(self.model))
        index_arr = as_index(index, tensor.shape[0])
        check_int(seed, "seed", 0)  # before the first forward pass
        check_int(batch_size, "batch_size", 1)
        check_bool(progress, "progress")
        selection = self.engine.count(tensor, n0, seed=seed, index=index_arr, batch_size=batch_size,
                                      num_k=self.k_prime, progress=progress, stream=STREAM_SELECTION)
        selection = selection[:, self.k_prime - 1]
        top = smoothed_top_k(selection, k)  # ties go to the lower label index
        mask = np.zeros(selection.shape, dtype=bool)
        np.put_along_axis(mask, top, True, axis=1)
        counts, samples, lower, upper, thresholded = self._estimate(
            tensor, mask, n, alpha, k, rule, True, seed=seed, index=index_arr, batch_size=batch_size,
            progress=progress, q=q,
        )
        radii = _topk.certified_radii(lower, upper, mask, k=k, k_prime=self.k_prime, sigma=self.sigma)
        return Prediction(
            labels=top,
            radii=radii,
            counts=counts,
            selection_counts=selection,
            lower=lower,
            upper=upper,
            k=k,
            k_prime=self.k_prime,
            sigma=self.sigma,
            n0=n0,
            n=n,
            alpha=alpha,
            samples=samples,
            stop_at_radius=None if rule is None else rule.radius,
            thresholded=thresholded,
        )
