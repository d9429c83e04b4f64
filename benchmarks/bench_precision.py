"""bf16 against fp32 on this machine, every ratio measured in one run (README, "Precision").

Prints, in one run:
- the machine: the CPU (and GPU), torch, threads, the bf16 units, and the kernels in force: ATen's
  capability, oneDNN's ISA as oneDNN itself reports it, the pins it reads (ONEDNN_MAX_CPU_ISA, MKL_CBWR);
- a 2048 x 2048 matmul in fp32 and in bf16: GFLOP/s each and their ratio (about the most bf16 can
  give on this machine);
- for each configuration (demo: the default config, ViT-Tiny with 6 blocks at 128 px, batch 16;
  paper: paper.yaml, ViT-B/16 at 224 px, batch 32 or --paper-batch), on a synthetic cache at its size:
  * hegl's training step, the trainer's own (``Trainer._forward_backward`` + ``_optimizer_step``:
    model, CE + HA + DAL, fused AdamW, gradient clipping), in each variant (fp32, bf16, bf16+compile,
    bf16+channels_last by default): ms per step, images/s, and the speed-up over fp32;
  * a plain timm step (the same encoder, a linear head, BCE, fused AdamW) in fp32 and in bf16, and
    the hegl/timm step ratio under each;
  * the run's cached training loader (its augmentation and workers) in images/s, beside the steps;
  * predict-style inference (``predict_split``: cache -> probabilities and maps) in fp32 and bf16;
- on a CPU, the fp32 step as ``train.precision=fp32`` runs it, with the CPU kernels pinned to AVX2,
  measured in a child process: the pin has to be in place before the first kernel, so it cannot
  share this process, and it is timed after this process's steps, not interleaved with them.

This process runs with ``HEGL_CPU_KERNELS=native`` (unless set otherwise): fp32 and bf16 here use the
same kernels, the machine's own. Within a configuration every variant takes one step per repeat, in
turn (interleaved), after two warm-up steps each (torch.compile compiles in them); the figures are
medians. The class queries are learned (text_encoder=none) and the classes are the built-in
benchmark's 4; the decoder, losses and optimizer are the real ones.

Usage: python benchmarks/bench_precision.py [--configs demo paper] [--paper-batch 32] [--repeats 5]
       [--variants fp32 bf16 bf16+compile bf16+channels_last] [--no-pinned] [--profile] [--quick]
       [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("HEGL_CPU_KERNELS", "native")  # before torch: fp32 and bf16 on the same kernels

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from run import classifier_step, interleaved  # noqa: E402  (benchmarks/run.py)
from torch import nn  # noqa: E402

from hegl_cli.config import Config, load_config  # noqa: E402
from hegl_cli.engine.device import select_device  # noqa: E402
from hegl_cli.engine.kernels import PINNED, SET_BY_HEGL, cpu_bf16_units, cpu_model, kernel_facts  # noqa: E402
from hegl_cli.engine.precision import bf16_units, device_name  # noqa: E402
from hegl_cli.engine.train import Trainer, make_optimizer  # noqa: E402
from hegl_cli.models.encoder import create_timm_backbone  # noqa: E402
from hegl_cli.models.inference import predict_split  # noqa: E402

# A seconds-long smoke run: the demo's shape of model, shrunk.
QUICK = ["data.image_size=32", "model.encoder_kwargs={patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
         "model.decoder_dim=32", "model.decoder_layers=2", "model.decoder_heads=2", "model.decoder_ffn=64",
         "train.batch_size=8", "eval.batch_size=16", "train.workers=0"]
DEFAULT_VARIANTS = ["fp32", "bf16", "bf16+compile", "bf16+channels_last"]


# -- the machine ------------------------------------------------------------------------------------
def onednn_isa() -> str:
    """oneDNN's ISA line, as oneDNN prints it with verbose on (a bf16 matmul and an fp32 convolution)."""
    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+") as captured:
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                a = torch.randn(64, 64, dtype=torch.bfloat16)
                a @ a
                F.conv2d(torch.randn(1, 8, 16, 16), torch.randn(8, 8, 3, 3))
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().splitlines()
    isa = next((line.split("isa:", 1)[1] for line in lines if ",isa:" in line), None)
    bf16_via_onednn = any("matmul" in line and "bf16" in line for line in lines)
    if isa is None:
        return "not reported (oneDNN was not called)"
    return f"{isa}; a bf16 matmul {'runs in oneDNN' if bf16_via_onednn else 'does not reach oneDNN (generic ATen loop)'}"


