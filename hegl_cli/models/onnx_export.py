"""A trained model as an ONNX graph: images (N, 1, S, S) in [0, 1] -> logits, attention, probabilities.

The graph holds everything between the preprocessed image and the answer: the model's own
normalisation (``(x - 0.5) / 0.25``, repeated to the encoder's channels), the encoder, the class
query decoder and, when a site's calibration is given, its per-class temperature and piecewise-linear
map of the probability. What comes before the graph (decoding, padding, resizing, 8-bit rounding) is
the preprocessing contract of :func:`preprocessing_contract`, written beside the model and into it.

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) at opset
:data:`OPSET` with a dynamic batch axis; where it fails (an operator it does not know, or a torch
that no longer ships it), the torch.export-based exporter (``dynamo=True``) at opset
:data:`DYNAMO_OPSET`. A model that neither exports is refused in one line naming the encoder.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hegl_cli import __version__
from hegl_cli.config import DataConfig
from hegl_cli.data.images import INTENSITY_RULE
from hegl_cli.errors import UserError, first_line
from hegl_cli.models.model import PIXEL_MEAN, PIXEL_STD
from hegl_cli.models.onnx_runtime import METADATA_KEY

OPSET = 17
DYNAMO_OPSET = 18
INPUT = "images"
OUTPUTS = ("logits", "attention", "probabilities")
MIN_WIDTH = 1e-12  # a piece of the calibration map narrower than this is a step


class ExportedForward(nn.Module):
    """The model as the graph runs it: images (N, 1, S, S) in [0, 1] -> logits (N, C), attention
    (N, C, h, w) (each map sums to 1), probabilities (N, C).

    ``probabilities`` is ``p = sigmoid(logits / T)`` mapped through each class's piecewise-linear
    ``knots`` as ``numpy.interp(p, x, y)`` maps it: flat outside the knots, and exactly ``y[k]`` on a
    flat piece (so a threshold chosen on a plateau decides alike here and in numpy). No calibration:
    T = 1, knots (0, 0) and (1, 1), which leaves p as it is.

    Args:
        model: the trained model (eval mode).
        temperature: (C,) per-class temperature.
        knots_x, knots_y: (C, K) per-class knots, x non-decreasing, K >= 1.
    """

    def __init__(self, model: nn.Module, temperature: np.ndarray, knots_x: np.ndarray, knots_y: np.ndarray):
        super().__init__()
        self.model = model
        self.register_buffer("inv_temperature", torch.as_tensor(1.0 / np.asarray(temperature, np.float64)).float())
        self.register_buffer("knots_x", torch.as_tensor(np.asarray(knots_x, np.float64)).float())  # (C, K)
        self.register_buffer("knots_y", torch.as_tensor(np.asarray(knots_y, np.float64)).float())
        self.pieces = int(self.knots_x.shape[1]) - 1

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, C) logits -> (N, C) probabilities through the temperature and the knots."""
        p = torch.sigmoid(logits * self.inv_temperature)
        if self.pieces == 0:
            return self.knots_y[:, 0].expand_as(p)
        n, c = p.shape
        x, y = self.knots_x.unsqueeze(0).expand(n, c, -1), self.knots_y.unsqueeze(0).expand(n, c, -1)
        below = (p.unsqueeze(-1) >= x).sum(-1, keepdim=True)  # (N, C, 1): knots at or below p
        i = (below - 1).clamp(0, self.pieces - 1)
        x0, x1 = x.gather(2, i).squeeze(-1), x.gather(2, i + 1).squeeze(-1)
        y0, y1 = y.gather(2, i).squeeze(-1), y.gather(2, i + 1).squeeze(-1)
        r = ((p - x0) / (x1 - x0).clamp_min(MIN_WIDTH)).clamp(0.0, 1.0)
        return torch.where(y0 == y1, y0, y0 * (1.0 - r) + y1 * r)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out["logits"], out["attention"], self.calibrate(out["logits"])


