"""Pieces shared by the dataset families: the base dataset class, image loading, errors."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset


class DatasetFileError(FileNotFoundError, ValueError):
    """A file or folder that a dataset layout requires is missing.

    It is both a ``FileNotFoundError`` and a ``ValueError`` so that callers that
    turn ``ValueError`` into a one-line message handle it too.
    """


def require(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or raise DatasetFileError naming it and what it should hold."""
    path = Path(path)
    if not path.exists():
        raise DatasetFileError(f"{what} not found: expected {path}")
    return path


def check_image_size(image_size: int) -> int:
    """Validate ``image_size`` (a positive int) and return it."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


# Transparent pixels are composited on this colour (white, as a web page shows them) before the model sees them.
ALPHA_BACKGROUND = (255, 255, 255)
# The largest image (width x height, in pixels) read; a guard against decompression bombs (a small file that
# decodes to gigabytes). The default is where Pillow itself refuses; the environment variable raises or lowers
# it for every command and worker ("none" removes it).
MAX_IMAGE_PIXELS_ENV = "MULTIGUARD_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485
# Modes with more than 8 bits per channel: 16-bit integers (scaled by 1/65535) and 32-bit floats (taken as is).
_HIGH_BIT_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_ORIENTATION_TAG = 0x0112


class ImageTooLargeError(ValueError):
    """An image over the pixel limit (:func:`max_image_pixels`); the message names the file and how to raise it.

    ``reason`` is the message without the file's name (for listings that show the name apart).
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, limit: int):
        pixels = width * height
        self.path, self.reason = Path(path), (
            f"{width}x{height} = {pixels:,} pixels, over the limit of {limit:,} (a guard against decompression "
            f"bombs): shrink it, or if the file is trusted raise the limit with {MAX_IMAGE_PIXELS_ENV}={pixels} "
            "(or 'none')")
        super().__init__(f"image {path} is {self.reason}")


def max_image_pixels() -> int | None:
    """The pixel limit for images: ``$MULTIGUARD_MAX_IMAGE_PIXELS`` (a positive integer, or ``none``) or the default.

    Raises ValueError naming the variable if it holds anything else.
    """
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if text.lower() in ("none", "0"):
        return None
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = -1
    if value < 1:
        raise ValueError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive number of pixels or 'none', got {text!r}")
    return value


@contextlib.contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Open an image file (headers only) under MultiGuard's pixel limit; the image is closed on exit.

    Raises :class:`ImageTooLargeError` (a ValueError, one line naming the file, its size and
    :data:`MAX_IMAGE_PIXELS_ENV`) for an image over :func:`max_image_pixels`, and ValueError naming the
    file for one Pillow cannot identify. Within the block Pillow's own decompression-bomb check is off
    (this limit replaces it), so ``load()`` and conversions run under the same rule for every format.
    """
    limit = max_image_pixels()
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(path)
            except (UnidentifiedImageError, SyntaxError) as exc:
                raise ValueError(f"cannot read image {path}: {_first_line(exc)}") from exc
            with img:
                width, height = img.size
                if limit is not None and width * height > limit:
                    raise ImageTooLargeError(path, width, height, limit)
                yield img
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation of an open image (1 = upright; 2..8 = mirrored and/or rotated); 1 if unreadable."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block: browsers show such an image as stored, so does MultiGuard
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def has_alpha(img: Image.Image) -> bool:
    """Whether an open image has transparency: an alpha channel or a transparent palette entry or colour."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def conversion_notes(img: Image.Image) -> list[str]:
    """What :func:`load_image` does to an open image besides decoding and resizing, one short phrase each.

    Empty for 8-bit RGB, grayscale and black-and-white images without transparency or rotation.
    """
    notes = []
    if img.mode in _HIGH_BIT_MODES:
        notes.append("32-bit float: values taken as [0, 1]" if img.mode == "F" else
                     f"{'16-bit' if img.mode.startswith('I;16') else '32-bit integer'}: values divided by 65535")
    if has_alpha(img):
        notes.append("transparency composited on white")
    if img.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif img.mode in ("YCbCr", "LAB", "HSV"):
        notes.append(f"{img.mode} converted to RGB")
    if exif_orientation(img) != 1:
        notes.append("rotated upright by its EXIF orientation")
    return notes


