"""The smoothed multi-label classifier: Monte Carlo sampling on any PyTorch model, certificates, predictions.

For a base classifier f that returns c scores, a noise level sigma and k' (``k_prime``), MultiGuard samples
``eps ~ N(0, sigma^2 I)`` and counts how often each label lands among the k' highest scores of
``f(x + eps)`` (ties broken by label index). Those counts give bounds on the label probabilities
``p_i = Pr(i in top-k'(f(x + eps)))``, and :mod:`multiguard.certify` turns the bounds into certified radii:
below ``radii[e-1]``, at least e labels of L(x) stay among the k labels of largest p_i (Jia, Cao, Wang,
Gong, NeurIPS 2022, Theorem 1). All the math lives in :mod:`multiguard.certify`; this module only samples.

Ties: the top-k' of a score row is the first k' entries of a stable descending sort (``torch.sort(...,
stable=True)``), so equal scores go to the lower label index; ``torch.topk`` makes no promise about ties
and is used only where it provably gives the same answer (see ``_top_k_prime``).

Reproducibility: the noise of input ``x[i]`` is a function of ``(seed, index[i])`` only. Sample ``s`` of an
input lies in noise block ``s // NOISE_BLOCK``; every block is drawn whole by one ``normal_`` call from a
generator seeded with :func:`noise_seed` ``(seed, index, block, stream)``. Batch size, the other inputs
sharing a forward batch, shards and resume points therefore change nothing (on the same device type: CUDA
and CPU generators give different numbers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from . import certify as _certify
from .certify import _check_alpha, _check_int, _check_positive

__all__ = ["NOISE_BLOCK", "Certificate", "MultiGuard", "Prediction", "noise_seed", "smoothed_top_k"]

NOISE_BLOCK = 100
"""Samples per noise block. Each block is drawn whole (a partly used last block is still drawn in full),
so that every sample's noise is the same however the samples are split into forward batches. 100 divides
the usual n (100, 1000, 2000, 10000) and the default batch size, so nothing is wasted there."""

STREAM_ESTIMATION = 0
"""Noise stream of :meth:`MultiGuard.sample_counts`, :meth:`MultiGuard.certify` and the n estimation samples
of :meth:`MultiGuard.predict`."""
STREAM_SELECTION = 1
"""Noise stream of the n0 selection samples of :meth:`MultiGuard.predict`, independent of the other one."""


def noise_seed(seed: int, index: int, block: int, stream: int = STREAM_ESTIMATION) -> int:
    """The 64-bit seed of one noise block: ``SeedSequence(seed, spawn_key=(stream, index, block))``.

    NumPy's SeedSequence hashes all four integers into a well-mixed state, so distinct tuples give
    statistically independent torch generators. The global RNG is never touched.
    """
    sequence = np.random.SeedSequence(seed, spawn_key=(stream, index, block))
    return int(sequence.generate_state(1, np.uint64)[0])


def smoothed_top_k(counts: np.ndarray, k: int) -> np.ndarray:
    """The smoothed classifier's top-k from Monte Carlo counts: int64 ``(N, k)``, ties by label index."""
    counts = np.asarray(counts)
    return np.argsort(-counts, axis=-1, kind="stable")[..., :k].astype(np.int64)


# --------------------------------------------------------------------------------------------- validation


def _as_batch(x: object) -> torch.Tensor:
    """``x`` as a CPU-or-device tensor without copying where possible; the batch axis comes first."""
    if isinstance(x, torch.Tensor):
        tensor = x.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"x must be a tensor or an array, got {type(x).__name__}: {error}") from None
    if tensor.ndim < 1:
        raise ValueError("x must have a batch dimension: shape (N, *input_shape)")
    if tensor.is_complex():
        raise ValueError(f"x must hold real numbers, got dtype {tensor.dtype}")
    return tensor