def machine_facts(device: torch.device) -> dict[str, str]:
    facts = {"cpu": cpu_model(), "device": device_name(device), "torch": torch.__version__,
             "threads": str(torch.get_num_threads()), "cpu_bf16_units": cpu_bf16_units() or "none",
             "device_bf16_units": bf16_units(device) or "none", "onednn_isa": onednn_isa(), **kernel_facts(),
             "hegl_cpu_kernels": os.environ.get("HEGL_CPU_KERNELS", "")}
    return facts


def matmul_rates(device: torch.device, n: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of an n x n matmul in fp32 and in bf16, interleaved."""
    pairs = {p: (torch.randn(n, n, device=device, dtype=d), torch.randn(n, n, device=device, dtype=d))
             for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    seconds = interleaved({p: (lambda a=a, b=b: a @ b) for p, (a, b) in pairs.items()}, repeats, device, warmup=2)
    return {p: 2 * n**3 / s / 1e9 for p, s in seconds.items()}


# -- one configuration ----------------------------------------------------------------------------------
def config_of(name: str, args: argparse.Namespace, cache: Path) -> Config:
    """The demo's defaults or paper.yaml, offline (no pretrained weights, learned queries)."""
    common = ["model.text_encoder=none", "model.pretrained=false", f"data.path={cache}", *args.overrides]
    if name == "paper":
        extra = [] if args.quick else [f"train.batch_size={args.paper_batch}"]
        return load_config("paper.yaml", common + extra + (QUICK if args.quick else []))
    return load_config(None, common + (QUICK if args.quick else []))


def prepare_cache(cfg: Config, cache: Path, quick: bool) -> None:
    """A synthetic cache of the config's size: ten training batches, and a test split for inference."""
    from hegl_cli.apps.prepare import prepare_synthetic
    from hegl_cli.data.benchmark.generator import SyntheticSpec
    from hegl_cli.data.options import PrepareOptions

    n_train = 48 if quick else 10 * cfg.train.batch_size
    n_test = 32 if quick else 2 * cfg.eval.batch_size
    prepare_synthetic(cache, PrepareOptions.from_config(cfg.data, progress=False),
                      SyntheticSpec(n_train=n_train, n_test=n_test, size=max(64, cfg.data.image_size)))


def parse_variant(text: str) -> tuple[str, bool, bool]:
    """``bf16+compile+channels_last`` -> (precision, compile, channels_last)."""
    precision, *options = text.split("+")
    unknown = [o for o in options if o not in ("compile", "channels_last")]
    if precision not in ("fp32", "bf16") or unknown:
        raise SystemExit(f"--variants: {text!r} is not fp32|bf16[+compile][+channels_last]")
    return precision, "compile" in options, "channels_last" in options


class Setup:
    """The trainers (plain, channels-last), their compiled nets and a few batches of one configuration."""

    def __init__(self, cfg: Config, run_root: Path):
        self.cfg, self.run_root = cfg, run_root
        self.trainers: dict[bool, Trainer] = {}
        self.compiled: dict[bool, nn.Module] = {}
        self.timm: tuple[nn.Module, torch.optim.Optimizer] | None = None
        base = self.trainer(False)
        # batches as the run's loader makes them, read here without its workers (which would still be
        # prefetching while the steps are timed)
        plain = torch.utils.data.DataLoader(base.dataset, batch_size=cfg.train.batch_size, drop_last=True)
        self.batches = list(itertools.islice(plain, 4))

    def trainer(self, channels_last: bool) -> Trainer:
        if channels_last not in self.trainers:
            cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, channels_last=channels_last,
                                                                           precision="fp32"))
            cfg.mark_set(getattr(self.cfg, "_set_by_user", set()))
            run = self.run_root / f"run-{len(self.trainers)}"
            self.trainers[channels_last] = Trainer(cfg, run, resume=False, progress=False, log=lambda *_: None)
        return self.trainers[channels_last]

    def net(self, channels_last: bool, compiled: bool) -> nn.Module:
        trainer = self.trainer(channels_last)
        if not compiled:
            return trainer.model
        if channels_last not in self.compiled:
            from hegl_cli.engine.train import require_cpp_compiler

            if trainer.device.type == "cpu":
                require_cpp_compiler()
            self.compiled[channels_last] = torch.compile(trainer.model)
        return self.compiled[channels_last]

    def hegl_step(self, variant: str) -> Callable[[], None]:
        """The trainer's own step in ``variant`` (its precision set for the call, its net swapped in)."""
        precision, compiled, channels_last = parse_variant(variant)
        trainer = self.trainer(channels_last)
        net = self.net(channels_last, compiled)
        forced = dataclasses.replace(trainer.precision, in_force=precision)
        batches = itertools.cycle(self.batches)

        def step() -> None:
            trainer.precision, trainer.net = forced, net
            trainer.net.train()
            trainer._forward_backward(next(batches), 0, 0)
            trainer._optimizer_step()

        return step

    def timm_step(self, precision: str) -> Callable[[], None]:
        """A plain timm classifier's step: the same encoder, a linear head, BCE, fused AdamW (one model
        for both precisions, like the hegl steps)."""
        cfg, device = self.cfg, self.trainer(False).device
        if self.timm is None:
            backbone = create_timm_backbone(cfg.model.encoder, cfg.data.image_size, cfg.model.in_chans, False,
                                            cfg.model.encoder_kwargs)
            model = nn.Sequential(backbone, nn.Linear(backbone.num_features, len(self.trainer(False).classes)))
            model = model.to(device).train()
            self.timm = (model, make_optimizer(list(model.parameters()), cfg, device))
        model, optimizer = self.timm
        batches = itertools.cycle(self.batches)

        def step() -> None:
            batch = next(batches)
            images = batch["image"].to(device).expand(-1, cfg.model.in_chans, -1, -1)
            classifier_step(model, optimizer, images, torch.nan_to_num(batch["labels"].to(device)), device, precision)

        return step

    def inference(self, precision: str, split) -> Callable[[], None]:
        trainer = self.trainer(False)
        return lambda: predict_split(trainer.model, split, trainer.device, self.cfg.eval.batch_size,
                                     precision=precision)

    def loader_rate(self) -> float:
        """Images/s of the run's training loader over one epoch (after one warm epoch: workers started)."""
        trainer = self.trainer(False)
        for _ in trainer.loader:
            pass
        t0, seen = time.perf_counter(), 0
        for batch in trainer.loader:
            seen += len(batch["image"])
        return seen / (time.perf_counter() - t0)

    def close(self) -> None:
        for trainer in self.trainers.values():
            trainer.close()


