"""Every seed the package derives, in one place: the noise streams of sampling and the training draws.

All randomness comes from generators seeded from a user's ``seed`` and the position of the draw, through
NumPy's ``SeedSequence`` (which hashes its inputs into a well-mixed state, so distinct tuples give
independent streams). The global RNGs are never used. No torch.

Noise of the smoothed classifier: sample ``s`` of the input with dataset index ``index`` lies in block
``s // NOISE_BLOCK``, drawn whole from a generator seeded with ``noise_seed(seed, index, block, stream)``.
Streams keep the draws of different purposes apart.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NOISE_BLOCK",
    "SHARED_NOISE_INDEX",
    "STREAM_ATTACK",
    "STREAM_ESTIMATION",
    "STREAM_SELECTION",
    "STREAM_THRESHOLDS",
    "TRAINING_TAGS",
    "attack_evaluation_seed",
    "noise_seed",
    "training_seed",
]

NOISE_BLOCK = 100
"""Samples per noise block. Each block is drawn whole (a partly used last block is still drawn in full),
so that every sample's noise is the same however the samples are split into forward batches. 100 divides
the usual n (100, 1000, 2000, 10000) and the default batch size, so nothing is wasted there."""

SHARED_NOISE_INDEX = 2**64 - 1
"""The index in the seed of shared noise (one noise block per block index for every input of a batch): no
dataset index (a non-negative int64) takes it, so shared noise never repeats an input's own noise."""

STREAM_ESTIMATION = 0
"""Noise of ``sample_counts``, ``certify`` and the n estimation samples of ``predict``."""
STREAM_SELECTION = 1
"""Noise of the n0 selection samples of ``predict``, independent of the estimation samples."""
STREAM_ATTACK = 2
"""Noise of the attack's gradient estimates (never the noise that certifies or measures)."""
STREAM_THRESHOLDS = 3
"""Noise of the validation images on which a threshold rule chooses per-label thresholds."""

_ATTACK_EVALUATION_TAG = 0xA77AC

TRAINING_TAGS = {"init": 1, "epoch": 2, "eval_noise": 3, "subset_train": 4, "subset_test": 5, "rank_noise": 6}
"""Purposes of the seeds training derives (model initialisation, each epoch's order and noise, ...)."""


def noise_seed(seed: int, index: int, block: int, stream: int = STREAM_ESTIMATION) -> int:
    """The 64-bit seed of one noise block: ``SeedSequence(seed, spawn_key=(stream, index, block))``."""
    sequence = np.random.SeedSequence(seed, spawn_key=(stream, index, block))
    return int(sequence.generate_state(1, np.uint64)[0])


def attack_evaluation_seed(seed: int) -> int:
    """The seed of the fresh samples that measure an attacked point: differs from ``seed`` and from the
    attack's own stream, so the measurement reuses neither the certification's noise nor the attack's."""
    return int(np.random.SeedSequence([int(seed), _ATTACK_EVALUATION_TAG]).generate_state(1, np.uint32)[0]) >> 1


def training_seed(seed: int, tag: str, index: int = 0) -> int:
    """A 63-bit seed for one training draw, from ``(seed, TRAINING_TAGS[tag], index)``."""
    state = np.random.SeedSequence([seed, TRAINING_TAGS[tag], index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1
