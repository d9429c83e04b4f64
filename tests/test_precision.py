"""train.precision / eval.precision (hegl_cli.engine.precision): resolution on the device's bf16 units,
the refusal where there are none, what a run records, float32 losses and maps under bf16, the CPU
kernel pin that bf16 takes back, and the extra options (channels-last, torch.compile) against the
plain path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app
from hegl_cli.config import config_from_dict, load_config
from hegl_cli.engine import precision as P
from hegl_cli.engine.kernels import PINNED, SET_BY_HEGL, cpu_bf16_units, settle_cpu_kernels
from hegl_cli.errors import UserError
from hegl_cli.models.inference import predict_images
from hegl_cli.models.model import build_model

runner = CliRunner()
CPU = torch.device("cpu")


def tiny_args(cache: Path, *extra: str) -> list[str]:
    return [a for item in TINY_OVERRIDES + [f"data.path={cache}", *extra] for a in ("--set", item)]


@pytest.fixture()
def units(monkeypatch):
    """Set what the CPU's bf16 units look like: ``units("avx512_bf16")`` or ``units(None)``."""
    def use(value: str | None) -> None:
        monkeypatch.setattr(P, "cpu_bf16_units", lambda: value)
    return use


# -- resolution ------------------------------------------------------------------------------------
def test_auto_is_bf16_only_where_the_cpu_has_bf16_units(units):
    units("avx512_bf16")
    assert P.resolve_precision("auto", CPU).in_force == "bf16"
    assert P.resolve_precision("bf16", CPU).record()["units"] == "avx512_bf16"
    assert P.resolve_precision("fp32", CPU).in_force == "fp32"
    units(None)
    fallback = P.resolve_precision("auto", CPU)
    assert fallback.in_force == "fp32" and "no bf16 units" in fallback.note and fallback.asked == "auto"
    with pytest.raises(UserError, match=r"'train.precision' is bf16 but cpu .* has no bf16 units .*AVX512-BF16"):
        P.resolve_precision("bf16", CPU)


def test_cpuinfo_flags_name_the_units(tmp_path):
    def flags(text: str) -> Path:
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: fpu avx2 {text}\n")
        return path

    assert cpu_bf16_units(flags("avx512f avx512_bf16 amx_tile amx_bf16")) == "amx_bf16"
    assert cpu_bf16_units(flags("avx512f avx512_bf16")) == "avx512_bf16"
    assert cpu_bf16_units(flags("avx512f")) is None


def test_bf16_on_a_cpu_without_units_is_one_line_and_leaves_no_run(tiny_cache, tmp_path, units):
    units(None)
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--name", "x", "--runs-dir", str(runs),
                                 *tiny_args(tiny_cache, "train.precision=bf16")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.precision" in lines[0] and "fp32" in lines[0]
    assert not (runs / "x").exists()


def test_train_amp_is_refused_and_stored_runs_with_it_read_as_fp32():
    with pytest.raises(UserError, match="'train.amp' was replaced by train.precision"):
        load_config(None, ["train.amp=true"])
    old = config_from_dict({"train": {"amp": True, "epochs": 3}})
    assert old.train.precision == "fp32" and old.train.epochs == 3


# -- a bf16 run: the record and evaluation ----------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_run(tiny_cache, tmp_path_factory):
    """One epoch of the tiny model in bf16 (bf16 autocast runs on any CPU; the units are made to say yes)."""
    from hegl_cli.engine.train import train

    patch = pytest.MonkeyPatch()
    patch.setattr(P, "cpu_bf16_units", lambda: "avx512_bf16")
    try:
        cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.precision=auto", "train.epochs=1"])
        return train(cfg, name="bf16", runs_dir=tmp_path_factory.mktemp("runs"), progress=False,
                     log=lambda *_: None).run
    finally:
        patch.undo()


