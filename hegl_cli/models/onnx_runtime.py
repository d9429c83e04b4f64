"""An exported hegl model run by onnxruntime alone (no torch): what `hegl predict --model` uses.

:class:`OnnxModel` opens a ``.onnx`` file that `hegl export` wrote, reads its description from the
graph's metadata (``hegl``: classes, thresholds, preprocessing contract, calibration) and runs it on
the CPU. A file that is not an ONNX model, or an ONNX model hegl did not export, is one line.
"""

from __future__ import annotations

import json
import math
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
        problem = self._description_problem(description)
        if problem:
            raise UserError(f"{self.path}: its '{METADATA_KEY}' metadata is damaged ({problem}); export the run again")
        return description

    def _description_problem(self, description: dict[str, Any]) -> str | None:
        """What in the metadata does not fit the graph or its own types (None: nothing): one class name
        per logit, one finite threshold per class, a whole image size, an intensity rule number."""
        classes, thresholds = description.get("classes"), description.get("thresholds")
        logits = next((o.shape for o in self.session.get_outputs() if o.name == "logits"), None)
        width = logits[-1] if logits and isinstance(logits[-1], int) else None
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            return "'classes' is not a list of class names"
        if width is not None and width != len(classes):
            return f"{len(classes)} class names for a graph of {width} logits"
        if (not isinstance(thresholds, list) or len(thresholds) != len(classes)
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in thresholds)):
            return "'thresholds' is not one finite number per class"
        size = (description.get("preprocessing") or {}).get("image_size") if isinstance(
            description.get("preprocessing"), dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 8192:
            return f"'preprocessing.image_size' is {size!r}, not an image side in pixels (8-8192)"
        rule = description.get("trained_intensity_rule", 1)
        if not isinstance(rule, int) or isinstance(rule, bool) or rule < 1:
            return f"'trained_intensity_rule' is {rule!r}, not a rule number"
        containers = description.get("trained_intensity_containers")
        if containers is not None and (not isinstance(containers, list) or not all(isinstance(c, str) for c in containers)):
            return "'trained_intensity_containers' is not a list of container names"
        return None

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