def measure_config(name: str, args: argparse.Namespace, variants: list[str], device: torch.device,
                   work: Path) -> dict:
    """Every step, the loader and inference of one configuration (see the module's docstring)."""
    from hegl_cli.data.cache import CachedSplit

    cache = work / f"cache-{name}"
    cfg = config_of(name, args, cache)
    prepare_cache(cfg, cache, args.quick)
    cfg = config_of(name, args, cache)
    setup = Setup(cfg, work / f"runs-{name}")
    try:
        batch = cfg.train.batch_size
        steps = {f"hegl {v}": setup.hegl_step(v) for v in variants}
        steps.update({f"timm {p}": setup.timm_step(p) for p in args.timm_precisions})
        seconds = interleaved(steps, args.repeats, device, warmup=2)
        test = CachedSplit(cache, "test")
        inference = interleaved({p: setup.inference(p, test) for p in args.timm_precisions}, args.repeats, device,
                                warmup=1)
        result = {"encoder": cfg.model.encoder, "encoder_kwargs": cfg.model.encoder_kwargs,
                  "image_size": cfg.data.image_size, "batch": batch, "classes": len(setup.trainer(False).classes),
                  "workers": cfg.train.workers, "augment": cfg.data.augment,
                  "seconds_per_step": seconds, "images_per_s": {k: batch / v for k, v in seconds.items()},
                  "loader_images_per_s": setup.loader_rate(),
                  "inference_images_per_s": {p: len(test) / s for p, s in inference.items()}}
        if args.profile and name == args.configs[0]:
            result["profile"] = {v: profile_step(setup.hegl_step(v)) for v in variants if "compile" not in v}
    finally:
        setup.close()
    return result


