"""The same weights on another x86-64 machine: CPU kernels pinned to one instruction set.

PyTorch's CPU kernels (ATen's vectorised loops, MKL's GEMM, oneDNN's convolutions) pick their code
path by the instruction sets the CPU has, and the paths round differently: the same seed and data
train to different weights on an AVX-512 machine and on an AVX2 one, and a 40-epoch run drifts
far enough to change its metrics (the demo gave test AUC 0.790 here and 0.738 on another 2-core
machine). Every hegl command therefore pins the three libraries to AVX2 (the newest set nearly
every x86-64 machine of the last decade has) before any kernel runs, unless the environment asks
otherwise:

- ``HEGL_CPU_KERNELS=native`` leaves every library on its own choice (fastest on new CPUs);
- a variable the user set already (``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``) wins.

Measured (README, "Reproducible across machines"): on this AVX-512 machine, pinned, a run gives
bit-identical weights to the same run with MKL, ATen and oneDNN capped at AVX2 (an AVX2 machine),
and unpinned it does not; the demo model trains as fast pinned as unpinned. The thread count still
matters (reductions split by thread): the run records it, and ``OMP_NUM_THREADS`` fixes it.
"""

from __future__ import annotations

import os
from pathlib import Path

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpu_has_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU reports AVX2 (Linux /proc/cpuinfo; False where it cannot be read)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "avx2" in flags.split()


def pin_cpu_kernels(environ: dict | None = None, cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """Set :data:`PINNED` in ``environ`` (default ``os.environ``) where the user did not; returns what
    was set. Nothing on a CPU without AVX2 or with ``HEGL_CPU_KERNELS=native``."""
    env = os.environ if environ is None else environ
    if env.get("HEGL_CPU_KERNELS", "avx2").lower() == "native" or not cpu_has_avx2(cpuinfo):
        return {}
    chosen = {k: v for k, v in PINNED.items() if k not in env}
    env.update(chosen)
    return chosen


def kernel_facts() -> dict[str, str]:
    """What the run's CPU kernels were: ATen's capability, MKL's and oneDNN's pins, the threads."""
    import torch

    return {"cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "threads": str(torch.get_num_threads()),
            "mkl_cbwr": os.environ.get("MKL_CBWR", "native"),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native")}