def _as_index(index: object, num_inputs: int) -> np.ndarray:
    if index is None:
        return np.arange(num_inputs, dtype=np.int64)
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    array = np.asarray(index)
    if array.ndim != 1 or array.shape[0] != num_inputs:
        raise ValueError(f"index must have shape ({num_inputs},) to match x's batch dimension, got {array.shape}")
    if num_inputs and array.dtype.kind not in "iu":
        raise ValueError(f"index must hold integers, got dtype {array.dtype}")
    if num_inputs and array.min() < 0:
        raise ValueError("index must hold non-negative integers")
    return array.astype(np.int64)


def _as_label_mask(labels: object, num_inputs: int, num_classes: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    mask = np.asarray(labels)
    if mask.shape != (num_inputs, num_classes):
        raise ValueError(
            f"labels must be an (N, c) = ({num_inputs}, {num_classes}) mask matching x, got shape {mask.shape}"
        )
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
            raise ValueError("labels must be a boolean mask (or hold only 0 and 1)")
        mask = mask.astype(bool)
    return mask


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True, eq=False)
class Certificate:
    """What :meth:`MultiGuard.certify` found for N inputs with label sets L (c labels, k predicted).

    With probability at least ``1 - alpha`` over the sampling (for each input separately), every
    ``lower[i, l] <= p_l`` for l in L and ``upper[i, l] >= p_l`` for l outside L, and then at least e labels
    of ``labels[i]`` are among the smoothed classifier's top k at every ``x[i] + delta`` with
    ``||delta||_2 < radii[i, e-1]``.

    Attributes:
        counts: int64 ``(N, c)``: number of the n samples whose top-k' contains each label.
        lower, upper: float ``(N, c)`` Clopper-Pearson bounds at ``alpha / c`` each.
        labels: bool ``(N, c)`` mask of L.
        radii: float ``(N, k)`` certified radius of each intersection size e = 1..k (``inf`` possible).
    """

    counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    labels: np.ndarray
    radii: np.ndarray
    k: int
    k_prime: int
    sigma: float
    n: int
    alpha: float
    second_terms: bool = True

    def intersection_size(self, radius: float | np.ndarray) -> np.ndarray:
        """Certified intersection size e(R): int64 ``(N,)`` for a scalar R, ``(N, len(R))`` for an array."""
        return _certify.intersection_size_from_radii(self.radii, radius)

    def metrics(self, radius: float | np.ndarray) -> _certify.CertifiedMetrics:
        """Certified top-k precision, recall and F1 at R (one value per radius), averaged over inputs."""
        return _certify.certified_metrics(self.intersection_size(radius), self.labels, self.k)

    def _check_jia(self) -> None:
        if self.k_prime != 1:
            raise ValueError(
                f"the Jia et al. baseline needs k_prime = 1, this certificate has k_prime = {self.k_prime}"
            )

    def jia_radii(self) -> np.ndarray:
        """Jia et al. (2020) per-label radii ``(N, c)`` from the same bounds (0 outside L); k_prime = 1 only."""
        self._check_jia()
        return _certify.jia_certified_radii(self.lower, self.upper, self.labels, k=self.k, sigma=self.sigma)

    def jia_intersection_size(self, radius: float | np.ndarray) -> np.ndarray:
        """e_Jia(R) from the same bounds: int64 ``(N,)`` or ``(N, len(R))``; k_prime = 1 only."""
        return _certify.jia_intersection_size_from_radii(self.jia_radii(), radius)

    def jia_metrics(self, radius: float | np.ndarray) -> _certify.CertifiedMetrics:
        """Certified precision, recall and F1 of the Jia et al. baseline at R; k_prime = 1 only."""
        return _certify.certified_metrics(self.jia_intersection_size(radius), self.labels, self.k)


