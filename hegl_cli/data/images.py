"""Reading chest X-rays from any container, by one intensity contract, and the shared preprocessing.

The contract (``INTENSITY_RULE``), the same for every container and every step (prepare, explain,
predict): an image becomes grey intensities in [0, 1], bone bright.

1. Decode the stored values: DICOM with pydicom (:mod:`hegl_cli.data.dicom`), everything else with
   Pillow, with the EXIF orientation applied.
2. Several frames: ``data.frames`` (``first``, the default; ``middle``; ``mean``; ``refuse``).
3. Grey DICOM: the modality LUT (rescale or LUT), then the VOI window or VOI LUT when the file has one.
4. Scale by the range the values can take, not by what one image happens to hold: the bit depth
   (8-bit / 255, 16-bit / 65535, a DICOM's BitsStored, signed or not, through its rescale), or the
   window's output range. A PNG and a DICOM of the same 8-bit (or 16-bit) pixels give the same input.
5. Colour (RGB, RGBA, palette, every YBR_* pydicom converts, DICOM PALETTE COLOR through its colour
   LUT): scaled by its bit depth, then ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B.
6. MONOCHROME1 (high values dark), or a DICOM whose Presentation LUT Shape is INVERSE, is inverted
   after the VOI, once (the two are one inversion in DICOM's pipeline). A float image (a TIFF of floats) is kept as it is when
   it lies in [0, 1], else stretched to its own minimum and maximum (it has no bit depth to go by).
7. ``data.intensity: min_max`` stretches every image, after 1-6, to its own minimum and maximum.

Every path that feeds the model goes through :func:`load_image` and :func:`square_and_resize`, so
an image is preprocessed exactly as in training.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hegl_cli.config import DataConfig
from hegl_cli.data.dicom import load_dicom
from hegl_cli.data.pixels import check_pixels, luma
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.tables import read_table

# What each intensity rule changed, by container ("dicom": read with pydicom; "pillow": every other file).
# Rule 1 (hegl 0.1-0.2): 8-bit / 255, anything deeper min/max-stretched, DICOM colour by channel mean.
# Two readings agree on a container when no rule between them changed it (:func:`reading_changes`), so
# a rule that changes only DICOM leaves a cache, a model or an export of PNGs as valid as it was.
RULE_CHANGES: dict[int, frozenset[str]] = {
    2: frozenset({"pillow", "dicom"}),  # scaled by bit depth, not stretched; colour to BT.601 luma
    3: frozenset({"dicom"}),  # Presentation LUT Shape INVERSE applied after the VOI (it was ignored)
}
INTENSITY_RULE = max(RULE_CHANGES)
CONTAINERS = ("dicom", "pillow")
CONTAINER_NAMES = {"dicom": "DICOM", "pillow": "PNG/JPEG/TIFF/BMP"}
DEFAULT_MAX_PIXELS: int = DataConfig.max_pixels  # a chest X-ray has ~10 Mpx; 64 Mpx decode to 256 MB
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"} | DICOM_SUFFIXES


def has_dicom_marker(path: Path) -> bool:
    """The ``DICM`` marker after the 128-byte preamble: a DICOM file whatever its name."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path: Path) -> bool:
    """DICOM by suffix or by content (the ``DICM`` marker at byte 128)."""
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_marker(path)


def container_of(path: Path) -> str:
    """How ``path`` is read: ``dicom`` (pydicom, by suffix or marker) or ``pillow`` (everything else)."""
    return "dicom" if is_dicom(Path(path)) else "pillow"


def container_by_name(name: str) -> str:
    """The container a file name implies when the file is not at hand (a cache's ``files.json``): a
    Pillow suffix is ``pillow``; anything else may be a DICOM by its marker, so ``dicom``."""
    return "pillow" if Path(name).suffix.lower() in IMAGE_SUFFIXES - DICOM_SUFFIXES else "dicom"


def reading_changes(rule_a: int, rule_b: int, containers: Iterable[str] = CONTAINERS) -> list[str]:
    """The containers among ``containers`` that intensity rules ``rule_a`` and ``rule_b`` read
    differently (sorted; empty when they read them alike)."""
    low, high = sorted((int(rule_a), int(rule_b)))
    changed = set().union(*(kinds for rule, kinds in RULE_CHANGES.items() if low < rule <= high))
    if high > INTENSITY_RULE:
        changed = set(CONTAINERS)  # a rule of a newer hegl: this one cannot know what it changed
    return sorted(changed & set(containers))


