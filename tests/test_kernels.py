"""CPU kernels pinned to AVX2 (hegl_cli.engine.kernels): the same run gives the same weights on an
AVX2-only machine as on this one; the pin respects the user's environment and records itself."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES
from hegl_cli.engine.kernels import PINNED, SET_BY_HEGL, cpu_has_avx2, pin_cpu_kernels

AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    return path


def test_pin_sets_what_the_user_did_not_and_opts_out(tmp_path):
    with_avx2 = _cpuinfo(tmp_path, "fpu sse2 avx avx2 fma")
    env: dict = {}
    assert pin_cpu_kernels(env, with_avx2) == PINNED and {k: env[k] for k in PINNED} == PINNED
    env = {"MKL_CBWR": "COMPATIBLE"}
    pin_cpu_kernels(env, with_avx2)
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["ATEN_CPU_CAPABILITY"] == "avx2"
    env = {"HEGL_CPU_KERNELS": "native"}
    assert pin_cpu_kernels(env, with_avx2) == {} and set(env) == {"HEGL_CPU_KERNELS"}
    env = {}
    assert pin_cpu_kernels(env, _cpuinfo(tmp_path, "fpu sse2 avx")) == {} and env == {}  # no AVX2: left alone
    assert not cpu_has_avx2(tmp_path / "missing")


def _train(tmp_path: Path, cache: Path, name: str, extra_env: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {*PINNED, *AVX2_MACHINE, "HEGL_CPU_KERNELS", SET_BY_HEGL}}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra_env})
    overrides = [a for o in TINY_OVERRIDES + [f"data.path={cache}", "train.epochs=2", "train.deterministic=true"]
                 for a in ("--set", o)]
    cmd = [sys.executable, "-m", "hegl_cli", "-q", "train", "--name", name, "--runs-dir", str(tmp_path / "runs"),
           *overrides]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return hashlib.sha256((tmp_path / "runs" / name / "last.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_an_avx2_machine_trains_the_same_weights(tiny_cache, tmp_path):
    """Pinned here == unpinned on a machine whose libraries stop at AVX2 (emulated by capping them)."""
    if not cpu_has_avx2():
        pytest.skip("this CPU has no AVX2: the pin does not apply")
    here = _train(tmp_path, tiny_cache, "here", {})
    avx2 = _train(tmp_path, tiny_cache, "avx2", {"HEGL_CPU_KERNELS": "native", **AVX2_MACHINE})
    assert here == avx2
    import torch

    if torch.backends.cpu.get_cpu_capability() == "AVX512":  # the pin is what makes them equal
        native = _train(tmp_path, tiny_cache, "native", {"HEGL_CPU_KERNELS": "native"})
        assert native != here
    import json

    facts = json.loads((tmp_path / "runs" / "here" / "last.json").read_text())["versions"]
    assert facts["cpu_capability"] == "AVX2" and facts["mkl_cbwr"] == "AVX2" and facts["threads"] == "1"


def test_each_kernel_setting_gets_its_own_inductor_cache(tmp_path):
    """Code a native (AVX-512) process compiled into torch's inductor cache crashed (segmentation fault)
    a later process pinned to AVX2 that reused it (tests/test_precision.py's compiled-model test, after a
    `HEGL_CPU_KERNELS=native` run on the same machine); the user's own TORCHINDUCTOR_CACHE_DIR is kept."""
    from hegl_cli.engine.kernels import INDUCTOR_CACHE, separate_inductor_cache, settle_cpu_kernels

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx avx2 avx512f\n")
    pinned, native = {"HEGL_CPU_KERNELS": "avx2"}, {"HEGL_CPU_KERNELS": "native"}
    settle_cpu_kernels("fp32", "cpu", pinned, cpuinfo=cpuinfo)
    settle_cpu_kernels("fp32", "cpu", native, cpuinfo=cpuinfo)
    assert pinned[INDUCTOR_CACHE].endswith("hegl-avx2-avx2-avx2")
    assert native[INDUCTOR_CACHE].endswith("hegl-native-native-native")
    assert Path(pinned[INDUCTOR_CACHE]).parent == Path(native[INDUCTOR_CACHE]).parent
    mine = {INDUCTOR_CACHE: "/data/my-cache"}
    assert separate_inductor_cache(mine) is None and mine[INDUCTOR_CACHE] == "/data/my-cache"
    torchs = {INDUCTOR_CACHE: str(Path(pinned[INDUCTOR_CACHE]).parent)}  # torch writes its default back
    assert separate_inductor_cache(torchs).endswith("hegl-native-native-native")