@dataclass(frozen=True, eq=False)
class Prediction:
    """What :meth:`MultiGuard.predict` returns for N inputs.

    Attributes:
        labels: int64 ``(N, k)``: the predicted labels, most frequent in the selection samples first.
        radii: float ``(N, k)``: with probability at least ``1 - alpha``, at least e of ``labels[i]`` stay in
            the smoothed top-k at every ``x[i] + delta`` with ``||delta||_2 < radii[i, e-1]``.
        counts: int64 ``(N, c)`` estimation counts (n samples); ``selection_counts`` the n0 selection counts.
        lower, upper: float ``(N, c)`` bounds from ``counts``.
    """

    labels: np.ndarray
    radii: np.ndarray
    counts: np.ndarray
    selection_counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    k: int
    k_prime: int
    sigma: float
    n0: int
    n: int
    alpha: float

    @property
    def mask(self) -> np.ndarray:
        """The predicted labels as a bool ``(N, c)`` mask."""
        mask = np.zeros(self.counts.shape, dtype=bool)
        np.put_along_axis(mask, self.labels, True, axis=1)
        return mask

    def intersection_size(self, radius: float | np.ndarray) -> np.ndarray:
        """How many predicted labels are certified to stay at R: int64 ``(N,)`` or ``(N, len(R))``."""
        return _certify.intersection_size_from_radii(self.radii, radius)


# ----------------------------------------------------------------------------------------------- the class


def _module_state(model: object) -> tuple[torch.device | None, torch.dtype | None]:
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device, None
    return None, None


