"""multidigits: an offline multi-label dataset composed from scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` ships 1797 real 8x8 scans of handwritten digits
(no download). Each multidigits image is a 2x2 grid of cells, each cell of side
``image_size // 2``; 1 to 4 cells (uniformly many) hold a scan, each of a
different digit class, the other cells are black. The labels are the set of digit
classes present: 10 classes, 2.5 labels per image on average (VOC 2007 has 2.5).

The training split draws its scans only from the first half of the 1797 scans
(indices 0..898) and the test split only from the second half (899..1796), so test
handwriting is never seen in training. Image ``i`` of a split is drawn from a
generator seeded from ``(seed, split, i)``: the dataset is deterministic for a
seed, and a larger ``size`` only appends images.

Pixels are 8-bit, as in an image file: each resized scan is rounded to the nearest ``i / 255`` and stored as
uint8 (:attr:`MultiDigits.pixels`), so the images lie on the 1/255 grid that sound noise needs
(``docs/soundness.md``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from multiguard.data._common import check_image_size

TRAIN_SPLIT, TEST_SPLIT = "train", "test"
DEFAULT_IMAGE_SIZE = 32
DEFAULT_SIZES = {"train": 8000, "test": 2000}
CLASS_NAMES = [str(d) for d in range(10)]
NUM_SCANS = 1797
HALF = 899  # scans [0, HALF) build the train split, [HALF, NUM_SCANS) the test split
_SPLIT_CODE = {"train": 1, "test": 2}

_SCANS: tuple[np.ndarray, np.ndarray] | None = None


def _load_scans() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 scans as float32 ``(1797, 8, 8)`` in [0, 1] and their digits ``(1797,)``."""
    global _SCANS
    if _SCANS is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        _SCANS = (np.clip(digits.images.astype(np.float32) / 16.0, 0.0, 1.0), digits.target.astype(np.int64))
    return _SCANS


def scan_range(split: str) -> range:
    """Indices (into ``load_digits()``) of the scans a split may use."""
    if split == "train":
        return range(0, HALF)
    if split == "test":
        return range(HALF, NUM_SCANS)
    raise ValueError(f"split must be 'train' or 'test' for multidigits, got {split!r}")


class MultiDigits(Dataset):
    """In-memory multidigits split.

    Items are ``(image, labels)``: image float ``(1, S, S)`` in [0, 1], labels float ``(10,)``.

    Attributes:
        pixels: uint8 tensor ``(N, 1, S, S)``, the 8-bit pixels.
        images: float tensor ``(N, 1, S, S)``: ``pixels / 255`` (float32 of grid values).
        labels: float tensor ``(N, 10)``.
        digits: int64 ``(N, 4)``: the digit in each grid cell (row-major), -1 for an empty cell.
        scan_ids: int64 ``(N, 4)``: the ``load_digits`` index of the scan in each cell, -1 if empty.
        class_names: ``['0', ..., '9']``; in_channels: 1; image_size: S.
    """

    in_channels = 1
    name = "multidigits"

    def __init__(
        self,
        split: str = TRAIN_SPLIT,
        image_size: int = DEFAULT_IMAGE_SIZE,
        seed: int = 0,
        size: int | None = None,
        min_digits: int = 1,
        max_digits: int = 4,
    ):
        allowed = scan_range(split)
        self.image_size = check_image_size(image_size)
        if self.image_size < 2:
            raise ValueError(f"image_size must be at least 2 for multidigits, got {image_size}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        size = DEFAULT_SIZES[split] if size is None else size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if not 1 <= min_digits <= max_digits <= 4:
            raise ValueError(
                f"min_digits and max_digits must satisfy 1 <= min_digits <= max_digits <= 4, "
                f"got {min_digits} and {max_digits}"
            )
        self.split, self.seed = split, int(seed)
        self.class_names = list(CLASS_NAMES)
        scans, targets = _load_scans()
        pool = np.asarray(allowed)
        by_class = [pool[targets[pool] == d] for d in range(10)]

        cell = self.image_size // 2
        resized = F.interpolate(
            torch.from_numpy(scans[pool]).unsqueeze(1), size=(cell, cell), mode="bilinear", align_corners=False
        ).clamp_(0.0, 1.0).squeeze(1).mul_(255).round_().to(torch.uint8)  # 8-bit, as an image file holds it
        position = {int(scan): i for i, scan in enumerate(pool)}

        digits = np.full((size, 4), -1, dtype=np.int64)
        scan_ids = np.full((size, 4), -1, dtype=np.int64)
        for i in range(size):
            rng = np.random.default_rng([self.seed, _SPLIT_CODE[split], i])
            count = int(rng.integers(min_digits, max_digits + 1))
            classes = rng.choice(10, size=count, replace=False)
            cells = rng.permutation(4)[:count]
            for d, c in zip(classes, cells, strict=True):
                digits[i, c] = d
                scan_ids[i, c] = by_class[d][rng.integers(len(by_class[d]))]

        pixels = torch.zeros(size, 1, self.image_size, self.image_size, dtype=torch.uint8)
        for c in range(4):
            rows = np.nonzero(scan_ids[:, c] >= 0)[0]
            if len(rows) == 0:
                continue
            local = torch.as_tensor([position[int(s)] for s in scan_ids[rows, c]])
            top, left = (c // 2) * cell, (c % 2) * cell
            pixels[torch.as_tensor(rows), 0, top : top + cell, left : left + cell] = resized[local]
        labels = torch.zeros(size, 10)
        for c in range(4):
            rows = np.nonzero(digits[:, c] >= 0)[0]
            labels[torch.as_tensor(rows), torch.as_tensor(digits[rows, c])] = 1.0
        self.pixels, self.labels = pixels, labels
        self.images = pixels.float().div_(255.0)
        self.digits, self.scan_ids = torch.from_numpy(digits), torch.from_numpy(scan_ids)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return (
            f"MultiDigits(split={self.split!r}, images={len(self)}, image_size={self.image_size}, "
            f"seed={self.seed})"
        )


def load_multidigits(
    split: str = TRAIN_SPLIT, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, **options
) -> MultiDigits:
    """Build a multidigits split; ``options``: ``size``, ``min_digits``, ``max_digits``."""
    return MultiDigits(split=split, image_size=image_size, seed=seed, **options)
