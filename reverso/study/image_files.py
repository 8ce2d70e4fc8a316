"""Images read from a folder of class sub-folders (``root/<class>/<image>``), safely.

The listing follows symbolic links to folders (datasets are often linked in) that stay inside
the class folder, each folder once, so a link loop ends; it takes only non-empty regular files
with an image suffix (a FIFO or a device named ``x.png`` is skipped, never opened), PIL decodes only the raster formats of
:data:`IMAGE_FORMATS` (never one it hands to another program, as it does EPS to Ghostscript,
whatever the file is named), and an image that would decompress to more pixels than PIL allows
(a decompression bomb) is a :class:`~reverso.errors.DatasetError`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from reverso.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
#: the only decoders PIL may use: raster formats decoded in-process (PIL hands some formats, EPS
#: among them, to outside programs such as Ghostscript, whatever the file's name says)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "PPM", "WEBP", "TIFF")


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
    """The non-empty regular image files under ``folder``, sorted. Links to folders are followed
    when they stay inside ``folder`` (itself possibly a link), each folder once: a link loop ends,
    and a link to ``/`` does not pull the whole disk in."""
    found, seen = [], set()
    inside = os.path.realpath(folder)
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        info = os.stat(top)
        if (info.st_dev, info.st_ino) in seen or os.path.commonpath([inside, real]) != inside:
            dirs[:] = []  # a link back to a folder already listed, or out of the class folder
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        for name in sorted(files):
            path = Path(top) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and _is_image_file(path):
                found.append(path)
    return found


def _is_image_file(path: Path) -> bool:
    """A regular file with bytes in it: not a FIFO or a device, and not one of the empty-looking
    files of /proc, which can block when read."""
    try:
        info = os.stat(path)
    except OSError:  # a dangling link
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size > 0


def open_image(path: Path):
    """The image at ``path``, fully read; a DatasetError for anything PIL cannot read or that is
    a decompression bomb."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            image = Image.open(f, formats=IMAGE_FORMATS)
            image.load()
            return image
    except Image.DecompressionBombError as err:
        raise DatasetError(
            f"image folder: {path} would decompress to more pixels than PIL allows "
            f"({err}); refused as a decompression bomb"
        ) from err
    except Exception as err:  # PIL's decoders raise many kinds on a malformed file
        raise DatasetError(
            f"image folder: {path} is not a readable image ({type(err).__name__}: {err})"
        ) from err
