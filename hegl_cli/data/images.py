"""Reading chest X-rays (PNG/JPEG 8/16-bit, grayscale/RGB, DICOM) and the shared preprocessing.

Every path that feeds the model (prepare, explain) goes through :func:`load_image` and
:func:`square_and_resize`, so an image is preprocessed exactly as in training.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from hegl_cli.config import DataConfig
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.tables import read_table

DEFAULT_MAX_PIXELS: int = DataConfig.max_pixels  # a chest X-ray has ~10 Mpx; 64 Mpx decode to 256 MB
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"} | DICOM_SUFFIXES


def is_dicom(path: Path) -> bool:
    """DICOM by suffix or by the ``DICM`` magic at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse an image whose header claims more pixels than ``max_pixels`` (before decoding it)."""
    if width <= 0 or height <= 0:
        raise UserError(f"cannot read image {path}: it claims {width}x{height} pixels")
    if width * height > max_pixels:
        raise UserError(f"image {path} is {width}x{height} = {width * height / 1e6:.0f} Mpx, over the "
                        f"{max_pixels / 1e6:g} Mpx limit (data.max_pixels; raise it if the file is genuine)")


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
            found = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failed.append(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
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


def load_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an X-ray as float32 intensities in [0, 1], shape (H, W), bone bright.

    8-bit images are divided by 255; deeper images (16-bit PNG, DICOM) are scaled by their own
    min/max after DICOM rescale and VOI windowing. RGB is converted to luminance. DICOM
    MONOCHROME1 (high values dark) is inverted so that bone is bright like every other input.
    An image whose header claims more than ``max_pixels`` pixels is refused before it is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path}")
    image = _load_dicom(path, max_pixels) if is_dicom(path) else _load_pil(path, max_pixels)
    if not np.isfinite(image).all():
        raise UserError(f"cannot read image {path}: it has pixels that are not numbers (NaN or infinity)")
    return image


def _load_pil(path: Path, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_pixels(path, img.width, img.height, max_pixels)
                img.load()
                return _pil_to_float(img)
    except Image.DecompressionBombError:
        raise UserError(f"image {path} claims more pixels than PIL will decode, over the "
                        f"{max_pixels / 1e6:g} Mpx limit (data.max_pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise UserError(f"cannot read image {path}: {first_line(exc, 10_000)}") from exc


def _pil_to_float(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "PA"):
        img = img.convert("L")
    arr = np.asarray(img)
    if arr.ndim == 3:  # unusual multi-band modes
        arr = arr[..., :3].mean(axis=-1)
    if arr.dtype == np.uint8 or img.mode == "L":
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    return _minmax(arr.astype(np.float32))


def _minmax(arr: np.ndarray) -> np.ndarray:
    low, high = float(arr.min()), float(arr.max())
    if high <= low:
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - low) / (high - low)).astype(np.float32)


def _load_dicom(path: Path, max_pixels: int) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:  # pragma: no cover - pydicom is a dependency
        raise UserError("reading DICOM needs pydicom: pip install pydicom") from exc
    try:
        ds = pydicom.dcmread(path)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # pydicom raises many types for bad files
        raise UserError(f"cannot read DICOM {path}: {first_line(exc)}") from exc
    if "PixelData" not in ds:
        raise UserError(f"cannot read DICOM {path}: it holds no image (no PixelData)")
    check_pixels(path, cols, rows * max(frames, 1), max_pixels)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # no decoder for a compressed transfer syntax, truncated data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise UserError(f"cannot decode DICOM {path}{name}: {first_line(exc)}") from exc
    if pixels.ndim == 3:  # multi-frame or colour: take luminance of the first frame
        pixels = pixels[0] if ds.get("SamplesPerPixel", 1) == 1 else pixels.mean(axis=-1)
    arr = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds)
    arr = _minmax(np.asarray(arr, dtype=np.float32))
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return arr


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


def preprocess_file(path: Path | str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, Geometry]:
    """Load and preprocess one image exactly as the cache stores it: uint8 (size, size)."""
    return preprocess_array(load_image(path, max_pixels), size)
