"""Every dataset layout that `hegl prepare --format` reads: one module each, and the classes each names.

- ``synthetic``: the built-in benchmark (:mod:`.synthetic`), generated, then read as ChestX-Det JSON;
- ``chestxdet``, ``chestxdet10``: the ChestX-Det JSON layout (:mod:`.chestxdet`);
- ``nih``, ``rsna``, ``vindr``, ``siim``: CSV annotations as downloaded (one module each);
- ``table``: a dataset in no public layout, a labels table plus boxes, COCO or mask images (:mod:`.table`).

To add a format: a module here whose reader returns ``({split: [Record]}, problems, files read)``,
its classes in :data:`FORMAT_CLASSES`, and a line in :mod:`hegl_cli.apps.prepare`.
"""

from __future__ import annotations

from hegl_cli.data.formats.chestxdet import CHESTXDET10_CLASSES, CHESTXDET_CLASSES
from hegl_cli.data.formats.nih import NIH_CLASSES
from hegl_cli.data.formats.rsna import RSNA_CLASSES
from hegl_cli.data.formats.siim import SIIM_CLASSES
from hegl_cli.data.formats.vindr import VINDR_CLASSES

FORMAT_CLASSES: dict[str, tuple[str, ...]] = {
    "synthetic": (),  # each member of the benchmark family names its own (formats.family)
    "chestxdet": CHESTXDET_CLASSES, "chestxdet10": CHESTXDET10_CLASSES,
    "nih": NIH_CLASSES, "rsna": RSNA_CLASSES, "vindr": VINDR_CLASSES, "siim": SIIM_CLASSES,
    "table": (),  # the table names its own classes
}
JSON_FORMATS = ("chestxdet", "chestxdet10")  # the ChestX-Det layout: JSON annotations + image folders
CSV_FORMATS = ("nih", "rsna", "vindr", "siim")  # CSV annotations over the official folders
FORMATS = tuple(FORMAT_CLASSES)


def format_classes(fmt: str) -> tuple[str, ...]:
    """The classes of ``--format fmt`` (empty for a name that is no format)."""
    return FORMAT_CLASSES.get(fmt, ())