def test_a_bf16_run_records_precision_kernels_and_device(bf16_run):
    meta = json.loads((bf16_run / "last.json").read_text())
    assert meta["precision"] == {"asked": "auto", "in_force": "bf16", "device": meta["precision"]["device"],
                                 "units": "avx512_bf16", "note": ""}
    assert meta["precision"]["device"].startswith("cpu (")
    versions = meta["versions"]
    assert versions["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
    assert {"onednn_max_cpu_isa", "mkl_cbwr", "threads", "cpu"} <= set(versions)
    start = json.loads((bf16_run / "history.jsonl").read_text().splitlines()[0])
    assert start["precision"]["in_force"] == "bf16" and "onednn_max_cpu_isa" in start["kernels"]


def test_evaluation_computes_in_the_runs_precision_unless_told(bf16_run, units):
    from hegl_cli.config import config_layers
    from hegl_cli.engine.checkpoint import load_run

    units("avx512_bf16")
    with load_run(bf16_run, "last") as loaded:
        assert loaded.in_force == "bf16" and loaded.precision.asked == "run (bf16)"
    with load_run(bf16_run, "last", eval_layers=config_layers(None, ["eval.precision=fp32"])) as loaded:
        assert loaded.in_force == "fp32"
    units(None)  # another machine, without bf16 units: the bf16 run is evaluated in fp32, saying so
    with load_run(bf16_run, "last") as loaded:
        assert loaded.in_force == "fp32" and "trained in bf16" in loaded.precision.note
    with pytest.raises(UserError, match="'eval.precision' is bf16"):
        load_run(bf16_run, "last", eval_layers=config_layers(None, ["eval.precision=bf16"]))


# -- numerics under bf16 ----------------------------------------------------------------------------
def _tiny_model(**model_keys):
    cfg = load_config(None, TINY_OVERRIDES + [f"model.{k}={v}" for k, v in model_keys.items()])
    torch.manual_seed(0)
    return build_model(["a", "b", "c"], cfg.model, cfg.data.image_size), cfg


def test_loss_terms_maps_and_optimizer_state_stay_float32_under_bf16(tiny_cache, tmp_path, units):
    from hegl_cli.engine.train import Trainer

    units("avx512_bf16")
    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.precision=bf16"])
    trainer = Trainer(cfg, tmp_path / "run", resume=False, progress=False, log=lambda *_: None)
    seen = {}
    criterion_forward = trainer.criterion.forward

    def spy(outputs, *args, **kwargs):
        seen["inputs"] = {k: v.dtype for k, v in outputs.items()}
        seen["terms"] = criterion_forward(outputs, *args, **kwargs)
        return seen["terms"]

    trainer.criterion.forward = spy
    raw = {}
    trainer.model.register_forward_hook(lambda _m, _i, out: raw.update({k: v.dtype for k, v in out.items()}))
    trainer._forward_backward(next(iter(trainer.loader)), 0, 0)
    trainer._optimizer_step()
    assert raw == {"logits": torch.float32, "attention": torch.float32}  # float32 before the .float() too
    assert set(seen["inputs"].values()) == {torch.float32}
    assert {v.dtype for v in seen["terms"].values()} == {torch.float32}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    moments = [s for state in trainer.optimizer.state.values() for s in state.values() if s.dim() > 0]
    assert moments and {s.dtype for s in moments} == {torch.float32}


def test_bf16_logits_probabilities_and_maps_close_to_fp32():
    from hegl_cli.models.inference import autocast_for

    model, _ = _tiny_model()
    model.eval()
    images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), autocast_for(CPU, "bf16"):
        logits16 = model(images)["logits"]
    with torch.no_grad():
        logits32 = model(images)["logits"]
    torch.testing.assert_close(logits16, logits32, atol=0.1, rtol=0.05)
    p32, a32 = predict_images(model, images, CPU, "fp32")
    p16, a16 = predict_images(model, images, CPU, "bf16")
    assert p16.dtype == a16.dtype == torch.float32
    torch.testing.assert_close(p16, p32, atol=0.03, rtol=0.0)
    torch.testing.assert_close(a16, a32, atol=0.03, rtol=0.0)
    torch.testing.assert_close(a16.sum((-1, -2)), torch.ones(8, 3))


# -- the CPU kernel pin ------------------------------------------------------------------------------
def _cpuinfo(tmp_path: Path) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    return path


def test_fp32_keeps_the_pin_and_bf16_on_a_cpu_takes_back_only_hegls(tmp_path):
    info = _cpuinfo(tmp_path)
    env: dict = {}
    assert settle_cpu_kernels("fp32", "cpu", env, info) == PINNED
    assert settle_cpu_kernels("bf16", "cpu", env, info) == {k: "native" for k in PINNED}
    assert not set(env) & {*PINNED, SET_BY_HEGL}
    env = {"MKL_CBWR": "AVX2"}  # the user's own pin stays
    settle_cpu_kernels("fp32", "cpu", env, info)
    assert settle_cpu_kernels("bf16", "cpu", env, info)["MKL_CBWR"] == "AVX2"
    assert settle_cpu_kernels("bf16", "cuda", {}, info) == PINNED  # the CPU only feeds the GPU: pinned
    assert settle_cpu_kernels("bf16", "cpu", {"HEGL_CPU_KERNELS": "avx2"}, info) == PINNED
    assert settle_cpu_kernels("fp32", "cpu", {"HEGL_CPU_KERNELS": "native"}, info) == {k: "native" for k in PINNED}


