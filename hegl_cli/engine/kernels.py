"""The same weights on another x86-64 machine: CPU kernels pinned to one instruction set.

PyTorch's CPU kernels (ATen's vectorised loops, MKL's GEMM, oneDNN's convolutions) pick their code
path by the instruction sets the CPU has, and the paths round differently: the same seed and data
train to different weights on an AVX-512 machine and on an AVX2 one, and a 40-epoch run drifts
far enough to change its metrics (the demo gave test AUC 0.790 here and 0.738 on another 2-core
machine). Every hegl command therefore pins the three libraries to AVX2 (the newest set nearly
every x86-64 machine of the last decade has) before any kernel runs, unless the environment asks
otherwise:

- ``HEGL_CPU_KERNELS=native`` leaves every library on its own choice (fastest on new CPUs);
- ``HEGL_CPU_KERNELS=avx2`` pins whatever the precision (bf16 then runs without its bf16 units);
- a variable the user set already (``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``ONEDNN_MAX_CPU_ISA``) wins.

bf16 (``train.precision``) is not bit-for-bit across machines anyway, and oneDNN capped at AVX2 has
no bf16 kernels (a bf16 matmul never reaches oneDNN: its verbose log shows no call). So the root
command pins, and once a command knows the precision it computes in, and before its first kernel, it calls
:func:`settle_cpu_kernels`: bf16 on a CPU takes back the pins hegl set (never the user's); fp32, or
any precision on a GPU (the CPU then only loads and augments data), keeps them. The libraries read
these variables once, at their first kernel, so the CLI settles them before it builds a model: one
command per process.

Measured (README, "Reproducible across machines"): on this AVX-512 machine, pinned, a run gives
bit-identical weights to the same run with MKL, ATen and oneDNN capped at AVX2 (an AVX2 machine),
and unpinned it does not; the demo model trains as fast pinned as unpinned. The thread count still
matters (reductions split by thread): the run records it, and ``OMP_NUM_THREADS`` fixes it.
"""

from __future__ import annotations

import os
from pathlib import Path

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SET_BY_HEGL = "HEGL_PINNED"  # the PINNED names hegl set itself (comma-separated): the ones it may take back
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    return set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())