def reading_shift(rule_a: int, rule_b: int, containers: Iterable[str] = CONTAINERS) -> str | None:
    """``"DICOM images read under intensity rule 2 and under rule 3 differ"``, or None when the two rules
    read every one of ``containers`` alike."""
    changed = reading_changes(rule_a, rule_b, containers)
    if not changed:
        return None
    kinds = " and ".join(CONTAINER_NAMES[c] for c in changed)
    return f"{kinds} images read under intensity rule {rule_a} and under rule {rule_b} differ (README, 'Images')"


def trained_reading_shift(trained_rule: int, trained_containers: Iterable[str] | None,
                          containers: Iterable[str] = CONTAINERS, rule: int = INTENSITY_RULE) -> str | None:
    """How the images a model is shown now (``containers`` read under ``rule``) are read otherwise than
    the images it trained on (``trained_containers``, None when not recorded: any, read under
    ``trained_rule``); None when alike. Only a container the model trained on can shift its predictions."""
    seen = set(trained_containers) if trained_containers else set(CONTAINERS)
    return reading_shift(trained_rule, rule, seen & set(containers))


def is_image_file(path: Path) -> bool:
    """What a folder scan picks up: a known image suffix, or a DICOM by content (``IM000001``); a
    DICOMDIR index is left out (its images are found by content)."""
    if path.name.upper() == "DICOMDIR" or path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or has_dicom_marker(path)


def _paths_from_csv(path: Path) -> list[Path]:
    """Image paths listed in a CSV (column ``path``, ``file``, ``filename`` or ``image``, else the first,
    any case), relative to the CSV's folder."""
    table = read_table(path, "list of images", header=False)
    if not table.rows:
        return []
    first = [cell.strip().lower() for cell in table.rows[0]]
    column = next((first.index(n) for n in ("path", "file", "filename", "image") if n in first), None)
    body = table.rows[1:] if column is not None else table.rows
    column = column or 0
    return [(path.parent / row[column].strip()) for row in body if len(row) > column and row[column].strip()]


