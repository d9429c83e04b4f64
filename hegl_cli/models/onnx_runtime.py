"""An exported hegl model run by onnxruntime alone (no torch): what `hegl predict --model` uses.

:class:`OnnxModel` opens a ``.onnx`` file that `hegl export` wrote, reads its description from the
graph's metadata (``hegl``: classes, thresholds, preprocessing contract, calibration) and runs it on
the CPU. A file that is not an ONNX model, or an ONNX model hegl did not export, is one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hegl_cli.errors import UserError, first_line

METADATA_KEY = "hegl"
FORMAT = "hegl onnx model"
REQUIRED = ("classes", "thresholds", "preprocessing")


class OnnxModel:
    """A hegl model exported to ONNX, on onnxruntime's CPU provider.

    Args:
        path: the ``.onnx`` file.
        threads: onnxruntime's intra-op threads (None: its default).
    """

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for unreadable models
            raise UserError(f"{self.path}: not an ONNX model onnxruntime can load ({' '.join(first_line(exc).split())})") \
                from exc
        self.description = self._description()

    def _description(self) -> dict[str, Any]:
        text = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise UserError(f"{self.path}: an ONNX model, but not one `hegl export` wrote (no '{METADATA_KEY}' metadata)")
        try:
            description = json.loads(text)
        except ValueError:
            description = None
        missing = [k for k in REQUIRED if not isinstance(description, dict) or k not in description]
        if missing or description.get("format") != FORMAT:
            raise UserError(f"{self.path}: its '{METADATA_KEY}' metadata is damaged (missing "
                            f"{', '.join(missing) or 'format'}); export the run again")
        return description

    @property
    def classes(self) -> list[str]:
        return list(self.description["classes"])

    @property
    def thresholds(self) -> np.ndarray:
        """(C,) the thresholds the export carries (the run's, or a site calibration's)."""
        return np.asarray(self.description["thresholds"], np.float64)

    @property
    def image_size(self) -> int:
        return int(self.description["preprocessing"]["image_size"])

    @property
    def calibrated(self) -> bool:
        return bool(self.description.get("calibration"))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images (N, 1, S, S) float32 in [0, 1] -> {logits (N, C), attention (N, C, h, w), probabilities (N, C)}."""
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, {self.session.get_inputs()[0].name: np.ascontiguousarray(images, np.float32)})
        return dict(zip(names, values))
