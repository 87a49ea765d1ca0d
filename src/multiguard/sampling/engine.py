"""The sampling engine: counts of top-k' membership over Gaussian-noise copies of inputs, on any torch model.

:class:`SamplingEngine` is the one loop that runs a base classifier on noisy inputs. It knows nothing of
bounds or certificates (:mod:`multiguard.certificates.topk`) nor of the smoothed classifier's API
(:class:`multiguard.sampling.smoothed.MultiGuard`); it answers one question: for samples ``[start_i, stop_i)`` of each
input i, how often was each label among the base classifier's k' highest scores, for every k' <= K?

The loop, step by step (each a method below):

1. :meth:`SamplingEngine._plan`: the samples of all inputs form one stream cut into forward batches of
   ``batch_size``; a batch may hold the tail of one input and the head of the next.
2. :meth:`SamplingEngine._draw_noise`: each sample's noise comes from its noise block, seeded by
   :func:`multiguard.common.seeds.noise_seed` ``(seed, index, block, stream)``, so batching never changes a draw.
   The noise kind (:mod:`multiguard.sampling.noise`: float Gaussian, or the sound rounded Gaussian on the 1/255
   grid) fills the block; with shared noise the index is :data:`multiguard.common.seeds.SHARED_NOISE_INDEX` for
   every input, so all inputs see the same block.
3. the forward pass of the noisy input the noise kind forms (``x + sigma * noise``, or ``(x_int + noise_int) /
   255``), clamped if asked.
4. :meth:`SamplingEngine._count`: the top-k' labels of every score row are added to per-input counters that
   live on the device (a ring of slots, one per input a batch can touch); an input's row is copied to the
   host once, when its last sample has been counted, without waiting for the copy (no sync inside the loop).

Ties: the top-k' of a score row is the first k' entries of a stable descending sort, so equal scores go to
the lower label index; ``torch.topk`` is used only where it provably gives the same answer.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from multiguard.common.seeds import NOISE_BLOCK, SHARED_NOISE_INDEX, noise_seed
from multiguard.common.validation import MAX_N, check_bool, check_int, invalid
from multiguard.sampling.noise import FloatNoise, SoundNoise

SHARED_CACHE_BYTES = 256 * 2**20
"""With shared noise, the noise blocks kept for the next inputs (the least recently used ones leave first)."""

__all__ = ["SamplingEngine", "as_batch", "as_index", "eval_mode", "module_device_dtype", "top_k_prime"]


# ---------------------------------------------------------------------------------------------- helpers


def as_batch(x: object) -> torch.Tensor:
    """``x`` as a tensor without copying where possible; the batch axis comes first."""
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


def as_index(index: object, num_inputs: int) -> np.ndarray:
    """int64 ``(N,)`` non-negative indices naming the inputs (default ``range(N)``)."""
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


def module_device_dtype(model: object) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of a module's first parameter or buffer (``None`` where it has none)."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device, None
    return None, None


@contextlib.contextmanager
def eval_mode(model: object) -> Iterator[None]:
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


def _as_thresholds(thresholds: object, num_classes: int) -> np.ndarray | None:
    """``thresholds`` as float64 ``(T, c)`` score thresholds (``(c,)`` is one row), or ``None``."""
    if thresholds is None:
        return None
    array = np.asarray(thresholds, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != num_classes or array.shape[0] == 0 or np.isnan(array).any():
        raise invalid("thresholds", f"score thresholds of shape (c,) or (T, c) with c = {num_classes}, no NaN",
                      f"shape {array.shape}")
    return array


def top_k_prime(scores: torch.Tensor, num_k: int) -> torch.Tensor:
    """``(B, num_k)`` indices of the num_k highest scores of each row, in order, ties to the lower label index.

    The reference is a stable descending sort. On the CPU, where a data-dependent branch costs no device
    sync, the cheaper ``topk`` of num_k + 1 values is used when those values are all distinct in every row
    of the batch: the top num_k labels and their order are then unique, so both agree exactly.
    """
    if scores.device.type == "cpu":
        values, indices = torch.topk(scores, min(num_k + 1, scores.shape[1]), dim=1, sorted=True)
        if not bool((values[:, 1:] == values[:, :-1]).any()):
            return indices[:, :num_k]
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :num_k]


def _start_host_copy(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Copy to the host; on CUDA without blocking and with an event to wait on later."""
    if tensor.device.type == "cuda":
        host = tensor.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event
    return tensor.cpu(), None


