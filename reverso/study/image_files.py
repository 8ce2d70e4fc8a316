"""Images read from a folder of class sub-folders (``root/<class>/<image>``), safely.

The listing follows symbolic links to folders (datasets are often linked in) but visits each
folder once, so a link loop ends; it takes only regular files with an image suffix (a FIFO or a
device named ``x.png`` is skipped, never opened), and an image that would decompress to more
pixels than PIL allows (a decompression bomb) is a :class:`~reverso.errors.DatasetError`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from reverso.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


class ImageFiles(Dataset):
    """``(transform(image), class index)`` for every image under ``folder/<class>/``; classes
    are the sub-folders' names, sorted."""

    def __init__(self, folder: Path, transform: Callable | None = None):
        folder = Path(folder)
        self.classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        self.samples = [
            (path, index)
            for index, name in enumerate(self.classes)
            for path in find_images(folder / name)
        ]
        if not self.samples:
            raise DatasetError(
                f"image folder: {folder} has no class sub-folders with images "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        image = open_image(path)
        return (self.transform(image) if self.transform else image), label


def find_images(folder: Path) -> list[Path]:
    """The regular image files under ``folder``, sorted; each folder (linked or not) visited once."""
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        info = os.stat(top)
        if (info.st_dev, info.st_ino) in seen:  # a link back to a folder already listed
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        for name in sorted(files):
            path = Path(top) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and _is_regular(path):
                found.append(path)
    return found


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a dangling link
        return False


def open_image(path: Path):
    """The image at ``path``, fully read; a DatasetError for anything PIL cannot read or that is
    a decompression bomb."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image
    except Image.DecompressionBombError as err:
        raise DatasetError(
            f"image folder: {path} would decompress to more pixels than PIL allows "
            f"({err}); refused as a decompression bomb"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"image folder: {path} is not a readable image ({err})") from err