def _high_bit_plane(img: Image.Image, path: Path) -> Image.Image:
    """A mode-F (float32) image in [0, 1] from a 16-bit, 32-bit integer or float image."""
    array = np.asarray(img, dtype=np.float32)
    scale = _HIGH_BIT_MODES[img.mode]
    if array.size:
        low, high = float(array.min()), float(array.max())
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > scale:
            kind = "float" if img.mode == "F" else "integer"
            raise ValueError(f"cannot read image {path}: its {kind} pixel values span [{low:g}, {high:g}]; "
                             f"MultiGuard reads {img.mode} images with values in [0, {scale:g}] (save it as an "
                             "8-bit or 16-bit PNG)")
    return Image.fromarray(array / scale, mode="F")


# How an image of another size than the model's square is fitted to it: ``stretch`` resizes it to the square
# (bilinear, aspect ratio not kept), ``pad`` scales it to fit inside the square with its aspect ratio kept and
# fills the rest with black (0), ``refuse`` refuses it. Certified radii are in the pixels of the fitted image.
RESIZE_CHOICES = ("stretch", "pad", "refuse")
DEFAULT_RESIZE = "stretch"


def check_resize(resize: str) -> str:
    """``resize`` if it is one of :data:`RESIZE_CHOICES`, else ValueError naming it."""
    if resize not in RESIZE_CHOICES:
        raise ValueError(f"resize: {resize!r} is not one of {', '.join(RESIZE_CHOICES)}")
    return resize


def image_file_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as a viewer shows it (after its EXIF orientation), read from its header
    without decoding the pixels."""
    with open_image(Path(path)) as img:
        width, height = img.size
        if exif_orientation(img) in (5, 6, 7, 8):  # rotated by 90 degrees: the sides swap
            width, height = height, width
    return int(width), int(height)


def resized_files_note(dataset: object, indices: Sequence[int] | np.ndarray) -> str | None:
    """One line when files of a dataset read from image files (``dataset.paths``, ``dataset.image_size``) at
    ``indices`` are not of the model's square size: they are stretched to it (as in training), so the certified
    radii are in the stretched image's pixels, not the files'. ``None`` when every file has that size, or for a
    dataset without files (multidigits). Reads only the files' headers."""
    paths, size = getattr(dataset, "paths", None), getattr(dataset, "image_size", None)
    if paths is None or size is None:
        return None
    sizes: Counter[tuple[int, int]] = Counter()
    for index in indices:
        try:
            sizes[image_file_size(paths[int(index)])] += 1
        except (OSError, ValueError):  # a missing or unreadable file is named when it is loaded
            continue
    other = {shape: count for shape, count in sizes.items() if shape != (size, size)}
    if not other:
        return None
    width, height = max(other, key=lambda shape: other[shape])
    return (f"{sum(other.values())} of the {len(indices)} inputs' files are not {size}x{size} (e.g. {width}x{height}): "
            f"each is stretched to {size}x{size}, as in training; radii are l2 norms in the pixels of the "
            f"{size}x{size} image, not the file's")