@dataclass(frozen=True)
class _Segment:
    """Samples ``[start, stop)`` of input ``input`` at rows ``[offset, offset + stop - start)`` of a batch."""

    input: int
    start: int
    stop: int
    offset: int


# ----------------------------------------------------------------------------------------------- engine


class SamplingEngine:
    """Runs a base classifier on Gaussian-noise copies of inputs and counts top-k' memberships.

    Args:
        model: a module or callable mapping a float batch ``(B, *input_shape)`` to scores ``(B, c)``.
        num_classes: c.
        sigma: noise standard deviation, in the units of the input.
        clamp: optional ``(lo, hi)`` applied to ``x + noise`` before the model (part of the base classifier).
        device, dtype: where and in which dtype noise is drawn and the input is formed (noise is drawn and
            added in this dtype before any autocast).
        autocast_dtype: run the forward under ``torch.autocast`` with this dtype, or ``None``.
        channels_last: feed 4-D batches in channels_last memory format.
        noise: the noise kind (:mod:`multiguard.sampling.noise`; default :class:`FloatNoise` at sigma).
        shared: one noise block per block index, added to every input (seeded by ``(seed, block, stream)``
            only): each input's samples stay i.i.d., but different inputs see the same noise.

    The arguments are taken as already checked (:class:`multiguard.sampling.smoothed.MultiGuard` checks them).
    """

    def __init__(
        self,
        model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor],
        num_classes: int,
        sigma: float,
        *,
        clamp: tuple[float, float] | None,
        device: torch.device,
        dtype: torch.dtype,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        noise: FloatNoise | SoundNoise | None = None,
        shared: bool = False,
    ) -> None:
        self.model = model
        self.noise = FloatNoise(sigma) if noise is None else noise
        self.shared = shared
        self.num_classes = num_classes
        self.sigma = sigma
        self.clamp = clamp
        self.device = device
        self.dtype = dtype
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last

    # ---------------------------------------------------------------------------------------------- public

    def count(
        self,
        x: object,
        n: int,
        *,
        seed: int,
        index: object = None,
        batch_size: int = 1000,
        num_k: int = 1,
        stream: int = 0,
        progress: bool = False,
        start: object = None,
        thresholds: np.ndarray | None = None,
    ) -> np.ndarray:
        """Cumulative top-k' counts ``(N, num_k, c)``: ``[i, j-1, l]`` = how many of samples
        ``[start_i, start_i + n)`` of input i had label l among the base classifier's top j.

        ``start`` (default 0 for every input) lets a caller continue sampling where an earlier call
        stopped: samples ``[0, a)`` and then ``[a, b)`` add up to exactly the counts of ``[0, b)``.

        ``thresholds``: float ``(T, c)`` score thresholds (or ``(c,)``, T = 1). Then the result is
        ``(N, num_k + T, c)``: rows ``num_k + t`` hold per-label on-counts, how many of the same samples had
        ``score_l > thresholds[t, l]``, counted from the same forward passes as the top-k' counts.
        """
        n = check_int(n, "n", 1, MAX_N)
        seed = check_int(seed, "seed", 0)
        batch_size = check_int(batch_size, "batch_size", 1)
        progress = check_bool(progress, "progress")
        tensor = self.noise.inputs(as_batch(x))
        num_inputs = tensor.shape[0]
        index_arr = as_index(index, num_inputs)
        starts = np.zeros(num_inputs, dtype=np.int64) if start is None else np.asarray(start, dtype=np.int64)
        if starts.shape != (num_inputs,) or (starts < 0).any():
            raise invalid("start", f"({num_inputs},) non-negative sample positions", start)
        on_thresholds = _as_thresholds(thresholds, self.num_classes)
        num_on = 0 if on_thresholds is None else on_thresholds.shape[0]
        out = np.zeros((num_inputs, num_k + num_on, self.num_classes), dtype=np.int64)
        if num_inputs == 0:
            return out
        batches = self._plan(num_inputs, n, min(batch_size, n * num_inputs))
        self._run(tensor, batches, starts, n, seed, index_arr, num_k, stream, progress, out, on_thresholds)
        return out

    def count_nested(
        self,
        x: object,
        sizes: object,
        *,
        seed: int,
        index: object = None,
        batch_size: int = 1000,
        num_k: int = 1,
        stream: int = 0,
        progress: bool = False,
        start: object = None,
        thresholds: np.ndarray | None = None,
    ) -> np.ndarray:
        """Cumulative counts at a series of nested sample sizes: int64 ``(N, S, num_k, c)`` (``(N, S, num_k + T,
        c)`` with ``thresholds``: the on-counts of :meth:`count` at each size).

        ``sizes`` is a strictly increasing series of S sample sizes (e.g.
        :func:`multiguard.certificates.sequential.sample_size_schedule`); entry ``[i, s]`` equals ``count(x,
        sizes[s], ...)``
        for input i exactly, the same samples with the same noise, at the cost of one call of
        ``count(x, sizes[-1], ...)``: each sample's noise depends only on its position, so the samples
        ``[sizes[s-1], sizes[s])`` are drawn once, in full batches over all inputs, and added on.
        """
        sizes_arr = np.asarray(sizes)
        if (
            sizes_arr.ndim != 1 or sizes_arr.size == 0 or sizes_arr.dtype.kind not in "iu"
            or (sizes_arr < 1).any() or (np.diff(sizes_arr) <= 0).any()
        ):
            raise invalid("sizes", "a strictly increasing 1-D series of positive sample sizes", sizes)
        tensor = as_batch(x)
        num_inputs = tensor.shape[0]
        first = np.zeros(num_inputs, dtype=np.int64) if start is None else np.asarray(start, dtype=np.int64)
        num_rows = num_k + (0 if thresholds is None else _as_thresholds(thresholds, self.num_classes).shape[0])
        out = np.zeros((num_inputs, sizes_arr.size, num_rows, self.num_classes), dtype=np.int64)
        done = 0
        total = np.zeros((num_inputs, num_rows, self.num_classes), dtype=np.int64)
        for position, size in enumerate(sizes_arr.tolist()):
            total += self.count(
                tensor, size - done, seed=seed, index=index, batch_size=batch_size, num_k=num_k, stream=stream,
                progress=progress, start=first + done, thresholds=thresholds,
            )
            out[:, position] = total
            done = size
        return out

    def noisy_scores(self, x: object, n: int, *, seed: int, index: object = None, stream: int = 0) -> np.ndarray:
        """float64 ``(N, n, c)``: the base classifier's scores on n noisy copies of each input, the noise drawn as
        :meth:`count` draws it (the same samples for the same seed, index and stream)."""
        n = check_int(n, "n", 1, MAX_N)
        tensor = self.noise.inputs(as_batch(x))
        index_arr = as_index(index, tensor.shape[0])
        out = np.zeros((tensor.shape[0], n, self.num_classes))
        input_shape = tuple(tensor.shape[1:])
        noise_buffer, batch_buffer, cache = self._buffers(n, input_shape)
        generator = torch.Generator(device=self.device)
        with torch.inference_mode(), eval_mode(self.model):
            for i in range(tensor.shape[0]):
                self._draw_noise(noise_buffer, [_Segment(i, 0, n, 0)], np.zeros(tensor.shape[0], dtype=np.int64),
                                 seed, index_arr, stream, cache, generator)
                row = tensor[i].to(device=self.device, dtype=self.noise.input_dtype(self.dtype))
                batch = self.noise.combine(noise_buffer, row, batch_buffer)
                out[i] = self._forward(batch).float().cpu().numpy()
        return out

    # ---------------------------------------------------------------------------------------------- steps

    @staticmethod
    def _plan(num_inputs: int, n: int, batch_size: int) -> list[list[_Segment]]:
        """Step 1: cut the stream of ``num_inputs * n`` samples into batches of at most ``batch_size``."""
        batches: list[list[_Segment]] = []
        position, done = 0, 0  # current input and how many of its samples are already in a batch
        while position < num_inputs:
            segments: list[_Segment] = []
            filled = 0
            while filled < batch_size and position < num_inputs:
                take = min(n - done, batch_size - filled)
                segments.append(_Segment(position, done, done + take, filled))
                filled += take
                done += take
                if done == n:
                    position, done = position + 1, 0
            batches.append(segments)
        return batches

    def _draw_noise(
        self, buffer: torch.Tensor, segments: list[_Segment], starts: np.ndarray, seed: int,
        index_arr: np.ndarray, stream: int, cache: dict, generator: torch.Generator,
    ) -> None:
        """Step 2: write each segment's noise into its rows of ``buffer``, block by block.

        A block cut by the batch boundary or by n is drawn whole once and the needed part kept (``cache``
        holds the last such block), so every sample's value is that of its block whatever the batching.
        """
        for seg in segments:
            first = int(starts[seg.input])
            lo_sample, hi_sample = first + seg.start, first + seg.stop  # absolute sample positions
            for b in range(lo_sample // NOISE_BLOCK, (hi_sample - 1) // NOISE_BLOCK + 1):
                lo, hi = max(lo_sample, b * NOISE_BLOCK), min(hi_sample, (b + 1) * NOISE_BLOCK)
                target = buffer[seg.offset + lo - lo_sample : seg.offset + hi - lo_sample]
                if self.shared:
                    target.copy_(self._shared_block(b, seed, stream, cache, generator)[lo - b * NOISE_BLOCK :
                                                                                      hi - b * NOISE_BLOCK])
                    continue
                if hi - lo == NOISE_BLOCK:
                    generator.manual_seed(noise_seed(seed, int(index_arr[seg.input]), b, stream))
                    self.noise.draw(target, generator)
                    continue
                if cache.get("key") != (seg.input, b):
                    generator.manual_seed(noise_seed(seed, int(index_arr[seg.input]), b, stream))
                    self.noise.draw(cache["block"], generator)
                    cache["key"] = (seg.input, b)
                target.copy_(cache["block"][lo - b * NOISE_BLOCK : hi - b * NOISE_BLOCK])

    def _shared_block(self, block: int, seed: int, stream: int, cache: dict, generator: torch.Generator
                      ) -> torch.Tensor:
        """Shared noise: block ``block`` of every input, seeded by ``(seed, SHARED_NOISE_INDEX, block, stream)``,
        kept in ``cache["shared"]`` (least recently used out, past :data:`SHARED_CACHE_BYTES`)."""
        blocks: OrderedDict = cache["shared"]
        if block in blocks:
            blocks.move_to_end(block)
            return blocks[block]
        template = cache["block"]
        capacity = max(2, SHARED_CACHE_BYTES // max(1, template.numel() * template.element_size()))
        if len(blocks) >= capacity:
            blocks.popitem(last=False)
        generator.manual_seed(noise_seed(seed, SHARED_NOISE_INDEX, block, stream))
        fresh = torch.empty_like(template)
        self.noise.draw(fresh, generator)
        blocks[block] = fresh
        return fresh

    def _buffers(self, batch_size: int, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The noise buffer ``(batch_size, *input_shape)`` in the noise kind's dtype, the buffer of model inputs
        (the same tensor for float noise) and the block cache of :meth:`_draw_noise`."""
        noise_dtype = self.noise.noise_dtype(self.dtype)
        noise_buffer = torch.empty((batch_size, *input_shape), dtype=noise_dtype, device=self.device)
        batch_buffer = (torch.empty((batch_size, *input_shape), dtype=self.dtype, device=self.device)
                        if self.noise.separate_output(self.dtype) else noise_buffer)
        cache = {"block": torch.empty((NOISE_BLOCK, *input_shape), dtype=noise_dtype, device=self.device),
                 "key": None, "shared": OrderedDict()}
        return noise_buffer, batch_buffer, cache

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Step 3: the base classifier's scores ``(B, c)`` for a batch of noisy inputs."""
        if self.clamp is not None:
            batch.clamp_(*self.clamp)
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            scores = self.model(batch)
        if not isinstance(scores, torch.Tensor):
            raise ValueError(f"model must return a tensor, returned {type(scores).__name__}")
        if tuple(scores.shape) != (batch.shape[0], self.num_classes):
            raise ValueError(
                f"model returned {tuple(scores.shape)}, expected ({batch.shape[0]}, {self.num_classes}) "
                "(scores of shape (batch, num_classes))"
            )
        if scores.dtype == torch.bool or scores.is_complex():
            raise ValueError(f"model must return real-valued scores (logits), returned dtype {scores.dtype}")
        return scores

    def _run(
        self, tensor: torch.Tensor, batches: list[list[_Segment]], starts: np.ndarray, n: int, seed: int,
        index_arr: np.ndarray, num_k: int, stream: int, progress: bool, out: np.ndarray,
        on_thresholds: np.ndarray | None = None,
    ) -> None:
        """Steps 2-4 over every batch; finished inputs' cumulative counts land in ``out``."""
        device, dtype, c = self.device, self.dtype, self.num_classes
        input_shape = tuple(tensor.shape[1:])
        batch_size = max(seg.offset + seg.stop - seg.start for seg in batches[0])
        slots = max(len(segments) for segments in batches) + 1  # inputs a batch can touch, plus one carried over
        num_on = 0 if on_thresholds is None else on_thresholds.shape[0]
        # per slot: position-p counts of every label, then the on-counts of every threshold row, then the
        # non-finite count
        width = (num_k + num_on) * c + 1
        dummy = slots * width  # bin for finite samples' non-finite flag
        position_offsets = torch.arange(num_k, device=device) * c
        on = None if on_thresholds is None else (
            torch.as_tensor(on_thresholds, dtype=torch.float64, device=device),
            num_k * c + torch.arange(num_on * c, device=device),
        )

        buffer, batch_buffer, cache = self._buffers(batch_size, input_shape)
        input_dtype = self.noise.input_dtype(dtype)
        generator = torch.Generator(device=device)
        accumulator = torch.zeros(slots * width + 1, dtype=torch.int64, device=device)
        per_slot = accumulator[:dummy].view(slots, width)
        ones = torch.ones(batch_size * (num_k + 1), dtype=torch.int64, device=device)
        pending: tuple[list[int], torch.Tensor, torch.cuda.Event | None] | None = None

        with (
            torch.inference_mode(),
            eval_mode(self.model),
            tqdm(total=len(out), disable=not progress, unit="input", desc="sampling") as bar,
        ):
            for segments in batches:
                filled = segments[-1].offset + segments[-1].stop - segments[-1].start
                self._draw_noise(buffer, segments, starts, seed, index_arr, stream, cache, generator)
                for seg in segments:
                    row = tensor[seg.input].to(device=device, dtype=input_dtype, non_blocking=True)
                    rows = slice(seg.offset, seg.offset + seg.stop - seg.start)
                    self.noise.combine(buffer[rows], row, batch_buffer[rows])
                scores = self._forward(batch_buffer[:filled])
                self._count(scores, segments, n, num_k, slots, width, dummy, position_offsets, accumulator, ones, on)

                # Inputs whose last sample was in this batch leave the ring: their rows are copied out and
                # the slots zeroed on the device, then sent to the host without waiting for them. The
                # previous batch's rows are read only now, so a GPU keeps working on this batch meanwhile.
                previous, pending = pending, None
                finished = [seg.input for seg in segments if seg.stop == n]
                if finished:
                    finished_slots = torch.arange(finished[0], finished[-1] + 1, device=device).remainder_(slots)
                    snapshot = per_slot.index_select(0, finished_slots)
                    per_slot.index_fill_(0, finished_slots, 0)
                    pending = (finished, *_start_host_copy(snapshot))
                if previous is not None:
                    self._finish(previous, out, index_arr, n, num_k, bar)
            if pending is not None:
                self._finish(pending, out, index_arr, n, num_k, bar)

    @staticmethod
    def _count(
        scores: torch.Tensor, segments: list[_Segment], n: int, num_k: int, slots: int, width: int, dummy: int,
        position_offsets: torch.Tensor, accumulator: torch.Tensor, ones: torch.Tensor,
        on: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Step 4: add each row's top-k' positions, its labels above their thresholds (``on``: the thresholds
        ``(T, c)`` and the slot offsets of their counts) and a non-finite flag to its input's slot, on the
        device."""
        order = top_k_prime(scores, num_k)
        filled = scores.shape[0]
        first = segments[0].input * n + segments[0].start  # the batch's first sample in the whole stream
        samples = torch.arange(first, first + filled, device=scores.device)
        base = torch.div(samples, n, rounding_mode="floor").remainder_(slots).mul_(width)
        label_bins = (base[:, None] + position_offsets[None, :] + order).reshape(-1)
        finite = torch.isfinite(scores).all(dim=1)
        flag_bins = torch.where(finite, dummy, base + width - 1)
        bins = torch.cat((label_bins, flag_bins))
        accumulator.index_put_((bins,), ones[: bins.numel()], accumulate=True)
        if on is not None:
            thresholds, offsets = on
            # compared in float64: the thresholds as given, whatever dtype the scores come in
            above = (scores.to(torch.float64).unsqueeze(1) > thresholds.unsqueeze(0)).reshape(filled, -1)
            accumulator.index_put_(((base[:, None] + offsets[None, :]).reshape(-1),), above.reshape(-1).long(),
                                   accumulate=True)

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
            rows_of_input = row[:-1].reshape(out.shape[1], -1)
            out[i, :num_k] = np.cumsum(rows_of_input[:num_k], axis=0)  # top-j = positions 1..j
            out[i, num_k:] = rows_of_input[num_k:]  # on-counts
        bar.update(len(finished))
