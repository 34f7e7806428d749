"""Image sources: one small loader per data set, looked up by name in ``DATASETS``.

Every loader returns the whole pool of images it can find, as ``LabeledImages``, plus
its ``DataInfo`` (image shape, class names, normalisation); splitting is done
afterwards, the same way for every source. ``imagefolder`` reads one sub-folder of
PNG/JPEG images per class (torchvision's ``ImageFolder`` layout).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """Bad user input about data; the message is shown to the user as is."""


@dataclass(frozen=True)
class LabeledImages:
    """Images and their labels, kept together so that indexing can never misalign them."""

    images: torch.Tensor  # float32, (N, C, H, W), values in [0, 1]
    labels: torch.Tensor  # int64, (N,)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1:
            raise DataError(
                f"expected images (N, C, H, W) and labels (N,), got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> LabeledImages:
        """Select images by index, e.g. one split or one owner's shard."""
        return LabeledImages(images=self.images[indices], labels=self.labels[indices])


@dataclass(frozen=True)
class DataInfo:
    """What every party's images must agree on; compared between parties at the handshake."""

    image_shape: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...]  # label i is class_names[i]
    normalisation: str  # how stored pixels become model inputs in [0, 1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def settings(self) -> dict[str, str]:
        """The compared settings by name, as an operator would read them in an error."""
        return {
            "image shape": "x".join(str(size) for size in self.image_shape),
            "class names": ",".join(self.class_names),
            "normalisation": self.normalisation,
        }


Loader = Callable[..., tuple[LabeledImages, DataInfo]]


def _scaled(
    images: np.ndarray, labels: np.ndarray, *, scale: float, num_classes: int
) -> tuple[LabeledImages, DataInfo]:
    """Turn raw (N, H, W) or (N, C, H, W) pixels in [0, scale] into float32 in [0, 1].

    Label-indexed formats (IDX, torchvision, digits) name their classes by number, so an
    image folder whose class folders are named 0..9 matches them.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / np.float32(scale))
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(1)
    pool = LabeledImages(images=pixels, labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)))
    info = DataInfo(
        image_shape=tuple(pool.images.shape[1:]),
        class_names=tuple(str(label) for label in range(num_classes)),
        normalisation=f"pixels / {scale:g}",
    )
    return pool, info


def _require_root(data_root: str | None, *, name: str) -> Path:
    if data_root is None:
        raise DataError(f"data set {name!r} needs --data-root (only 'digits' is built in)")
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"data root {str(root)!r} for {name!r} is not an existing folder")
    return root


def load_digits(*, data_root: str | None = None) -> tuple[LabeledImages, DataInfo]:
    """scikit-learn's 1,797 real 8x8 digits: the built-in default, no download needed."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return _scaled(digits.images, digits.target, scale=16.0, num_classes=10)