def identity_calibration(classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(temperature (C,), knots_x (C, 2), knots_y (C, 2)) that leave the probability as it is."""
    line = np.tile(np.array([[0.0, 1.0]]), (classes, 1))
    return np.ones(classes), line, line.copy()


def export_onnx(forward: ExportedForward, image_size: int, encoder: str) -> tuple[bytes, dict[str, Any]]:
    """Export ``forward`` and return the ONNX model's bytes and how it was exported (exporter, opset).

    The TorchScript exporter first, the torch.export-based one if that fails; neither: a UserError
    that names the encoder and both reasons.
    """
    forward.eval()  # the exporter puts the wrapper back in the mode it found it in
    dummy = torch.rand(2, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    reasons = []
    for dynamo in (False, True):
        try:
            return _export(forward, dummy, dynamo), {
                "exporter": "torch.onnx.export, " + ("torch.export-based (dynamo=True)" if dynamo
                                                     else "TorchScript-based (dynamo=False)"),
                "opset": DYNAMO_OPSET if dynamo else OPSET, "torch": torch.__version__}
        except Exception as exc:  # noqa: BLE001 - every exporter and operator fails in its own way
            reasons.append(" ".join(first_line(exc, 300).split()))
    raise UserError(f"encoder '{encoder}' does not export to ONNX: {reasons[0]} (the torch.export-based exporter: "
                    f"{reasons[1]})")


def _export(forward: ExportedForward, dummy: torch.Tensor, dynamo: bool) -> bytes:
    """One exporter's ONNX bytes, its messages kept off the console."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="hegl-onnx-") as folder, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        path = Path(folder) / "graph.onnx"
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(forward, (dummy,), str(path), dynamo=True, opset_version=DYNAMO_OPSET,
                              input_names=[INPUT], output_names=list(OUTPUTS), dynamic_shapes=({0: batch},),
                              external_data=False)
        else:
            torch.onnx.export(forward, (dummy,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=list(OUTPUTS),
                              dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)})
        model = onnx.load(str(path))
    if not model.graph.input[0].type.tensor_type.shape.dim[0].dim_param:
        raise RuntimeError("the exported graph has a fixed batch size")
    return model.SerializeToString()


def with_metadata(onnx_bytes: bytes, description: dict[str, Any]) -> bytes:
    """The model with ``description`` in its ``metadata_props``: all of it (JSON) under ``hegl``, and
    ``classes``, ``thresholds``, ``preprocessing``, ``calibration`` each on its own for other tools."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    del model.metadata_props[:]
    props = {METADATA_KEY: description, **{k: description.get(k) for k in
                                          ("classes", "thresholds", "preprocessing", "outputs", "calibration")}}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    model.producer_name, model.producer_version = "hegl", __version__
    model.doc_string = (f"hegl {__version__}: {description.get('run', '')} ({description.get('checkpoint', '')}); "
                        "input 'images' (N, 1, S, S) float32 in [0, 1], see metadata 'preprocessing'")
    return model.SerializeToString()


def preprocessing_contract(image_size: int, data: DataConfig, in_chans: int) -> dict[str, Any]:
    """What an image must go through before the graph, as hegl itself reads it
    (:func:`hegl_cli.data.images.preprocess_file`), and what the graph does itself."""
    steps = [
        "decode: DICOM with pydicom (modality LUT, then the VOI window or VOI LUT; MONOCHROME1 inverted), other "
        "files with Pillow with the EXIF orientation applied",
        f"several frames: data.frames = {data.frames}",
        "scale by the range the values can take (8-bit / 255, 16-bit / 65535, a DICOM's BitsStored), colour to "
        "ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B): grey intensities in [0, 1], bone bright",
    ]
    if data.intensity == "min_max":
        steps.append("data.intensity = min_max: stretch each image to its own minimum and maximum")
    steps += ["pad to a centred square with zeros",
              f"resize to {image_size} x {image_size}, bilinear with antialiasing (Pillow, float32), clip to [0, 1]",
              "round to 8 bits: round(255 x), then divide by 255 (float32)"]
    return {
        "image_size": image_size,
        "input": {"name": INPUT, "shape": ["N", 1, image_size, image_size], "dtype": "float32",
                  "layout": "NCHW, one grey channel", "value_range": [0.0, 1.0]},
        "intensity_rule": INTENSITY_RULE, "intensity": data.intensity, "frames": data.frames,
        "max_pixels": data.max_pixels, "steps": steps,
        "normalisation": {"in_graph": True, "rule": f"(x - {PIXEL_MEAN}) / {PIXEL_STD}", "channels": in_chans},
        "reference": "hegl_cli.data.images.preprocess_file",
    }
