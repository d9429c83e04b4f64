"""DICOM files to grey intensities in [0, 1] by hegl's intensity contract (see :mod:`hegl_cli.data.images`).

Every transfer syntax the installed pydicom plugins decode is read (hegl installs pylibjpeg with its
OpenJPEG and RLE plugins, pyjpegls and GDCM: JPEG baseline, lossless, JPEG-LS, JPEG 2000, RLE,
deflate). Grey images go through the modality LUT (rescale or LUT) and, when the file has one, the
VOI window or VOI LUT, then are scaled by the range those values can take: the stored bit depth
through the rescale, or the window's output range. Colour images (RGB, every YBR_* pydicom converts,
PALETTE COLOR through its colour LUT) are scaled by their bit depth and turned to grey by the one
luma rule. A grey image is inverted (after the VOI, over its output range) when it is MONOCHROME1 or
its Presentation LUT Shape is INVERSE: once, never twice (:func:`presentation_inverts`). Multi-frame
files follow ``data.frames``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from hegl_cli.data.pixels import check_pixels, luma
from hegl_cli.errors import UserError, first_line

FRAME_POLICIES = ("first", "middle", "mean", "refuse")
GPL_ONLY = {"1.2.840.10008.1.2.4.51": "12-bit JPEG Extended"}  # decoded only by pylibjpeg-libjpeg (GPL-3.0)


def read_dataset(path: Path):
    """The dataset of a DICOM file (a file without the preamble is read as a bare dataset); a missing
    transfer syntax is taken from how the file is encoded when its pixel data is not compressed."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                ds = pydicom.dcmread(path, force=True)  # no 128-byte preamble and 'DICM': an older file
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad files
        raise UserError(f"cannot read DICOM {path}: {first_line(exc)}") from exc
    if "PixelData" not in ds and ("DirectoryRecordSequence" in ds or path.name.upper() == "DICOMDIR"):
        raise UserError(f"cannot read DICOM {path}: a DICOMDIR (an index of other DICOM files), not an image")
    if "PixelData" not in ds:
        if not ds.keys():
            raise UserError(f"cannot read DICOM {path}: not a DICOM file (no 'DICM' marker and no readable elements)")
        raise UserError(f"cannot read DICOM {path}: it holds no image (no PixelData)")
    _infer_transfer_syntax(ds, path)
    return ds


