"""What every dataset reader produces: one :class:`Record` per image with its :class:`Finding` s.

Coordinates are pixels of the original image; a reader validates its own format and hands these
to :mod:`hegl_cli.data.build`, which makes the cache.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any


@dataclass
class Finding:
    """One annotated finding in original pixel coordinates."""

    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    polygon: list[tuple[float, float]] | None = None
    rle: str | None = None  # a pixel mask, run-length encoded as in SIIM (see hegl_cli.data.masks.decode_rle)
    coco_rle: dict | None = None  # a pixel mask as COCO run-length encodes it ({"size": [h, w], "counts": ...})
    mask_file: str | None = None  # a pixel mask as an image file the size of the X-ray (non-zero = the finding)
    frame: tuple[int, int] | None = None  # (width, height) of the image the annotation was drawn on, if known
    origin: str | None = None  # where the annotation was read ("train-rle.csv: line 12"), for the lines that name it

    @property
    def is_pixel_mask(self) -> bool:
        return self.rle is not None or self.coco_rle is not None or self.mask_file is not None


@dataclass
class Record:
    """One image, its findings (with a box, polygon or pixel mask) and, where the data names them, its
    image-level labels and patient."""

    file_name: str
    findings: list[Finding] = field(default_factory=list)
    image_labels: set[str] | None = None  # labels of the whole image; None: the findings' labels
    patient: str | None = None  # images of one patient stay in one split
    unknown: set[str] = field(default_factory=set)  # classes whose label is not known (NaN in the cache)
    split: str | None = None  # the split the data names for the image, if any
    meta: dict[str, str] = field(default_factory=dict)  # sex, age, view, site, scanner, ... as the data gives them

    @property
    def labels(self) -> set[str]:
        found = {f.label for f in self.findings}
        return found if self.image_labels is None else self.image_labels | found


# The one spelling of a view across datasets (torchxrayvision's: NIH and PadChest say L, MIMIC LATERAL);
# every other view keeps its words, in capitals ("AP_horizontal" is PadChest's "AP Supine").
VIEW_ALIASES = {"LATERAL": "L", "LAT": "L", "AP_HORIZONTAL": "AP SUPINE"}


def view_name(text: str) -> str:
    """A view as metadata and as ``data.views`` compare it: ``pa`` -> ``PA``, ``LATERAL`` -> ``L``,
    ``AP_horizontal`` -> ``AP SUPINE``; blank stays blank."""
    words = " ".join(str(text).split()).upper()
    return VIEW_ALIASES.get(words, words)


PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-][A-Za-z0-9_.\- /]*")  # no drive, no backslash, not absolute


def safe_file_name(name: Any) -> str | None:
    """The name in normal form (``./a.png`` and ``a.png`` are one file) if it stays inside the images
    folder, else None (``../x``, ``/x``, ``C:\\x``, empty, NUL)."""
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        return None
    if PLAIN_NAME.fullmatch(name):  # the common case, without pathlib (224k dataset rows)
        normal = posixpath.normpath(name)
        return None if ".." in name.split("/") or normal in (".", "") else normal
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        return None
    if ".." in posix.parts or ".." in windows.parts:
        return None
    normal = posixpath.normpath(name.replace("\\", "/"))
    return None if normal in (".", "") else normal


def box_from_columns(row: dict[str, str], keys: tuple[str, str, str, str], xywh: bool
                     ) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) from four columns of a CSV row, given as x, y, w, h (``xywh``) or x1, y1, x2, y2;
    ValueError when a value is missing, not finite or the box has no area."""
    a, b, c, d = (float(row[k]) for k in keys)
    box = (a, b, a + c, b + d) if xywh else (a, b, c, d)
    if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box {[row[k] for k in keys]} is not finite with area")
    return box


@dataclass
class SplitSource:
    """One split to import: an annotation file and the folder its ``file_name``s live in."""

    name: str
    annotations: Path
    images: Path
    cue: dict[str, int] | None = None  # file name -> spurious cue present (synthetic data)
    records: list[Record] | None = None  # already read (CSV formats); None: parse ``annotations`` as JSON
