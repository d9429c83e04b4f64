"""Which floating-point precision a command computes in: ``train.precision`` / ``eval.precision``
resolved on the device it runs on, and the record a run keeps of it.

- ``fp32``: everything in float32 (TF32 matmuls on CUDA);
- ``bf16``: the model's forward under ``torch.autocast(device, dtype=torch.bfloat16)``, on a CPU as
  on CUDA. Refused in one line (exit 2) on a device without bf16 units, where it would run emulated,
  slower than fp32;
- ``auto``: bf16 where the device has bf16 units (AMX or AVX512-BF16 on a CPU, CUDA's
  ``is_bf16_supported`` without emulation), else fp32; the record says which and why.

Evaluation (``eval.precision: run``) computes in the precision the run trained in, as its checkpoint
records it; a device without bf16 units evaluates a bf16 run in fp32 and says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from hegl_cli.engine.kernels import cpu_bf16_units, cpu_model
from hegl_cli.errors import UserError

UNIT_NAMES = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16", "cuda": "CUDA bf16"}


@dataclass(frozen=True)
class Precision:
    """What was asked, what runs, on which device with which bf16 units, and why they differ."""

    asked: str  # fp32 | bf16 | auto (evaluation: also run)
    in_force: str  # fp32 | bf16
    device: str  # "cpu (AMD EPYC)", "cuda:0 (NVIDIA H100)"
    units: str  # amx_bf16 | avx512_bf16 | cuda | none
    note: str = ""  # why in_force is not what was asked (a fallback); "" otherwise

    @property
    def bf16(self) -> bool:
        return self.in_force == "bf16"

    def record(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One line for the log: ``precision bf16 (asked auto; cpu (AMD EPYC), bf16 units: AVX512-BF16)``."""
        units = UNIT_NAMES.get(self.units, "none")
        note = f"; {self.note}" if self.note else ""
        return f"precision {self.in_force} (asked {self.asked}; {self.device}, bf16 units: {units}{note})"


def bf16_units(device: torch.device) -> str | None:
    """The device's bf16 units (``amx_bf16``, ``avx512_bf16``, ``cuda``) or None."""
    if device.type == "cpu":
        return cpu_bf16_units()
    if device.type == "cuda" and cuda_bf16_native():
        return "cuda"
    return None


def cuda_bf16_native() -> bool:
    """CUDA bf16 in hardware (compute capability 8.0+), not emulated; torch before 2.4 has no
    ``including_emulation`` and answers for the hardware alone."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return bool(torch.cuda.is_bf16_supported())


def device_name(device: torch.device) -> str:
    """``cpu (model name)`` or ``cuda:0 (GPU name)``; other devices by their type."""
    if device.type == "cpu":
        return f"cpu ({cpu_model()})"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def resolve_precision(asked: str, device: torch.device, key: str = "train.precision") -> Precision:
    """``asked`` (fp32 | bf16 | auto) on ``device``; bf16 without bf16 units is refused naming ``key``."""
    if asked not in ("fp32", "bf16", "auto"):
        raise UserError(f"config key '{key}' must be one of fp32, bf16, auto; got {asked!r}")
    units = bf16_units(device)
    where = device_name(device)
    facts = {"asked": asked, "device": where, "units": units or "none"}
    if asked == "fp32":
        return Precision(in_force="fp32", **facts)
    if units is not None:
        return Precision(in_force="bf16", **facts)
    if asked == "auto":
        return Precision(in_force="fp32", note=f"auto: {where} has no bf16 units", **facts)
    needs = {"cpu": "AMX or AVX512-BF16", "cuda": "compute capability 8.0+"}.get(device.type, "bf16 autocast")
    raise UserError(f"config key '{key}' is bf16 but {where} has no bf16 units ({needs}): bf16 would run "
                    f"emulated, slower than fp32; set {key}=fp32 (or auto: bf16 where there are units)")


def run_precision(meta: dict[str, Any], trained_asked: str) -> str:
    """What a run computed in: its checkpoint's record (``precision.in_force``), else (older runs) its
    config's ``train.precision`` (their ``train.amp`` reads as fp32, :func:`hegl_cli.config.upgrade_stored`)."""
    record = meta.get("precision")
    if isinstance(record, dict) and record.get("in_force") in ("fp32", "bf16"):
        return str(record["in_force"])
    return trained_asked


def eval_precision(asked: str, meta: dict[str, Any], trained_asked: str, device: torch.device) -> Precision:
    """``eval.precision`` on ``device``: ``run`` is the run's own precision; a bf16 run on a device
    without bf16 units is evaluated in fp32, with a note (it was not asked for here)."""
    if asked != "run":
        return resolve_precision(asked, device, "eval.precision")
    trained = run_precision(meta, trained_asked)
    if trained != "bf16":
        resolved = resolve_precision(trained, device, "eval.precision")
    elif bf16_units(device) is None:
        resolved = dataclasses.replace(resolve_precision("fp32", device, "eval.precision"),
                                       note=f"the run trained in bf16; {device_name(device)} has no bf16 units")
    else:
        resolved = resolve_precision("bf16", device, "eval.precision")
    return dataclasses.replace(resolved, asked=f"run ({trained})")