def test_a_process_keeps_the_kernels_of_its_first_settle(tmp_path, monkeypatch):
    """The libraries read the variables once: a second command in the same process (an ablation's next
    cell) gets the first one's back, so what it records is what its kernels are."""
    from hegl_cli.engine import kernels

    monkeypatch.setattr(kernels, "_SETTLED", None)
    for key in (*PINNED, SET_BY_HEGL, "HEGL_CPU_KERNELS"):
        monkeypatch.delenv(key, raising=False)
    info = _cpuinfo(tmp_path)
    assert settle_cpu_kernels("fp32", "cpu", cpuinfo=info) == PINNED
    assert settle_cpu_kernels("bf16", "cpu", cpuinfo=info) == PINNED
    assert {k: os.environ.get(k) for k in PINNED} == PINNED


def _train_in_subprocess(tmp_path: Path, cache: Path, name: str, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {*PINNED, SET_BY_HEGL, "HEGL_CPU_KERNELS"}}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    cmd = [sys.executable, "-m", "hegl_cli", "-q", "train", "--name", name, "--runs-dir", str(tmp_path / "runs"),
           *tiny_args(cache, "train.epochs=1", *extra)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((tmp_path / "runs" / name / "last.json").read_text())


@pytest.mark.slow
def test_the_cli_pins_fp32_deterministic_and_unpins_bf16(tiny_cache, tmp_path):
    """What each run's checkpoint says is what the libraries read: AVX2 for fp32, native for bf16."""
    from hegl_cli.engine.kernels import cpu_has_avx2

    if not cpu_has_avx2() or cpu_bf16_units() is None:
        pytest.skip("needs a CPU with AVX2 and bf16 units")
    fp32 = _train_in_subprocess(tmp_path, tiny_cache, "fp32", "train.deterministic=true")["versions"]
    assert (fp32["cpu_capability"], fp32["onednn_max_cpu_isa"], fp32["mkl_cbwr"]) == ("AVX2", "AVX2", "AVX2")
    meta = _train_in_subprocess(tmp_path, tiny_cache, "bf16", "train.precision=bf16")
    assert meta["precision"]["in_force"] == "bf16"
    bf16 = meta["versions"]
    assert (bf16["onednn_max_cpu_isa"], bf16["mkl_cbwr"]) == ("native", "native")
    if torch.cpu._is_avx512_supported():
        assert bf16["cpu_capability"] != "AVX2"


# -- the extra options against the plain path ---------------------------------------------------------
def _loss_and_grads(model, images: torch.Tensor, precision: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    from hegl_cli.models.inference import autocast_for

    model.eval()  # no dropout, batch norm on its running statistics: the same function both times
    model.zero_grad(set_to_none=True)
    with autocast_for(CPU, precision):
        out = model(images)
    loss = out["logits"].float().square().mean() + out["attention"].float().square().sum()
    loss.backward()
    return out["logits"].detach().float(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_channels_last_gives_the_plain_values_on_a_cnn():
    model, _ = _tiny_model(encoder="resnet10t", encoder_kwargs="{}")
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    plain, plain_grads = _loss_and_grads(model, images, "fp32")
    model.use_channels_last(True)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.encoder.parameters() if p.dim() == 4)
    last, last_grads = _loss_and_grads(model, images, "fp32")
    torch.testing.assert_close(last, plain, atol=1e-5, rtol=1e-4)
    for a, b in zip(last_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)


def test_compile_on_a_cpu_without_a_compiler_is_one_line(monkeypatch):
    from hegl_cli.engine.train import require_cpp_compiler

    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(UserError, match="train.compile=true on a CPU needs a C\\+\\+ compiler.*'no-such-compiler'"):
        require_cpp_compiler()


@pytest.mark.slow
def test_compiled_model_matches_the_plain_one(precision="bf16"):
    """torch.compile (inductor's C++ on a CPU) against eager, forward and backward; about a minute of
    compiling on 2 cores, so only under bf16 (fp32 passes at 1e-4 as well: run it with precision="fp32")."""
    from hegl_cli.engine.train import require_cpp_compiler

    try:
        require_cpp_compiler()
    except UserError as exc:
        pytest.skip(str(exc))
    model, _ = _tiny_model()
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    plain, plain_grads = _loss_and_grads(model, images, precision)
    compiled, compiled_grads = _loss_and_grads(torch.compile(model), images, precision)
    tol = {"fp32": dict(atol=1e-4, rtol=1e-4), "bf16": dict(atol=0.05, rtol=0.05)}[precision]
    torch.testing.assert_close(compiled, plain, **tol)
    for a, b in zip(compiled_grads, plain_grads):
        torch.testing.assert_close(a, b, **tol)