def _fit(img: Image.Image, image_size: int, resize: str, path: Path) -> Image.Image:
    """The open image fitted to ``image_size`` x ``image_size`` as ``resize`` says (see :data:`RESIZE_CHOICES`)."""
    width, height = img.size
    if (width, height) == (image_size, image_size):
        return img
    if resize == "refuse":
        raise ValueError(f"resize: {path} is {width}x{height} pixels, the model takes {image_size}x{image_size}; "
                         "resize the file, or let MultiGuard fit it (resize 'stretch' or 'pad'; --resize on the "
                         "command line)")
    if resize == "stretch":
        return img.resize((image_size, image_size), Image.BILINEAR)
    scale = image_size / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new(img.mode, (image_size, image_size), 0)
    canvas.paste(img.resize(inner, Image.BILINEAR), ((image_size - inner[0]) // 2, (image_size - inner[1]) // 2))
    return canvas


def load_image(path: str | os.PathLike, image_size: int, channels: int = 3,
               resize: str = DEFAULT_RESIZE) -> torch.Tensor:
    """Read an image file as a float tensor ``(channels, image_size, image_size)`` in [0, 1].

    Every Pillow mode is converted to RGB (``channels=3``) or grayscale (``channels=1``) as a viewer shows it:

    - the EXIF orientation is applied (a phone photo stored sideways is turned upright, as browsers and
      torchvision's decoders do);
    - 16-bit images (``I;16`` and the 32-bit integer mode ``I`` Pillow uses for some of them) are divided by
      65535 and 32-bit float images (``F``) are taken as [0, 1], at full precision; values outside those
      ranges are refused, naming the file;
    - transparency (RGBA, LA, PA, a transparent palette entry) is composited on :data:`ALPHA_BACKGROUND` (white);
    - palette, CMYK, YCbCr, LAB and HSV images are converted by Pillow; grayscale is repeated over RGB.

    The image is then fitted to a square of side ``image_size`` as ``resize`` says: ``"stretch"`` (the
    default) resizes it (bilinear, aspect ratio not kept), ``"pad"`` keeps its aspect ratio and pads with black,
    ``"refuse"`` raises ValueError for an image of another size (see :data:`RESIZE_CHOICES`). A radius certified
    for the result is in the fitted image's pixels, not the file's.
    Raises DatasetFileError if the file is missing, :class:`ImageTooLargeError` over the pixel limit
    (:func:`max_image_pixels`) and ValueError naming the file if it cannot be decoded.
    """
    path = Path(path)
    check_resize(resize)
    if not path.is_file():
        raise DatasetFileError(f"image not found: expected {path}")
    try:
        with open_image(path) as img:
            img.load()
            if exif_orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
            if img.mode in _HIGH_BIT_MODES:
                plane = _fit(_high_bit_plane(img, path), image_size, resize, path)
                array = np.asarray(plane, dtype=np.float32).clip(0.0, 1.0)
                tensor = torch.from_numpy(array.copy()).unsqueeze(0)
                return tensor.expand(channels, -1, -1).contiguous() if channels != 1 else tensor
            if has_alpha(img):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
                img = Image.alpha_composite(background, rgba)
            img = img.convert("RGB" if channels == 3 else "L")
            img = _fit(img, image_size, resize, path)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {_first_line(exc)}") from exc
    tensor = torch.from_numpy(array.copy()).float().div_(255.0)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    else:
        tensor = tensor.permute(2, 0, 1).contiguous()
    return tensor


def class_list_difference(expected: Sequence[str], found: Sequence[str], limit: int = 4) -> str | None:
    """How the class list ``found`` (a dataset's) differs from ``expected`` (a model's), or ``None`` if equal.

    One phrase for a one-line error: the same classes in another order name the permutation (each moved class
    with its position in both lists, 1-based, at most ``limit`` of them); otherwise the classes only one list
    has (``'stripe'`` in the model, ``'striped'`` in the dataset) or the different lengths.
    """
    expected, found = [str(c) for c in expected], [str(c) for c in found]
    if expected == found:
        return None

    def some(names: list[str]) -> str:
        shown = ", ".join(repr(n) for n in names[:limit])
        return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")

    if sorted(expected) == sorted(found) and len(set(found)) == len(found):
        where = {name: i for i, name in enumerate(expected)}
        moved = [f"{name!r} is class {i + 1} here, {where[name] + 1} in the model" for i, name in enumerate(found)
                 if where[name] != i]
        shown = "; ".join(moved[:limit]) + (f"; and {len(moved) - limit} more" if len(moved) > limit else "")
        return (f"the same {len(found)} classes in another order ({shown}): the labels would be read against "
                f"the wrong outputs; list them in the model's order {some(expected)}")
    only_model = [c for c in expected if c not in set(found)]
    only_data = [c for c in found if c not in set(expected)]
    parts = []
    if only_model:
        parts.append(f"the model has {some(only_model)}")
    if only_data:
        parts.append(f"the dataset has {some(only_data)}")
    if not parts:
        parts.append(f"the model has {len(expected)} classes, the dataset {len(found)}")
    return "other classes than the model's: " + ", ".join(parts) + " that the other lacks"


_TRUE_WORDS, _FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


def parse_bool_option(name: str, value: object) -> bool:
    """A boolean dataset option, strictly: True/False, 1/0 or the words true/false/1/0/yes/no (any case).

    Anything else raises ValueError naming the option (``off`` or ``maybe`` never means true).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise ValueError(f"{name}: expected true or false (also 1/0, yes/no), got {value!r}")


def labels_to_vector(names: Sequence[str], class_index: dict[str, int], where: str) -> torch.Tensor:
    """Multi-hot float vector ``(c,)`` for the label names; an unknown name raises ValueError.

    ``where`` says where the labels came from (a file and row) for the error message.
    """
    vector = torch.zeros(len(class_index), dtype=torch.float32)
    for name in names:
        if name not in class_index:
            raise ValueError(
                f"unknown label {name!r} in {where}; the class list is {list(class_index)}"
            )
        vector[class_index[name]] = 1.0
    return vector


class MultiLabelImageDataset(Dataset):
    """Images read from files with a fixed multi-hot label matrix.

    Items are ``(image, labels)``: image a float tensor ``(in_channels, image_size,
    image_size)`` in [0, 1], labels a float multi-hot tensor ``(c,)``.

    Attributes:
        class_names: the c class names in label order.
        class_list_file: the file they were read from (csv's classes.txt), ``None`` for a fixed list.
        labels: float tensor ``(N, c)`` of all labels (read without loading images).
        paths: the N image paths.
        in_channels: 3 (images are converted to RGB).
        image_size: side of the square images.
        name, split: the dataset family and split.
    """

    in_channels = 3
    image_size_note: str | None = None  # why this image size, where it was chosen from the images
    class_list_file: Path | None = None  # the file the class names and their order were read from, if any

    def __init__(
        self,
        name: str,
        split: str,
        paths: Sequence[Path],
        labels: torch.Tensor,
        class_names: Sequence[str],
        image_size: int,
    ):
        self.name = name
        self.split = split
        self.paths = list(paths)
        self.labels = labels.float()
        self.class_names = list(class_names)
        self.image_size = check_image_size(image_size)
        if self.labels.shape != (len(self.paths), len(self.class_names)):
            raise ValueError("labels must have shape (number of images, number of classes)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.paths[index], self.image_size, self.in_channels)
        return image, self.labels[index].clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={len(self.class_names)}, image_size={self.image_size})"
        )


def not_utf8_error(path: Path, exc: UnicodeDecodeError) -> ValueError:
    """The one-line error for a text file that is not UTF-8: the file, where, and how to convert it."""
    byte = exc.object[exc.start : exc.start + 1].hex() if isinstance(exc.object, bytes) else "?"
    return ValueError(
        f"{path} is not UTF-8 text (byte 0x{byte} at position {exc.start}): save it as UTF-8, e.g. "
        f"'iconv -f latin1 -t utf-8 {path.name} > {path.stem}-utf8{path.suffix}' (if it was written in Latin-1) "
        "or Excel's 'CSV UTF-8'")


@contextlib.contextmanager
def open_text(path: Path) -> Iterator[Any]:
    """Open a UTF-8 text file (a byte-order mark, as Excel and Notepad write, is dropped) for reading.

    A file that is not UTF-8 raises the ValueError of :func:`not_utf8_error` (naming it) when it is read.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        try:
            yield handle
        except UnicodeDecodeError as exc:
            raise not_utf8_error(path, exc) from exc


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (a byte-order mark is dropped; other encodings refused)."""
    with open_text(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def read_class_list(path: Path) -> list[str]:
    """The class names of a class-list file, one a line, in label order; a name listed twice is refused by name."""
    names = read_lines(path)
    seen: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if name in seen:
            raise ValueError(f"{path} lists the class {name!r} twice (non-empty lines {seen[name]} and {number}); "
                             "each class must appear once")
        seen[name] = number
    if not names:
        raise ValueError(f"{path} lists no class: write one class name a line")
    return names


# Images whose most common size is larger than this are resized to it when the size is chosen automatically.
AUTO_IMAGE_SIZE_CAP = 224
# At most this many images (evenly spread over the list) are opened to choose the size.
AUTO_IMAGE_SIZE_SAMPLE = 1000


def infer_image_size(paths: Sequence[Path], fallback: int = AUTO_IMAGE_SIZE_CAP) -> tuple[int, str]:
    """Side ``S`` for square model inputs, from the images themselves, and a sentence saying why.

    ``S`` is the larger side of the most common image size (width x height) among the images
    (at most :data:`AUTO_IMAGE_SIZE_SAMPLE` of them, evenly spread), capped at
    :data:`AUTO_IMAGE_SIZE_CAP` so that photos are not trained at full resolution. Only image
    headers are read. Unreadable images are skipped; if none can be read, ``fallback``.
    """
    paths = list(paths)
    if len(paths) > AUTO_IMAGE_SIZE_SAMPLE:
        picks = np.linspace(0, len(paths) - 1, AUTO_IMAGE_SIZE_SAMPLE).round().astype(int)
        paths = [paths[i] for i in picks]
    sizes: Counter[tuple[int, int]] = Counter()
    for path in paths:
        try:
            with open_image(path) as img:
                sizes[img.size] += 1
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            continue
    if not sizes:
        return fallback, f"image size {fallback} (the default: none of the {len(paths)} images could be read)"
    (width, height), count = sizes.most_common(1)[0]
    side = max(width, height)
    why = f"the most common size, {width}x{height}, of {count} of the {sum(sizes.values())} images read"
    if side > AUTO_IMAGE_SIZE_CAP:
        return AUTO_IMAGE_SIZE_CAP, (f"image size {AUTO_IMAGE_SIZE_CAP} (images are resized down to it: {why}; "
                                     "choose another with --image-size)")
    return side, f"image size {side} ({why}; choose another with --image-size)"


_MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "CMYK": 4,
                  "LA": 2, "PA": 4, "RGBa": 4, "RGBX": 3, "La": 2, "I": 1, "F": 1, "I;16": 1,
                  "I;16L": 1, "I;16B": 1, "I;16N": 1}


def inspect_images(paths: Sequence[Path], progress: bool | None = None) -> dict[str, Any]:
    """Open and decode every image: which cannot be read, their sizes, their colour modes and what loading changes.

    Returns ``{"checked": N, "unreadable": [{"path", "error"}], "sizes": {"WxH": count}
    (most common first), "modes": {"RGB": count, ...} (PIL modes), "conversions": {note: count}}``;
    ``conversions`` counts what :func:`load_image` does besides decoding and resizing (see
    :func:`conversion_notes`: 16-bit scaling, transparency composited on white, CMYK converted, EXIF
    rotation). An image over the pixel limit is listed as unreadable (with how to raise the limit), not
    decoded. ``progress``: a tqdm bar; ``None`` shows it for 1000 images or more on a terminal.
    """
    from tqdm.auto import tqdm

    paths = list(paths)
    disable = (None if len(paths) >= 1000 else True) if progress is None else not progress
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    conversions: Counter[str] = Counter()
    unreadable: list[dict[str, str]] = []
    for path in tqdm(paths, desc="opening images", unit="img", disable=disable, leave=False):
        if not Path(path).is_file():
            unreadable.append({"path": str(path), "error": "file not found"})
            continue
        try:
            with open_image(path) as img:
                img.load()  # decodes the whole file: a truncated or corrupt image fails here, as in training
                notes = conversion_notes(img)
                sizes[f"{img.size[0]}x{img.size[1]}"] += 1
                modes[img.mode] += 1
                conversions.update(notes)
        except ImageTooLargeError as exc:
            unreadable.append({"path": str(path), "error": exc.reason})
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            reason = _first_line(exc).removeprefix(f"cannot read image {path}: ")
            unreadable.append({"path": str(path), "error": reason})
    return {"checked": len(paths), "unreadable": unreadable, "sizes": dict(sizes.most_common()),
            "modes": dict(modes.most_common()), "conversions": dict(conversions.most_common())}


def mode_channels(mode: str) -> int | None:
    """Number of channels of a PIL image mode (``None`` if unknown)."""
    return _MODE_CHANNELS.get(mode)