def cpu_has_avx2(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU reports AVX2 (Linux /proc/cpuinfo; False where it cannot be read)."""
    return "avx2" in cpu_flags(cpuinfo)


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's processor string."""
    try:
        lines = cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    if not name:
        import platform

        name = platform.processor() or platform.machine()
    return name


def cpu_bf16_units(cpuinfo: Path = CPUINFO) -> str | None:
    """The CPU's bf16 matrix units: ``amx_bf16``, ``avx512_bf16`` or None.

    From /proc/cpuinfo; where it cannot be read (macOS, Windows), from torch's own CPU probe. Neither
    asks ATen for its capability, which would fix it before :func:`settle_cpu_kernels` could.
    """
    flags = cpu_flags(cpuinfo)
    if not flags:
        import torch

        flags = {name for name, probe in (("amx_bf16", "_is_amx_tile_supported"),
                                          ("avx512_bf16", "_is_avx512_bf16_supported"))
                 if getattr(torch.cpu, probe, lambda: False)()}
    return next((unit for unit in ("amx_bf16", "avx512_bf16") if unit in flags), None)


def kernel_mode(environ: dict | None = None) -> str:
    """``HEGL_CPU_KERNELS``: ``native`` (never pin), ``avx2`` (always pin) or ``auto`` (the default: pin
    unless the command computes in bf16 on a CPU; any other value reads as auto)."""
    env = os.environ if environ is None else environ
    mode = env.get("HEGL_CPU_KERNELS", "auto").lower()
    return mode if mode in ("native", "avx2") else "auto"


def pin_cpu_kernels(environ: dict | None = None, cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """Set :data:`PINNED` in ``environ`` (default ``os.environ``) where the user did not; returns what
    was set (and remembers it in ``HEGL_PINNED``). Nothing on a CPU without AVX2 or with
    ``HEGL_CPU_KERNELS=native``."""
    env = os.environ if environ is None else environ
    if kernel_mode(env) == "native" or not cpu_has_avx2(cpuinfo):
        return {}
    chosen = {k: v for k, v in PINNED.items() if k not in env}
    env.update(chosen)
    if chosen:
        env[SET_BY_HEGL] = ",".join(sorted({*_set_by_hegl(env), *chosen}))
    return chosen


def _set_by_hegl(env: dict) -> set[str]:
    return {k for k in env.get(SET_BY_HEGL, "").split(",") if k in PINNED}


def release_pins(environ: dict | None = None) -> list[str]:
    """Take back the pins hegl set (a variable the user set, or changed since, stays); returns their names."""
    env = os.environ if environ is None else environ
    released = sorted(k for k in _set_by_hegl(env) if env.get(k) == PINNED[k])
    for key in released:
        del env[key]
    env.pop(SET_BY_HEGL, None)
    return released


def pins_wanted(precision: str, device_type: str, environ: dict | None = None) -> bool:
    """Whether the CPU kernels are pinned for a command computing in ``precision`` on ``device_type``:
    always with ``HEGL_CPU_KERNELS=avx2``, never with ``native``; else unless it is bf16 on a CPU."""
    mode = kernel_mode(environ)
    if mode != "auto":
        return mode == "avx2"
    return not (precision == "bf16" and device_type == "cpu")


_SETTLED: dict[str, str] | None = None  # this process's library variables, as its first settle left them


def settle_cpu_kernels(precision: str, device_type: str, environ: dict | None = None,
                       cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """Pin or unpin (:func:`pins_wanted`) before the first kernel; returns the library variables in
    force afterwards (``native`` where unset).

    For ``os.environ`` the first call of a process decides: the libraries read the variables once, so
    a later command in the same process (an ablation's cells, a test session) gets the first one's
    variables back, and the record it writes says what its kernels really were.
    """
    global _SETTLED
    env = os.environ if environ is None else environ
    if environ is None and _SETTLED is not None:
        for key, value in _SETTLED.items():
            if value == "native":
                env.pop(key, None)
            else:
                env[key] = value
        return dict(_SETTLED)
    if pins_wanted(precision, device_type, env):
        pin_cpu_kernels(env, cpuinfo)
    else:
        release_pins(env)
    settled = {k: env.get(k, "native") for k in PINNED}
    separate_inductor_cache(env)
    if environ is None:
        _SETTLED = dict(settled)
    return settled


INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"
INDUCTOR_SET_BY_HEGL = "HEGL_INDUCTOR_CACHE"


def separate_inductor_cache(environ: dict | None = None) -> str | None:
    """Give each CPU-kernel setting its own torch inductor cache (``train.compile``), unless the user
    chose one: inductor keys its compiled code by the graph, not by the kernels in force, and code a
    process with native (AVX-512) kernels cached crashed a later process pinned to AVX2 with a
    segmentation fault. Returns the folder set (None: the user's choice was kept)."""
    import getpass
    import tempfile

    env = os.environ if environ is None else environ
    current, ours = env.get(INDUCTOR_CACHE), env.get(INDUCTOR_SET_BY_HEGL)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    torch_default = Path(tempfile.gettempdir()) / f"torchinductor_{user}"
    if current is not None and current not in (ours, str(torch_default)):
        return None  # the user's (torch writes its default back into the environment: that one is not)
    folder = str(torch_default / ("hegl-" + "-".join(env.get(k, "native") for k in PINNED).lower()))
    env[INDUCTOR_CACHE] = env[INDUCTOR_SET_BY_HEGL] = folder
    return folder


def kernel_facts() -> dict[str, str]:
    """What the run's CPU kernels were: ATen's capability (torch's own answer), MKL's and oneDNN's
    pins (the environment the libraries read), the threads and the CPU."""
    import torch

    return {"cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "threads": str(torch.get_num_threads()),
            "mkl_cbwr": os.environ.get("MKL_CBWR", "native"),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"), "cpu": cpu_model()}
