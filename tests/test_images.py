"""Reading X-ray files: PNG/JPEG/DICOM decoding and the shared preprocessing (hegl_cli.data.images)."""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import Version


def test_pydicom_requirement_has_the_pixels_module():
    """The code imports pydicom.pixels (pydicom 3); 0.1.0 allowed pydicom>=2.4."""
    req = next(Requirement(r) for r in metadata.requires("hegl") if r.startswith("pydicom"))
    assert Version("2.4.4") not in req.specifier and Version("3.0.0") in req.specifier