_IDX_UBYTE = 0x08


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) of unsigned bytes with ``ndim`` dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read IDX file {str(path)!r}: {error}") from error
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{str(path)!r} is not an IDX file of unsigned bytes with {ndim} dimensions "
            f"(bad magic number {raw[:4].hex() or 'missing'})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {str(path)!r} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"IDX file {str(path)!r} is {what}: dimensions {dims} need {expected} bytes, "
            f"found {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_one(root: Path, tag: str) -> Path:
    found = sorted(p for p in root.iterdir() if tag in p.name and p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DataError(
            f"expected exactly one '*{tag}*' file in {str(root)!r}, found {names}; "
            "point --data-root at a folder holding one images (idx3) and one labels (idx1) file"
        )
    return found[0]


def load_idx(*, data_root: str | None) -> tuple[LabeledImages, DataInfo]:
    """A folder of raw MNIST-format IDX files: one idx3 images file, one idx1 labels file."""
    root = _require_root(data_root, name="idx")
    images = _read_idx(_find_one(root, "idx3"), ndim=3)
    labels = _read_idx(_find_one(root, "idx1"), ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"IDX files in {str(root)!r} hold {len(images)} images but {len(labels)} labels"
        )
    if len(images) == 0:
        raise DataError(f"IDX files in {str(root)!r} hold no images")
    return _scaled(images, labels, scale=255.0, num_classes=int(labels.max()) + 1)


def _torchvision_loader(class_name: str, expected: str, *, channels_last: bool = False) -> Loader:
    """Build a loader that pools torchvision's train and test sets, read without download.

    Pooling both lets our own splitter decide train/test/aux the same way for every source.
    """

    def load(*, data_root: str | None) -> tuple[LabeledImages, DataInfo]:
        import torchvision.datasets

        root = _require_root(data_root, name=class_name.lower())
        dataset_class = getattr(torchvision.datasets, class_name)
        try:
            parts = [
                dataset_class(str(root), train=train, download=False) for train in (True, False)
            ]
        except RuntimeError as error:
            raise DataError(
                f"{class_name} not found in {str(root)!r}: torchvision expects {expected} there; "
                f"pass --data-root pointing to a folder that holds {expected}"
            ) from error
        pixels = np.concatenate([np.asarray(part.data) for part in parts])
        if channels_last:
            pixels = pixels.transpose(0, 3, 1, 2)
        labels = np.concatenate([np.asarray(part.targets) for part in parts])
        return _scaled(pixels, labels, scale=255.0, num_classes=len(parts[0].classes))

    return load


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
# PIL colour mode -> (channels, full-scale pixel value); anything else is refused by name.
_IMAGE_MODES: dict[str, tuple[int, float]] = {
    "L": (1, 255.0),
    "RGB": (3, 255.0),
    "I;16": (1, 65535.0),
    "I": (1, 65535.0),  # how some Pillow versions open 16-bit greyscale PNGs
}


def _read_image(path: Path) -> tuple[np.ndarray, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in _IMAGE_MODES:
                raise DataError(
                    f"image {str(path)!r} has colour mode {mode!r}; use greyscale (L, 8 or 16 bit) "
                    "or RGB images"
                )
            return np.asarray(image), mode
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot read image {str(path)!r}: {error}") from None


def load_image_folder(*, data_root: str | None) -> tuple[LabeledImages, DataInfo]:
    """One sub-folder of PNG/JPEG images per class (torchvision's ``ImageFolder`` layout).

    Classes are the sub-folders in sorted order (an empty one still counts, so an owner
    who holds no image of a class keeps the others' label numbers). Images are ordered
    by file name, then class, so numbered file names keep the order they were written in.
    Every image must have the first one's size and colour mode: nothing is resized.
    """
    root = _require_root(data_root, name="imagefolder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{str(root)!r} has no class folders: expected one sub-folder of PNG/JPEG images "
            "per class (torchvision's ImageFolder layout), IDX files, or a torchvision root"
        )
    files = sorted(
        (path.name, label, path)
        for label, name in enumerate(classes)
        for path in (root / name).iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not files:
        raise DataError(f"the class folders of {str(root)!r} hold no .png/.jpg/.jpeg images")
    pixels, labels = [], []
    first_shape, first_mode, first_path = None, None, None
    for _, label, path in files:
        array, mode = _read_image(path)
        if first_path is None:
            first_shape, first_mode, first_path = array.shape, mode, path
        elif (array.shape, mode) != (first_shape, first_mode):
            raise DataError(
                f"image {str(path)!r} is {array.shape} in mode {mode}, but {str(first_path)!r} is "
                f"{first_shape} in mode {first_mode}: all images of one party need one size and mode"
            )
        pixels.append(array)
        labels.append(label)
    stacked = np.stack(pixels)
    if stacked.ndim == 4:  # (N, H, W, C) -> (N, C, H, W)
        stacked = stacked.transpose(0, 3, 1, 2)
    pool, info = _scaled(
        stacked, np.array(labels), scale=_IMAGE_MODES[first_mode][1], num_classes=len(classes)
    )
    return pool, replace(info, class_names=tuple(classes))


DATASETS: dict[str, Loader] = {
    "digits": load_digits,
    "idx": load_idx,
    "imagefolder": load_image_folder,
    "mnist": _torchvision_loader("MNIST", "MNIST/raw"),
    "fashionmnist": _torchvision_loader("FashionMNIST", "FashionMNIST/raw"),
    "cifar10": _torchvision_loader("CIFAR10", "cifar-10-batches-py", channels_last=True),
}


def get_loader(name: str) -> Loader:
    """Look a source up by name, with a message listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}"
        ) from None