@contextlib.contextmanager
def _eval_mode(model: object) -> Iterator[None]:
    """Every submodule in eval mode inside, each one's own training flag restored afterwards."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _top_k_prime(scores: torch.Tensor, num_k: int) -> torch.Tensor:
    """``(B, num_k)`` indices of the num_k highest scores of each row, in order, ties to the lower label index.

    The reference is a stable descending sort (equal scores keep label order; ``torch.topk`` makes no
    promise about ties). On the CPU, where a data-dependent branch costs no device sync, the cheaper
    ``topk`` of num_k + 1 values is used when those values are all distinct in every row of the batch: the
    top num_k labels and their order are then unique, so both agree exactly.
    """
    if scores.device.type == "cpu":
        values, indices = torch.topk(scores, min(num_k + 1, scores.shape[1]), dim=1, sorted=True)
        if not bool((values[:, 1:] == values[:, :-1]).any()):
            return indices[:, :num_k]
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :num_k]


def _start_host_copy(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Copy to the host; on CUDA without blocking (pinned memory) and with an event to wait on later."""
    if tensor.device.type == "cuda":
        host = tensor.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event
    return tensor.cpu(), None


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
        autocast_dtype: run the forward under ``torch.autocast`` with this dtype (``torch.bfloat16`` or
            ``torch.float16`` on CUDA). Off by default.
        channels_last: feed 4-D batches in channels_last memory format; a module is converted in place.
            The noise values are the same either way.

    Noise is drawn on the model's device in the dtype of its first floating parameter (float32 for a
    callable without parameters). Sampling runs under ``torch.inference_mode()`` with the module in eval
    mode; each submodule's training flag is restored afterwards.
    """

    def __init__(
        self,
        model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        k_prime: int = 1,
        clamp: tuple[float, float] | None = None,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
    ) -> None:
        if not callable(model):
            raise ValueError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        self.num_classes = _check_int(num_classes, "num_classes", 1)
        self.sigma = _check_positive(sigma, "sigma")
        self.k_prime = _check_int(k_prime, "k_prime", 1, self.num_classes)
        if clamp is not None:
            try:
                lo, hi = (float(bound) for bound in clamp)
            except (TypeError, ValueError):
                raise ValueError(f"clamp must be None or a pair (lo, hi), got {clamp!r}") from None
            if not lo < hi:
                raise ValueError(f"clamp must satisfy lo < hi, got {clamp!r}")
            clamp = (lo, hi)
        self.clamp = clamp
        if autocast_dtype is not None and (
            not isinstance(autocast_dtype, torch.dtype) or not autocast_dtype.is_floating_point
        ):
            raise ValueError(f"autocast_dtype must be None or a floating torch.dtype, got {autocast_dtype!r}")
        self.autocast_dtype = autocast_dtype
        self.channels_last = bool(channels_last)

        module_device, module_dtype = _module_state(model)
        if device is not None:
            try:
                self.device = torch.device(device)
            except (TypeError, RuntimeError):
                raise ValueError(f"device must name a torch device, got {device!r}") from None
            if isinstance(model, torch.nn.Module):
                model.to(self.device)
        else:
            self.device = module_device if module_device is not None else torch.device("cpu")
        self.dtype = module_dtype if module_dtype is not None else torch.get_default_dtype()
        if self.channels_last and isinstance(model, torch.nn.Module):
            model.to(memory_format=torch.channels_last)
        self.model = model

    def __repr__(self) -> str:
        return (
            f"MultiGuard(num_classes={self.num_classes}, sigma={self.sigma}, k_prime={self.k_prime}, "
            f"clamp={self.clamp}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------------------------------- public

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
        num_k = self.k_prime if max_k_prime is None else _check_int(max_k_prime, "max_k_prime", 1, self.num_classes)
        counts = self._sample(x, n, seed, index, batch_size, num_k, STREAM_ESTIMATION, progress)
        return counts if max_k_prime is not None else counts[:, self.k_prime - 1]

    def certify(
        self,
        x: torch.Tensor | np.ndarray,
        labels: np.ndarray | torch.Tensor,
        n: int,
        alpha: float,
        k: int,
        seed: int = 0,
        index: np.ndarray | torch.Tensor | list[int] | None = None,
        batch_size: int = 1000,
        progress: bool = False,
        second_terms: bool = True,
    ) -> Certificate:
        """Certify, for each input, how many labels of its label set L stay in the smoothed top-k.

        With probability at least ``1 - alpha`` for each input, at least e labels of ``labels[i]`` are in
        the smoothed classifier's top k at every ``x[i] + delta`` with ``||delta||_2 < radii[i, e-1]``.

        Args:
            x: ``(N, *input_shape)``; labels: ``(N, c)`` boolean mask of L (e.g. the ground truth).
            n: noise samples per input; alpha: failure probability; k: labels the smoothed classifier
                predicts. seed, index, batch_size, progress: as in :meth:`sample_counts`.
            second_terms: ``False`` drops the u- and v-terms of Theorem 1 (the paper's ablation).

        Returns:
            a :class:`Certificate` with ``radii`` ``(N, k)`` from :func:`multiguard.certify.certified_radii`.
        """
        alpha = _check_alpha(alpha)
        k = _check_int(k, "k", 1, self.num_classes)
        tensor = _as_batch(x)
        mask = _as_label_mask(labels, tensor.shape[0], self.num_classes)
        counts = self._sample(tensor, n, seed, index, batch_size, self.k_prime, STREAM_ESTIMATION, progress)
        counts = counts[:, self.k_prime - 1]
        lower, upper = _certify.label_probability_bounds(counts, n, alpha)
        radii = _certify.certified_radii(
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
        )

    def predict(
        self,
        x: torch.Tensor | np.ndarray,
        k: int,
        n0: int = 100,
        n: int = 1000,
        alpha: float = 0.001,
        seed: int = 0,
        index: np.ndarray | torch.Tensor | list[int] | None = None,
        batch_size: int = 1000,
        progress: bool = False,
    ) -> Prediction:
        """Predict k labels per input and certify how many of them survive any perturbation up to a radius.

        With probability at least ``1 - alpha`` for each input, at least e of the returned ``labels[i]`` are
        in the smoothed classifier's top k at every ``x[i] + delta`` with ``||delta||_2 < radii[i, e-1]``.

        The k labels most often in the base model's top-k' over n0 selection samples (ties by label index)
        become L; n estimation samples, drawn from an independent noise stream, bound the label
        probabilities and certify L. Unlike Cohen et al.'s ``predict`` nothing abstains: a radius of 0 means
        no guarantee for that e.

        Returns:
            a :class:`Prediction` with ``labels`` int64 ``(N, k)`` and ``radii`` float ``(N, k)``.
        """
        k = _check_int(k, "k", 1, self.num_classes)
        n0 = _check_int(n0, "n0", 1)
        n = _check_int(n, "n", 1)
        alpha = _check_alpha(alpha)
        tensor = _as_batch(x)
        index_arr = _as_index(index, tensor.shape[0])
        self._check_sampling_args(n, seed, batch_size, progress)  # before the first forward pass
        selection = self._sample(tensor, n0, seed, index_arr, batch_size, self.k_prime, STREAM_SELECTION, progress)[
            :, self.k_prime - 1
        ]
        top = smoothed_top_k(selection, k)  # ties go to the lower label index
        mask = np.zeros(selection.shape, dtype=bool)
        np.put_along_axis(mask, top, True, axis=1)
        counts = self._sample(tensor, n, seed, index_arr, batch_size, self.k_prime, STREAM_ESTIMATION, progress)[
            :, self.k_prime - 1
        ]
        lower, upper = _certify.label_probability_bounds(counts, n, alpha)
        radii = _certify.certified_radii(lower, upper, mask, k=k, k_prime=self.k_prime, sigma=self.sigma)
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
        )

    # ------------------------------------------------------------------------------------------ engine

    @staticmethod
    def _check_sampling_args(n: object, seed: object, batch_size: object, progress: object) -> None:
        _check_int(n, "n", 1)
        _check_int(seed, "seed", 0)
        _check_int(batch_size, "batch_size", 1)
        if not isinstance(progress, (bool, np.bool_)):
            raise ValueError(f"progress must be True or False, got {progress!r}")

    def _sample(
        self,
        x: object,
        n: int,
        seed: int,
        index: object,
        batch_size: int,
        num_k: int,
        stream: int,
        progress: bool,
    ) -> np.ndarray:
        """Cumulative top-k' counts ``(N, num_k, c)`` for k' = 1..num_k from n samples per input.

        The samples of all inputs form one stream cut into forward batches of ``batch_size``; a batch may
        hold the tail of one input and the head of the next. Counts accumulate on the device in a ring of
        slots (one per input that a batch can touch) and each input's row goes to the host once, when its
        last sample has been counted.
        """
        self._check_sampling_args(n, seed, batch_size, progress)
        n, seed, batch_size = int(n), int(seed), int(batch_size)
        tensor = _as_batch(x)
        num_inputs = tensor.shape[0]
        index_arr = _as_index(index, num_inputs)
        c = self.num_classes
        out = np.zeros((num_inputs, num_k, c), dtype=np.int64)
        if num_inputs == 0:
            return out

        device, dtype = self.device, self.dtype
        input_shape = tuple(tensor.shape[1:])
        batch_size = min(batch_size, n * num_inputs)
        slots = -(-batch_size // n) + 1  # inputs a batch can touch, plus the one carried over
        width = num_k * c + 1  # per slot: position-p counts of every label, then the non-finite count
        dummy = slots * width  # bin for finite samples' non-finite flag
        position_offsets = torch.arange(num_k, device=device) * c

        buffer = torch.empty((batch_size, *input_shape), dtype=dtype, device=device)
        block = torch.empty((NOISE_BLOCK, *input_shape), dtype=dtype, device=device)
        block_key: tuple[int, int] | None = None
        generator = torch.Generator(device=device)
        accumulator = torch.zeros(slots * width + 1, dtype=torch.int64, device=device)
        per_slot = accumulator[:dummy].view(slots, width)
        ones = torch.ones(batch_size * (num_k + 1), dtype=torch.int64, device=device)
        pending: tuple[list[int], torch.Tensor, torch.cuda.Event | None] | None = None
        autocast = (
            torch.autocast(device_type=device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        checked_shape = False

        with (
            torch.inference_mode(),
            _eval_mode(self.model),
            tqdm(total=num_inputs, disable=not progress, unit="input", desc="sampling") as bar,
        ):
            position, done = 0, 0  # current input and how many of its samples are already in a batch
            while position < num_inputs:
                segments: list[tuple[int, int, int, int]] = []  # (input, first sample, end sample, offset)
                filled = 0
                while filled < batch_size and position < num_inputs:
                    take = min(n - done, batch_size - filled)
                    segments.append((position, done, done + take, filled))
                    filled += take
                    done += take
                    if done == n:
                        position, done = position + 1, 0

                for i, start, stop, offset in segments:
                    # Noise of samples [start, stop) of input i, block by block, written into the buffer.
                    for b in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
                        lo, hi = max(start, b * NOISE_BLOCK), min(stop, (b + 1) * NOISE_BLOCK)
                        target = buffer[offset + lo - start : offset + hi - start]
                        if hi - lo == NOISE_BLOCK:
                            generator.manual_seed(noise_seed(seed, int(index_arr[i]), b, stream))
                            target.normal_(generator=generator)
                        else:  # a block cut by the batch boundary or by n: draw it whole, keep the part
                            if block_key != (i, b):
                                generator.manual_seed(noise_seed(seed, int(index_arr[i]), b, stream))
                                block.normal_(generator=generator)
                                block_key = (i, b)
                            target.copy_(block[lo - b * NOISE_BLOCK : hi - b * NOISE_BLOCK])
                    row = tensor[i].to(device=device, dtype=dtype, non_blocking=True)
                    chunk = buffer[offset : offset + stop - start]
                    chunk.mul_(self.sigma).add_(row)

                batch = buffer[:filled]
                if self.clamp is not None:
                    batch.clamp_(*self.clamp)
                if self.channels_last and batch.ndim == 4:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with autocast:
                    scores = self.model(batch)
                if not checked_shape:
                    if not isinstance(scores, torch.Tensor):
                        raise ValueError(f"model must return a tensor, returned {type(scores).__name__}")
                    if tuple(scores.shape) != (filled, c):
                        raise ValueError(
                            f"model returned {tuple(scores.shape)}, expected ({filled}, {c}) "
                            "(scores of shape (batch, num_classes))"
                        )
                    checked_shape = True
                elif tuple(scores.shape) != (filled, c):
                    raise ValueError(f"model returned {tuple(scores.shape)}, expected ({filled}, {c})")

                order = _top_k_prime(scores, num_k)
                first = segments[0][0] * n + segments[0][1]  # the batch's first sample in the whole stream
                samples = torch.arange(first, first + filled, device=device)
                base = torch.div(samples, n, rounding_mode="floor").remainder_(slots).mul_(width)
                label_bins = (base[:, None] + position_offsets[None, :] + order).reshape(-1)
                finite = torch.isfinite(scores).all(dim=1)
                flag_bins = torch.where(finite, dummy, base + num_k * c)
                bins = torch.cat((label_bins, flag_bins))
                accumulator.index_put_((bins,), ones[: bins.numel()], accumulate=True)

                # Inputs whose last sample was in this batch leave the ring: their rows are copied out and
                # the slots zeroed on the device, then sent to the host without waiting for them. The
                # previous batch's rows are read only now, so a GPU keeps working on this batch meanwhile.
                previous, pending = pending, None
                finished = [i for i, _, stop, _ in segments if stop == n]
                if finished:
                    finished_slots = torch.arange(finished[0], finished[-1] + 1, device=device).remainder_(slots)
                    snapshot = per_slot.index_select(0, finished_slots)
                    per_slot.index_fill_(0, finished_slots, 0)
                    pending = (finished, *_start_host_copy(snapshot))
                if previous is not None:
                    self._finish(previous, out, index_arr, n, num_k, bar)
            if pending is not None:
                self._finish(pending, out, index_arr, n, num_k, bar)
        return out

    @staticmethod
    def _finish(
        pending: tuple[list[int], torch.Tensor, torch.cuda.Event | None],
        out: np.ndarray,
        index_arr: np.ndarray,
        n: int,
        num_k: int,
        bar: tqdm,
    ) -> None:
        """Wait for finished inputs' rows to reach the host, check them and store cumulative counts."""
        finished, host, event = pending
        if event is not None:
            event.synchronize()
        rows = host.numpy()
        for i, row in zip(finished, rows, strict=True):
            if row[-1]:
                raise ValueError(
                    f"model returned non-finite scores for input {i} (index {index_arr[i]}) "
                    f"in {row[-1]} of its {n} noisy samples"
                )
            out[i] = np.cumsum(row[:-1].reshape(num_k, -1), axis=0)
        bar.update(len(finished))