def profile_step(step: Callable[[], None], rows: int = 15) -> str:
    """Top ops of one step by self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# -- the fp32 step as train.precision=fp32 runs it: pinned, in a child process ---------------------------
def pinned_fp32(args: argparse.Namespace) -> dict:
    """Run this script as a child with the AVX2 pin set before its first kernel; its fp32 figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pinned.json"
        env = {k: v for k, v in os.environ.items() if k not in (*PINNED, SET_BY_HEGL)}
        env.update({**PINNED, "HEGL_CPU_KERNELS": "avx2"})
        argv = [sys.executable, str(Path(__file__).resolve()), "--child-pinned", "--json", str(out),
                "--configs", *args.configs, "--repeats", str(args.repeats), "--paper-batch", str(args.paper_batch),
                "--device", "cpu", *(["--quick"] if args.quick else []),
                *[a for o in args.overrides for a in ("--set", o)]]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
        return json.loads(out.read_text())


# -- report -----------------------------------------------------------------------------------------------
def print_machine(facts: dict[str, str], rates: dict[str, float], n: int) -> None:
    print(f"CPU {facts['cpu']} ({facts['threads']} threads; bf16 units: {facts['cpu_bf16_units']}); "
          f"device {facts['device']} (bf16 units: {facts['device_bf16_units']}); torch {facts['torch']}")
    print(f"kernels in force: ATen {facts['cpu_capability']}; oneDNN {facts['onednn_isa']}; "
          f"ONEDNN_MAX_CPU_ISA={facts['onednn_max_cpu_isa']}, MKL_CBWR={facts['mkl_cbwr']}, "
          f"HEGL_CPU_KERNELS={facts['hegl_cpu_kernels']}")
    print(f"matmul {n}x{n}: fp32 {rates['fp32']:.1f} GFLOP/s, bf16 {rates['bf16']:.1f} GFLOP/s, "
          f"bf16/fp32 {rates['bf16'] / rates['fp32']:.2f}")