def collect_image_files(inputs: list[Path], recursive: bool = False) -> tuple[list[Path], list[str]]:
    """Files as given, folders expanded to their image files (sorted; ``recursive`` goes into
    subfolders), ``.csv`` files read as lists of paths. Returns (files, one line per missing input)."""
    files: list[Path] = []
    failed: list[str] = []
    for path in map(Path, inputs):
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.iterdir()
            found = sorted(p for p in pattern if p.is_file() and is_image_file(p))
            if not found:
                failed.append(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}, or DICOM by content) in folder {path}")
            files.extend(found)
        elif path.is_file() and path.suffix.lower() == ".csv":
            listed = _paths_from_csv(path)
            files.extend(p for p in listed if p.is_file())
            failed.extend(f"image not found: {p} (listed in {path})" for p in listed if not p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            failed.append(f"image not found: {path}")
    return list(dict.fromkeys(files)), failed


def load_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, frames: str = DataConfig.frames,
               intensity: str = DataConfig.intensity) -> np.ndarray:
    """Read an X-ray as float32 intensities in [0, 1], shape (H, W), bone bright, by the contract above.

    An image whose header claims more than ``max_pixels`` pixels is refused before it is decoded; one
    with pixels that are not numbers is refused after.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    image = load_dicom(path, max_pixels, frames) if is_dicom(path) else _load_pil(path, max_pixels, frames)
    if not np.isfinite(image).all():
        raise UserError(f"cannot read image {path}: it has pixels that are not numbers (NaN or infinity)")
    return _stretch(image) if intensity == "min_max" else image


def _load_pil(path: Path, max_pixels: int, frames: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_pixels(path, img.width, img.height, max_pixels)
                count = getattr(img, "n_frames", 1)
                if count > 1:
                    return _pil_frames(path, img, count, frames)
                return _pil_to_float(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError:
        raise UserError(f"image {path} claims more pixels than PIL will decode, over the "
                        f"{max_pixels / 1e6:g} Mpx limit (data.max_pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, MemoryError, EOFError) as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc, 10_000)}") from exc


def _pil_frames(path: Path, img: Image.Image, count: int, frames: str) -> np.ndarray:
    """A multi-page TIFF (or animated PNG/GIF) by ``data.frames``, like a multi-frame DICOM."""
    if frames == "refuse":
        raise UserError(f"cannot read image {path}: it holds {count} frames and data.frames=refuse")
    chosen = range(count) if frames == "mean" else [0 if frames == "first" else count // 2]
    pages = []
    for k in chosen:
        img.seek(k)
        pages.append(_pil_to_float(ImageOps.exif_transpose(img.copy())))
    return np.mean(pages, axis=0).astype(np.float32)


BIT_DEPTH_OF_MODE = {"1": 1, "L": 8, "P": 8, "LA": 8, "PA": 8, "RGB": 8, "RGBA": 8, "RGBX": 8, "CMYK": 8,
                     "YCbCr": 8, "LAB": 8, "HSV": 8, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}


def _pil_to_float(img: Image.Image) -> np.ndarray:
    """A Pillow image -> (H, W) float32 in [0, 1] by the contract: bit depth, then luma for colour."""
    mode = img.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        img, mode = img.convert("RGBA" if mode in ("P", "PA") else "RGB"), "RGB"
    arr = np.asarray(img)
    if mode in ("RGB", "RGBA", "RGBX"):
        return luma(arr[..., :3].astype(np.float64) / 255.0)
    if mode in ("LA", "PA"):
        arr = arr[..., 0]
    if mode in BIT_DEPTH_OF_MODE:
        return (arr.astype(np.float64) / float(2 ** BIT_DEPTH_OF_MODE[mode] - 1)).astype(np.float32)
    if mode == "I":  # 32-bit integers: 16-bit data as most writers store it, else its own range
        arr = arr.astype(np.float64)
        if arr.min() >= 0 and arr.max() <= 65535:
            return (arr / 65535.0).astype(np.float32)
        return _stretch(arr.astype(np.float32))
    arr = arr.astype(np.float32)  # "F": floats have no bit depth
    if not np.isfinite(arr).all():
        return arr
    return arr if (arr.min() >= 0 and arr.max() <= 1) else _stretch(arr)


def _stretch(arr: np.ndarray) -> np.ndarray:
    """An image stretched to its own minimum and maximum (a flat image becomes 0)."""
    low, high = float(arr.min()), float(arr.max())
    if high <= low:
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - low) / (high - low)).astype(np.float32)


@dataclass(frozen=True)
class Geometry:
    """How original pixel coordinates map into the square, resized image.

    ``x_new = (x + pad_x) * scale``, likewise for y.
    """

    height: int
    width: int
    pad_x: int
    pad_y: int
    scale: float

    @property
    def side(self) -> int:
        """The padded square's side in original pixels."""
        return max(self.height, self.width)

    @property
    def size(self) -> int:
        """The cache's side in pixels."""
        return round(self.scale * self.side)

    def transform_xy(self, x: float, y: float) -> tuple[float, float]:
        return (x + self.pad_x) * self.scale, (y + self.pad_y) * self.scale

    def pixel_span(self, low: float, high: float, axis: str) -> tuple[int, int]:
        """The first and last cache pixel that the original interval [low, high) of ``axis`` ("x" or
        "y") overlaps, in exact rational arithmetic (``(x + pad) * size / side`` in floating point puts
        an edge that lands on a pixel boundary at 62.99999999999999 and fills a pixel too many)."""
        pad = self.pad_x if axis == "x" else self.pad_y
        start = (Fraction(low) + pad) * self.size / self.side
        end = (Fraction(high) + pad) * self.size / self.side
        return math.floor(start), math.ceil(end) - 1


def square_and_resize(img: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """Pad (H, W) to a centred square with zeros, then resize (antialiased) to (size, size).

    Returns the float32 image in [0, 1] and the :class:`Geometry` for annotations.
    """
    height, width = img.shape
    side = max(height, width)
    pad_y, pad_x = (side - height) // 2, (side - width) // 2
    if (height, width) != (side, side):
        square = np.zeros((side, side), dtype=np.float32)
        square[pad_y : pad_y + height, pad_x : pad_x + width] = img
    else:
        square = img.astype(np.float32, copy=False)
    if side != size:
        resized = Image.fromarray(square, mode="F").resize((size, size), Image.Resampling.BILINEAR)
        square = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return square, Geometry(height, width, pad_x, pad_y, size / side)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def preprocess_array(img: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """A loaded (H, W) [0, 1] image -> uint8 (size, size) exactly as the cache stores it."""
    square, geometry = square_and_resize(img, size)
    return to_uint8(square), geometry


def preprocess_file(path: Path | str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS, frames: str = DataConfig.frames,
                    intensity: str = DataConfig.intensity) -> tuple[np.ndarray, Geometry]:
    """Load and preprocess one image exactly as the cache stores it: uint8 (size, size)."""
    return preprocess_array(load_image(path, max_pixels, frames, intensity), size)