def _infer_transfer_syntax(ds, path: Path) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    encoded = ds["PixelData"]
    if getattr(encoded, "is_undefined_length", False) or (isinstance(ds.PixelData, bytes) and ds.PixelData[:4] == b"\xfe\xff\x00\xe0"):
        raise UserError(f"cannot decode DICOM {path}: it names no transfer syntax (file meta (0002,0010) is missing) "
                        "and its pixel data is compressed, so the codec cannot be told")
    implicit, little = getattr(ds, "original_encoding", (True, True))
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def _frame_count(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _decode(ds, path: Path, index: int | None):
    """pydicom's decoding of one frame (``index``) or all (None), colour converted to RGB."""
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(ds, index=index, as_rgb=True)
    except Exception as exc:  # noqa: BLE001 - no plugin for a compressed syntax, truncated data, bad values
        syntax = ds.file_meta.TransferSyntaxUID
        reasons = " ".join(" ".join(str(exc).split("\n")).split())[:400] or type(exc).__name__
        hint = (f"; {GPL_ONLY[syntax]} needs pylibjpeg-libjpeg (GPL-3.0, which hegl does not install): "
                "pip install pylibjpeg-libjpeg" if syntax in GPL_ONLY else "")
        raise UserError(f"cannot decode DICOM {path} (transfer syntax {syntax.name}): {reasons}{hint}") from exc


def _grey_range(ds) -> tuple[float, float]:
    """The range grey values can take after the modality LUT (and before any VOI): stored bit depth
    (signed or not) through the rescale, or the modality LUT's output bit depth."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    low, high = (0.0, float(2**bits - 1)) if int(ds.get("PixelRepresentation", 0) or 0) == 0 else (
        float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1))
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    return low, high


def _voi_range(ds, modality: tuple[float, float]) -> tuple[float, float] | None:
    """The output range of the file's VOI transform (None when it has none), as pydicom applies it."""
    if ds.get("VOILUTSequence"):
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return modality
    return None


def presentation_inverts(ds) -> bool:
    """Whether the VOI output is shown inverted (its minimum white): the Presentation LUT Shape (2050,0020)
    is INVERSE, or the image is MONOCHROME1.

    In the standard's grayscale pipeline (modality LUT, VOI LUT, Presentation LUT) the two are one and the
    same inversion: a DX image that is MONOCHROME1 must say INVERSE, and IDENTITY is for MONOCHROME2
    (PS3.3 C.8.11.3), so MONOCHROME1 with INVERSE is inverted once. MONOCHROME2 with INVERSE (a
    hospital's "show it inverted") is inverted, as pydicom's ``apply_presentation_lut`` does. An explicit
    IDENTITY on a MONOCHROME1 image, outside DX's rule, is read as MONOCHROME1 says (as hegl always has).
    """
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return shape == "INVERSE" or str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"


def grey_frame(ds, pixels: np.ndarray) -> np.ndarray:
    """A grey frame's stored values -> [0, 1]: modality LUT, VOI when present, range, then the presentation's
    inversion (MONOCHROME1 or Presentation LUT Shape INVERSE, :func:`presentation_inverts`)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about values it then handles (floats into a VOI LUT)
        values = apply_modality_lut(pixels, ds)
        low, high = _grey_range(ds)
        voi = _voi_range(ds, (low, high))
        if voi is not None:
            values = apply_voi_lut(values, ds)
            low, high = voi
    values = np.asarray(values, dtype=np.float64)
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    if presentation_inverts(ds):
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def colour_frame(ds, pixels: np.ndarray) -> np.ndarray:
    """A colour frame (RGB after pydicom's conversion, or palette indices) -> grey in [0, 1]."""
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(pixels, ds).astype(np.float64)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if "RedPaletteColorLookupTableDescriptor" in ds else 16
        return luma(rgb / float(2 ** (16 if bits > 8 else 8) - 1))
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    return luma(pixels.astype(np.float64) / float(2**bits - 1))


def _is_colour(ds) -> bool:
    return int(ds.get("SamplesPerPixel", 1) or 1) == 3 or str(ds.get("PhotometricInterpretation", "")).upper() == \
        "PALETTE COLOR"


def load_dicom(path: Path, max_pixels: int, frames: str = "first") -> np.ndarray:
    """A DICOM file as (H, W) float32 in [0, 1] by hegl's intensity contract."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of values it then reads (an IS of '1A')
        return _load_dicom(path, max_pixels, frames)


def _load_dicom(path: Path, max_pixels: int, frames: str) -> np.ndarray:

    ds = read_dataset(path)
    rows, cols, count = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), _frame_count(ds)
    if not rows or not cols:
        raise UserError(f"cannot read DICOM {path}: its pixel data has no Rows and Columns to shape it (not an image)")
    check_pixels(path, cols, rows, max_pixels, count)
    if count > 1 and frames == "refuse":
        raise UserError(f"cannot read DICOM {path}: it holds {count} frames and data.frames=refuse "
                        "(first, middle or mean read it)")
    index = None if (count == 1 or frames == "mean") else (0 if frames == "first" else count // 2)
    pixels = _decode(ds, path, index)
    frame = colour_frame if _is_colour(ds) else grey_frame
    one_frame_ndim = 3 if int(ds.get("SamplesPerPixel", 1) or 1) == 3 else 2
    if index is None and count > 1:  # the mean of every frame, each read by the contract
        return np.mean([frame(ds, f) for f in pixels], axis=0).astype(np.float32)
    while pixels.ndim > one_frame_ndim:  # a stack of one frame
        pixels = pixels[0]
    return frame(ds, pixels)


# What a DICOM header says of the patient and the view, under the names the cache keeps (a table's
# metadata columns, when given, win over the header).
HEADER_METADATA = {"sex": "PatientSex", "age": "PatientAge", "view": "ViewPosition"}


def dicom_metadata(path: Path) -> dict[str, str]:
    """Sex, age and view position from a DICOM header (empty where the header has none)."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - the image itself was read: a header we cannot reread adds nothing
        return {}
    out = {}
    for name, keyword in HEADER_METADATA.items():
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            out[name] = value
    return out