def print_config(name: str, r: dict, pinned: dict | None) -> None:
    print(f"\n[{name}] {r['encoder']} {r['encoder_kwargs'] or ''} at {r['image_size']} px, batch {r['batch']}, "
          f"{r['classes']} classes")
    seconds, rates = r["seconds_per_step"], r["images_per_s"]
    print(f"  {'step':<36}{'ms/step':>10}{'images/s':>11}{'vs fp32':>9}")
    for key in seconds:
        base = seconds.get(f"{key.split()[0]} fp32")
        ratio = f"{base / seconds[key]:.2f}x" if base else ""
        print(f"  {key:<36}{seconds[key] * 1e3:>10.1f}{rates[key]:>11.1f}{ratio:>9}")
    for p in ("fp32", "bf16"):
        if f"hegl {p}" in seconds and f"timm {p}" in seconds:
            print(f"  hegl / timm step under {p}: {seconds[f'hegl {p}'] / seconds[f'timm {p}']:.2f}")
    print(f"  cached training loader: {r['loader_images_per_s']:.1f} images/s (workers {r['workers']}, "
          f"augment {r['augment']})")
    inf = r["inference_images_per_s"]
    line = ", ".join(f"{p} {v:.1f}" for p, v in inf.items())
    speedup = f" (bf16/fp32 {inf['bf16'] / inf['fp32']:.2f})" if {"fp32", "bf16"} <= set(inf) else ""
    print(f"  inference (predict_split): {line} images/s{speedup}")
    if pinned and "seconds_per_step" in pinned:
        p_step = pinned["seconds_per_step"].get("hegl fp32")
        print(f"  pinned fp32 (train.precision=fp32 as it runs; child process, not interleaved): "
              f"{p_step * 1e3:.1f} ms/step, {r['batch'] / p_step:.1f} images/s"
              + (f"; hegl bf16 / pinned fp32 speed-up {p_step / seconds['hegl bf16']:.2f}x" if "hegl bf16" in seconds
                 else "")
              + f"; inference {pinned['inference_images_per_s']['fp32']:.1f} images/s")
    for variant, table in (r.get("profile") or {}).items():
        print(f"\n  profile of one hegl {variant} step (top ops by self CPU time):\n{table}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--paper-batch", type=int, default=32, help="batch of the paper configuration (paper: 32)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", help=f"hegl step variants (default: {' '.join(DEFAULT_VARIANTS)}; "
                                                      "--quick: without compile)")
    parser.add_argument("--matmul", type=int, default=2048, help="side of the square matmul")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-pinned", action="store_true", help="skip the pinned fp32 child process")
    parser.add_argument("--profile", action="store_true", help="per-op profile of one step (first configuration)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: tiny model, 1 repeat")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--child-pinned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1 if "--repeats" not in (argv or sys.argv) else args.repeats
        args.matmul = 256 if "--matmul" not in (argv or sys.argv) else args.matmul
    if args.variants is None:
        args.variants = [v for v in DEFAULT_VARIANTS if not (args.quick and "compile" in v)]
    for v in args.variants:
        parse_variant(v)
    args.timm_precisions = ["fp32"] if args.child_pinned else ["fp32", "bf16"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = select_device(args.device)
    args.overrides = [f"train.device={device.type}", *args.overrides]  # the trainers run where the matmul did
    torch.manual_seed(0)
    if args.child_pinned:  # the fp32 figures under the AVX2 pin, for the parent
        with tempfile.TemporaryDirectory() as tmp:
            report = {"kernels": kernel_facts(),
                      "configs": {n: measure_config(n, args, ["fp32"], device, Path(tmp)) for n in args.configs}}
        args.json.write_text(json.dumps(report))
        return
    facts = machine_facts(device)
    rates = matmul_rates(device, args.matmul, max(3, args.repeats))
    print_machine(facts, rates, args.matmul)
    report = {"machine": facts, "matmul_gflops": rates, "variants": args.variants, "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            report["configs"][name] = measure_config(name, args, args.variants, device, Path(tmp))
    pinned = pinned_fp32(args) if device.type == "cpu" and not args.no_pinned else None
    if pinned is not None:
        report["pinned_fp32"] = pinned
        if "error" in pinned:
            print(f"\npinned fp32 child failed: {pinned['error']}")
        else:
            k = pinned["kernels"]
            print(f"\npinned child: ATen {k['cpu_capability']}, ONEDNN_MAX_CPU_ISA={k['onednn_max_cpu_isa']}, "
                  f"MKL_CBWR={k['mkl_cbwr']}")
    for name, r in report["configs"].items():
        print_config(name, r, (pinned or {}).get("configs", {}).get(name))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
