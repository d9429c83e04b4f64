"""Reading X-ray files: PNG/JPEG/DICOM decoding and the shared preprocessing (hegl_cli.data.images)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from PIL import Image

from conftest import shared_data
from hegl_cli.data.images import load_image, to_uint8
from hegl_cli.errors import UserError


def test_pydicom_requirement_has_the_pixels_module():
    """The code imports pydicom.pixels (pydicom 3); 0.1.0 allowed pydicom>=2.4."""
    req = next(Requirement(r) for r in metadata.requires("hegl") if r.startswith("pydicom"))
    assert Version("2.4.4") not in req.specifier and Version("3.0.0") in req.specifier


# --- issue 20: one intensity contract for every container, and pydicom's own test corpus ------------------
def _dicom(path: Path, pixels: np.ndarray, bits_stored: int | None = None, **elements) -> Path:
    """An uncompressed DICOM of ``pixels`` (grey (H, W) or RGB (H, W, 3); (F, H, W[, 3]) for frames)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    colour = pixels.shape[-1] == 3 and pixels.ndim >= 3
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    rows, cols = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = allocated, bits_stored or allocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_same_8_bit_pixels_as_png_and_dicom_give_the_same_model_input(tmp_path):
    real = np.asarray(Image.open(shared_data("cxr", "00000001_000.png"))).astype(int)
    pixels = (60 + real * 127 // 255).astype(np.uint8)  # a real radiograph that holds only 60..187
    png = tmp_path / "same.png"
    Image.fromarray(pixels).save(png)
    dicom = _dicom(tmp_path / "same.dcm", pixels)
    np.testing.assert_array_equal(load_image(png), load_image(dicom))
    np.testing.assert_array_equal(load_image(png), pixels / np.float32(255))
    stretched = load_image(dicom, intensity="min_max")
    assert stretched.min() == 0 and stretched.max() == 1  # the option, for every container alike
    np.testing.assert_array_equal(stretched, load_image(png, intensity="min_max"))


def test_the_same_16_bit_pixels_as_png_and_dicom_and_what_the_contract_says_of_12_bits(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(300, 3800, (40, 30)).astype(np.uint16)  # 12-bit data, as CR detectors write it
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    as_png = load_image(tmp_path / "g16.png")
    np.testing.assert_allclose(as_png, pixels / 65535.0, atol=1e-7)
    np.testing.assert_array_equal(as_png, load_image(_dicom(tmp_path / "s16.dcm", pixels)))  # BitsStored 16
    as_12 = load_image(_dicom(tmp_path / "s12.dcm", pixels, bits_stored=12))
    np.testing.assert_allclose(as_12, pixels / 4095.0, atol=1e-7)  # its own bit depth: 12 bits
    windowed = load_image(_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, WindowCenter=2000, WindowWidth=1000))
    c, w = 2000 - 0.5, 1000 - 1  # DICOM PS3.3 C.11.2.1.2.1, linear window, output 0..4095
    expected = np.clip(((pixels - c) / w + 0.5), 0, 1)
    np.testing.assert_allclose(windowed, expected, atol=1 / 4095)
    inverted = load_image(_dicom(tmp_path / "m1.dcm", pixels, bits_stored=12, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_allclose(inverted, 1 - pixels / 4095.0, atol=1e-7)


def test_colour_becomes_grey_by_one_rule_in_every_container(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    luma = (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / 255.0
    np.testing.assert_allclose(load_image(tmp_path / "c.png"), luma, atol=1e-6)
    np.testing.assert_array_equal(load_image(tmp_path / "c.png"), load_image(_dicom(tmp_path / "c.dcm", rgb)))
    frames = np.stack([rgb, 255 - rgb, rgb // 2])  # a multi-frame colour DICOM: (3, H, W, 3)
    path = _dicom(tmp_path / "mf.dcm", frames)
    np.testing.assert_array_equal(load_image(path), load_image(tmp_path / "c.png"))  # data.frames=first
    np.testing.assert_allclose(load_image(path, frames="middle"), 1 - luma, atol=1e-6)
    means = [(f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114) / 255.0 for f in frames]
    np.testing.assert_allclose(load_image(path, frames="mean"), np.mean(means, axis=0), atol=1e-6)
    with pytest.raises(UserError, match="holds 3 frames and data.frames=refuse"):
        load_image(path, frames="refuse")


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, :10] = 255  # a bright band on the left, as stored
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # the viewer must rotate it 90 degrees clockwise
    image.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    upright = load_image(tmp_path / "r.jpg")
    assert upright.shape == (40, 20) and upright[:10].mean() > 0.9 and upright[-10:].mean() < 0.1


def pydicom_corpus() -> list[Path]:
    """pydicom's own test files, and pydicom-data's when installed (the outside check's 244 files)."""
    import pydicom

    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # the pydicom-data package

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return sorted(p for root in roots for p in root.rglob("*") if p.is_file())


def contract_reference(path: Path, frames: str = "first") -> np.ndarray | None:
    """An independent reading of the contract from pydicom's decoding: the frame, the colour LUT, the
    modality LUT, and the window by the standard's formula; None where pydicom decodes no image."""
    import warnings

    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

                ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
            pixels = ds.pixel_array
        except Exception:  # noqa: BLE001 - not an image pydicom can decode
            return None
        count = int(ds.get("NumberOfFrames", 1) or 1)
        photometric = str(ds.PhotometricInterpretation)
        colour = int(ds.SamplesPerPixel) == 3
        if count > 1:
            pixels = pixels[0]
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(pixels, ds).astype(float)
            depth = 2 ** (16 if int(ds.RedPaletteColorLookupTableDescriptor[2]) > 8 else 8) - 1
            return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114) / depth
        if colour:
            rgb = pixels.astype(float) / (2 ** int(ds.BitsStored) - 1)
            return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        if ds.get("ModalityLUTSequence"):
            low, high = 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
        elif ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
            low, high = sorted((low * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                                high * float(ds.RescaleSlope) + float(ds.RescaleIntercept)))
        values = apply_modality_lut(pixels, ds).astype(float)
        if ds.get("VOILUTSequence"):
            from pydicom.pixels import apply_voi

            values = apply_voi(values, ds).astype(float)
            low, high = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            center = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
            width = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
            function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
            if function == "SIGMOID":
                values = (high - low) / (1 + np.exp(-4 * (values - float(center)) / float(width))) + low
            elif function == "LINEAR_EXACT":
                values = np.clip((values - float(center)) / float(width) + 0.5, 0, 1) * (high - low) + low
            else:
                c, w = float(center) - 0.5, float(width) - 1
                values = np.clip((values - c) / w + 0.5, 0, 1) * (high - low) + low
        scaled = np.clip((values - low) / (high - low), 0, 1)
        return 1 - scaled if photometric == "MONOCHROME1" else scaled


@pytest.mark.parametrize("path", pydicom_corpus(), ids=lambda p: p.name)
def test_every_file_of_pydicoms_corpus_reads_by_the_contract_or_is_one_line(path):
    reference = contract_reference(path)
    try:
        ours = load_image(path, max_pixels=1 << 30)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and (str(path) in message), message
        return
    assert ours.dtype == np.float32 and ours.ndim == 2 and 0 <= ours.min() and ours.max() <= 1
    if reference is not None:
        assert ours.shape == reference.shape
        # within one grey level of the model's 8-bit input
        assert np.abs(to_uint8(ours).astype(int) - to_uint8(reference).astype(int)).max() <= 1, path.name


def test_the_corpus_decodes_colour_palette_and_multi_frame_files():
    """What the corpus must prove decodes, not only refuses: counts from pydicom's own files."""
    import warnings

    import pydicom

    kinds: dict[str, int] = {}
    for path in pydicom_corpus():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, force=True)
                load_image(path, max_pixels=1 << 30)
            except Exception:  # noqa: BLE001 - counted only when it reads
                continue
        key = str(ds.get("PhotometricInterpretation"))
        key += " multi-frame" if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ""
        kinds[key] = kinds.get(key, 0) + 1
    assert kinds.get("PALETTE COLOR", 0) >= 4 and kinds.get("PALETTE COLOR multi-frame", 0) >= 1
    assert kinds.get("RGB multi-frame", 0) >= 4 and kinds.get("MONOCHROME2 multi-frame", 0) >= 4
    assert sum(v for k, v in kinds.items() if k.startswith("YBR")) >= 8 and kinds.get("MONOCHROME1", 0) >= 5


def test_error_lines_keep_their_reasons(tmp_path):
    import pydicom

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    with pytest.raises(UserError) as lossy:
        load_image(root / "JPEG-lossy.dcm")
    assert "12-bit" in str(lossy.value) and "pylibjpeg-libjpeg" in str(lossy.value) and "\n" not in str(lossy.value)
    bare = tmp_path / "bare.dcm"  # the same file without its preamble: read, not "Use force=True"
    bare.write_bytes(_dicom(tmp_path / "x.dcm", np.full((8, 8), 7, np.uint8)).read_bytes()[132:])
    np.testing.assert_allclose(load_image(bare), 7 / 255, atol=1e-7)
    missing = tmp_path / "no_syntax.dcm"  # no transfer syntax: taken from how the file is encoded
    import pydicom as pd

    ds = pd.dcmread(_dicom(tmp_path / "y.dcm", np.full((8, 8), 9, np.uint8)))
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(missing, enforce_file_format=False)
    np.testing.assert_allclose(load_image(missing), 9 / 255, atol=1e-7)
