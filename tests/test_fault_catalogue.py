"""Issue 11: a catalogue of bad inputs and faults, each through the real CLI.

Every case asserts: the exit code (2 for anything the user can fix), a single line that names the
file, record or key, no traceback, and that nothing the user had was deleted or overwritten (every
file present before the command has the same bytes after it, and no run or cache folder appeared).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES, reseal
from hegl_cli.cli.app import app

runner = CliRunner()
HEGL_OWN = {".hegl-lock", ".hegl-train-lock", ".hegl-outputs.jsonl"}  # files hegl rewrites or appends to as it works


@dataclass
class Env:
    """A sandbox: a user's precious files, a ChestX-Det-like source, a tiny cache and a trained run."""

    tmp: Path
    cache: Path
    run: Path
    src: Path
    precious: Path
    notes: dict[str, Path] = field(default_factory=dict)

    @property
    def runs(self) -> Path:
        return self.run.parent


def write_png(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size[::-1], dtype=np.uint8)).save(path)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


RECORDS = [
    {"file_name": "a.png", "syms": ["Nodule"], "boxes": [[2, 2, 20, 20]], "polygons": [[[2, 2], [20, 2], [20, 20]]]},
    {"file_name": "b.png", "syms": [], "boxes": [], "polygons": []},
    {"file_name": "c.png", "syms": ["Mass", "Effusion"], "boxes": [[1, 1, 9, 9], [5, 5, 30, 30]],
     "polygons": [[[1, 1], [9, 1], [9, 9]], [[5, 5], [30, 5], [30, 30]]]},
    {"file_name": "d.png", "syms": [], "boxes": [], "polygons": []},
]


def make_source(root: Path) -> Path:
    for split in ("train", "test"):
        for i, record in enumerate(RECORDS):
            write_png(root / split / record["file_name"], seed=i)
        (root / f"ChestX_Det_{split}.json").write_text(json.dumps(RECORDS))
    return root


@pytest.fixture()
def env(tmp_path, tiny_cache, _trained_master, monkeypatch) -> Env:
    from hegl_cli.engine.run_folder import mark_latest

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(_trained_master, run)
    mark_latest(run)
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("years of work")
    (precious / "sub" / "data.csv").write_text("1,2,3")
    return Env(tmp_path, Path(tiny_cache), run, make_source(tmp_path / "src"), precious)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name not in HEGL_OWN:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def folders(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


@dataclass
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    message: str  # must appear in the single output line
    setup: Callable[[Env], None] = lambda e: None
    code: int = 2
    after: Callable[[Env], None] = lambda e: None  # extra checks


def fill(text: str, e: Env) -> str:
    """Put the sandbox's paths into ``{e.tmp}``-style placeholders (other braces are YAML)."""
    return text.format(e=e) if "{e." in text else text


def tiny(e: Env, *extra: str) -> list[str]:
    args = []
    for item in TINY_OVERRIDES + [f"data.path={e.cache}", *extra]:
        args += ["--set", item]
    return args


def train(*extra: str, name: str | None = "new") -> Callable[[Env], list[str]]:
    return lambda e: ["train", *(["--name", name] if name is not None else []), "--runs-dir", str(e.runs),
                      *tiny(e), *[fill(x, e) for x in extra]]


def resume(*extra: str, name: str = "tiny") -> Callable[[Env], list[str]]:
    return lambda e: ["train", "--resume", "--name", name, "--runs-dir", str(e.runs), *[fill(x, e) for x in extra]]


def cmd(*args: str) -> Callable[[Env], list[str]]:
    return lambda e: [fill(a, e) for a in args]


def det(*extra: str, records=None, out: str = "{e.tmp}/cache-out") -> Callable[[Env], list[str]]:
    """prepare --format chestxdet from explicit files; ``records`` replaces the train annotations."""
    def argv(e: Env) -> list[str]:
        ann = e.src / "ChestX_Det_train.json"
        if records is not None:
            ann = e.tmp / "bad.json"
            if isinstance(records, bytes):
                ann.write_bytes(records)
            else:
                ann.write_text(records if isinstance(records, str) else json.dumps(records))
        return ["prepare", "--format", "chestxdet", "--annotations", f"train={ann}", "--images",
                f"train={e.src / 'train'}", "--out", fill(out, e), "--image-size", "32", "--workers", "1",
                *[fill(x, e) for x in extra]]
    return argv


def record(**changes) -> list[dict]:
    bad = {**RECORDS[0], **changes}
    bad = {k: v for k, v in bad.items() if v is not None}
    return [bad, *RECORDS[1:]]


def without(key: str) -> list[dict]:
    bad = {k: v for k, v in RECORDS[0].items() if k != key}
    return [bad, *RECORDS[1:]]


# --- setups ------------------------------------------------------------------------------------
def user_run_folder(e: Env) -> None:
    shutil.copytree(e.precious, e.runs / "mine")


def user_link(e: Env) -> None:
    os.symlink(e.precious, e.runs / "link")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def crafted_state(e: Env) -> None:
    (e.run / "state.pt").write_bytes(pickle.dumps({"epoch": 0, "model": Payload()}))


def hold_lock(path_of: Callable[[Env], Path]) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        from hegl_cli.fs.locks import FolderLock

        e.notes["lock"] = FolderLock(path_of(e), "test").acquire()  # released when the fixture ends
    return setup


def truncate(path_of: Callable[[Env], Path], keep: float = 0.5) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        path = path_of(e)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return setup


def own_cache(e: Env) -> None:
    copy = e.tmp / "cache-copy"
    shutil.copytree(e.cache, copy)
    meta = json.loads((e.run / "best.json").read_text())
    meta["data"] = str(copy)
    (e.run / "best.json").write_text(json.dumps(meta))
    e.notes["cache"] = copy


def with_cache(change: Callable[[Path], None]) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        own_cache(e)
        change(e.notes["cache"])
    return setup


def other_model_weights(e: Env) -> None:
    from safetensors.torch import save_file

    from hegl_cli.config import load_config
    from hegl_cli.models.model import build_model

    cfg = load_config(None, TINY_OVERRIDES + ["model.decoder_dim=16", "model.decoder_ffn=32"])
    model = build_model(["Nodule", "Mass", "Effusion", "Consolidation"], cfg.model, 32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(e.run / "best.safetensors"))


def dicom(path: Path, syntax: str | None = None, pixels: bool = True, truncate_at: int | None = None) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 16, 16, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels:
        data = np.arange(256, dtype=np.uint16).tobytes()
        if syntax is not None:
            from pydicom.encaps import encapsulate

            data = encapsulate([b"\xff\x4f\xff\x51" + data[:100]])  # not a real JPEG 2000 stream
        ds.PixelData = data
    ds.save_as(path, enforce_file_format=True)
    if truncate_at:
        path.write_bytes(path.read_bytes()[:truncate_at])
    return path


def bad_image(name: str, maker: Callable[[Path], object]) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        path = e.tmp / "inbox" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        maker(path)
        e.notes["image"] = path
    return setup


def explain_image(e: Env) -> list[str]:
    return ["explain", str(e.notes["image"]), "--run", str(e.run), "--out", str(e.tmp / "x")]


def write_config(text: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        (e.tmp / "c.yaml").write_text(text)
    return setup


def no_run_created(name: str) -> Callable[[Env], None]:
    return lambda e: None if not (e.runs / name).exists() else pytest.fail(f"run folder {name} was created")


CASES = [
    # -- data loss and code execution ---------------------------------------------------------------
    Case("train-force-abs-name", train("--force", name="/tmp/hegl-victim"), "invalid run name"),
    Case("train-force-abs-precious", lambda e: [*train("--force", name=str(e.precious))(e)], "invalid run name"),
    Case("train-force-dotdot", train("--force", name="../precious"), "invalid run name"),
    Case("train-name-nested", train(name="a/b"), "invalid run name"),
    Case("train-name-dot", train(name="."), "invalid run name"),
    Case("train-name-dotdot", train(name=".."), "invalid run name"),
    Case("train-name-latest", train(name="latest"), "invalid run name"),
    Case("train-name-empty", train(name=""), "invalid run name"),
    Case("train-name-backslash", train(name="..\\x"), "invalid run name"),
    Case("train-force-user-folder", train("--force", name="mine"), "not a hegl run folder", user_run_folder),
    Case("train-force-symlink", train("--force", name="link"), "symbolic link", user_link),
    Case("train-existing-no-force", train(name="tiny"), "already exists"),
    Case("train-resume-and-force", resume("--force"), "contradict"),
    Case("prepare-out-is-source", cmd("prepare", "--format", "chestxdet", "--source", "{e.src}", "--out", "{e.src}",
                                      "--force"), "overlaps the input"),
    Case("prepare-out-is-images", det("--force", out="{e.src}/train"), "overlaps the input"),
    Case("prepare-out-holds-source", det("--force", out="{e.tmp}"), "overlaps the input"),
    Case("prepare-out-user-folder", det("--force", out="{e.precious}"), "is not a hegl cache"),
    Case("prepare-out-user-folder-no-force", det(out="{e.precious}"), "is not a hegl cache"),
    Case("prepare-out-is-file", det("--force", out="{e.precious}/thesis.txt"), "is not a folder"),
    Case("prepare-out-symlink", det("--force", out="{e.tmp}/cachelink"), "symbolic link",
         lambda e: os.symlink(e.precious, e.tmp / "cachelink")),
    Case("prepare-synthetic-out-user-folder", cmd("prepare", "--out", "{e.precious}", "--force"), "is not a hegl cache"),
    Case("resume-crafted-pickle", resume(), "not a hegl training state", crafted_state,
         after=lambda e: None if not (e.tmp / "PWNED").exists() else pytest.fail("the pickle ran code")),
    Case("resume-truncated-state", resume(), "not a hegl training state", truncate(lambda e: e.run / "state.pt")),
    Case("resume-while-running", resume(), "is in use by", hold_lock(lambda e: e.run / ".hegl-lock")),
    Case("force-while-running", train("--force", name="tiny"), "is in use by", hold_lock(lambda e: e.run / ".hegl-lock")),
    Case("prepare-while-running", cmd("prepare", "--out", "{e.tmp}/data/synthetic"), "is in use by",
         hold_lock(lambda e: e.tmp / "data" / ".synthetic.lock")),
    # -- silent wrong results: every range --------------------------------------------------------
    Case("alpha-negative", train("--alpha", "-1"), "'loss.alpha' must be >= 0"),
    Case("alpha-nan", train("--alpha", "nan"), "'loss.alpha' must be a finite number"),
    Case("beta-inf", train("--beta", "inf"), "'loss.beta' must be a finite number"),
    Case("epochs-zero", train("--epochs", "0"), "'train.epochs' must be >= 1", after=no_run_created("new")),
    Case("epochs-negative", train("--epochs", "-3"), "'train.epochs' must be >= 1"),
    Case("batch-zero", train("--set", "train.batch_size=0"), "'train.batch_size' must be >= 1"),
    Case("lr-negative", train("--set", "train.lr=-1"), "'train.lr' must be > 0"),
    Case("lr-nan", train("--set", "train.lr=.nan"), "'train.lr' must be a finite number"),
    Case("heads-not-dividing", train("--set", "model.decoder_heads=3"), "must divide model.decoder_dim"),
    Case("warmup-negative", train("--set", "train.warmup_epochs=-1"), "'train.warmup_epochs' must be >= 0"),
    Case("patience-negative", train("--set", "train.patience=-1"), "'train.patience' must be >= 0"),
    Case("dropout-one", train("--set", "model.dropout=1"), "'model.dropout' must be < 1"),
    Case("dice-k-negative", train("--set", "loss.dice_k=-1"), "'loss.dice_k' must be >= 0"),
    Case("rrr-negative", train("--set", "loss.rrr_weight=-0.1"), "'loss.rrr_weight' must be >= 0"),
    Case("val-fraction-over-one", cmd("prepare", "--set", "data.val_fraction=1.5"), "'data.val_fraction' must be < 1"),
    Case("image-size-huge", cmd("prepare", "--image-size", "100000"), "'data.image_size' must be <= 2048"),
    Case("image-size-tiny", cmd("prepare", "--image-size", "4"), "'data.image_size' must be >= 8"),
    Case("prepare-workers-negative", cmd("prepare", "--workers", "-1"), "--workers"),
    Case("max-pixels-zero", cmd("prepare", "--set", "data.max_pixels=0"), "'data.max_pixels' must be >= 1"),
    Case("sigma-nan", cmd("robustness", "{e.run}", "--sigma", "nan"), "--sigma"),
    Case("sigma-negative", cmd("robustness", "{e.run}", "--sigma", "-0.1"), "--sigma"),
    Case("sigma-over-one", cmd("robustness", "{e.run}", "--sigma", "2"), "--sigma"),
    Case("draws-zero", cmd("robustness", "{e.run}", "--draws", "0"), "--draws"),
    Case("eval-set-sigmas-negative", cmd("robustness", "{e.run}", "--set", "eval.sigmas=[-1]"), "'eval.sigmas' must be >= 0"),
    Case("eval-top-share-zero", cmd("evaluate", "{e.run}", "--set", "eval.top_share=0"), "'eval.top_share' must be > 0"),
    Case("eval-bootstrap-negative", cmd("evaluate", "{e.run}", "--set", "eval.bootstrap=-1"), "'eval.bootstrap' must be >= 0"),
    Case("evaluate-sets-loss-key", cmd("evaluate", "{e.run}", "--set", "loss.alpha=0"), "only set eval.* keys"),
    Case("ablation-seeds-zero", cmd("ablation", "--seeds", "0"), "--seeds must be at least 1"),
    Case("ablation-sigma-nan", cmd("ablation", "--sigma", "nan"), "--sigma"),
    Case("ablation-grid-garbage", cmd("ablation", "--grid", "a,b"), "expected ALPHA,BETA"),
    Case("ablation-cell-negative-alpha", cmd("ablation", "--grid", "0,0 -1,1", "--out-root", "{e.tmp}/abl"),
         "'loss.alpha' must be >= 0", after=lambda e: None if not (e.tmp / "abl").exists() else pytest.fail("trained")),
    Case("ablation-late-bad-cell", cmd("ablation", "--grid", "0,0 1,1+loss.nosuch=1", "--out-root", "{e.tmp}/abl"),
         "unknown config key 'loss.nosuch'",
         after=lambda e: None if not (e.tmp / "abl").exists() else pytest.fail("the first cell trained")),
    Case("ablation-name-escapes", cmd("ablation", "--name", "../x"), "invalid run name"),
    Case("ablation-into-user-folder", cmd("ablation", "--name", "precious", "--out-root", "{e.tmp}", "--grid", "0,0"),
         "is not a hegl ablation folder"),
    Case("ablation-while-running", cmd("ablation", "--name", "abl", "--out-root", "{e.tmp}", "--grid", "0,0"),
         "is in use by", lambda e: ((e.tmp / "abl").mkdir(), (e.tmp / "abl" / "hegl-ablation.json").write_text("{}"),
                                    hold_lock(lambda e: e.tmp / "abl" / ".hegl-lock")(e))),
    # -- annotations --------------------------------------------------------------------------------
    Case("record-without-syms", det("--strict", records=without("syms")), "no 'syms' list"),
    Case("record-without-boxes", det("--strict", records=without("boxes")), "no 'boxes' list"),
    Case("box-nan", det("--strict", records='[{"file_name": "a.png", "syms": ["Nodule"], "boxes": [[NaN, 1, 5, 5]]}, '
                                            '{"file_name": "b.png", "syms": [], "boxes": []}]'), "non-finite"),
    Case("box-infinity", det("--strict", records='[{"file_name": "a.png", "syms": ["Nodule"], "boxes": [[0, 0, Infinity, 5]]},'
                                                 ' {"file_name": "b.png", "syms": [], "boxes": []}]'), "non-finite"),
    Case("polygon-nan", det("--strict", records='[{"file_name": "a.png", "syms": ["Nodule"], "boxes": [[0, 0, 5, 5]], '
                                                '"polygons": [[[0, 0], [NaN, 1], [5, 5]]]}, '
                                                '{"file_name": "b.png", "syms": [], "boxes": [], "polygons": []}]'),
         "non-finite point"),
    Case("same-image-twice", det("--strict", records=[*RECORDS, {**RECORDS[1], "file_name": "./a.png"}]),
         "duplicate file_name 'a.png'"),
    Case("empty-list", det(records="[]"), "no usable record"),
    Case("not-a-list", det(records="{}"), "expected a JSON list"),
    Case("invalid-json", det(records="[{"), "not valid JSON"),
    Case("binary-json", det(records=b"\xff\xfe\x00\x81"), "not valid JSON"),
    Case("unknown-class", det("--strict", records=record(syms=["Tumour"])), "unknown class 'Tumour'"),
    Case("name-escapes", det("--strict", records=record(file_name="../../etc/passwd")), "escapes the images folder"),
    Case("name-absolute", det("--strict", records=record(file_name="/etc/passwd")), "escapes the images folder"),
    Case("box-three-numbers", det("--strict", records=record(boxes=[[1, 2, 3]])), "is not [x1, y1, x2, y2]"),
    Case("box-strings", det("--strict", records=record(boxes=[["1", "2", "3", "4"]])), "non-numeric"),
    Case("box-no-area", det("--strict", records=record(boxes=[[5, 5, 5, 9]])), "has no area"),
    Case("unequal-lists", det("--strict", records=record(boxes=[])), "'syms' has 1 entries but 'boxes' has 0"),
    Case("polygon-count", det("--strict", records=record(polygons=[])), "'polygons' has 0"),
    Case("polygon-two-points", det("--strict", records=record(polygons=[[[1, 1], [5, 5]]])), "fewer than 3 points"),
    Case("record-not-object", det("--strict", records=[["a.png"], *RECORDS[1:]]), "record is not an object"),
    Case("images-folder-wrong", lambda e: [*det()(e)[:6], f"train={e.precious}", *det()(e)[7:]], "images of split 'train' could be read"),
    Case("images-folder-missing", lambda e: [*det()(e)[:6], f"train={e.tmp}/nowhere", *det()(e)[7:]],
         "images folder for split 'train' not found"),
    Case("annotations-missing", lambda e: ["prepare", "--format", "chestxdet", "--annotations", f"train={e.tmp}/no.json",
                                           "--images", f"train={e.src}/train", "--out", f"{e.tmp}/o"],
         "annotation file not found"),
    Case("annotations-without-images", cmd("prepare", "--format", "chestxdet", "--annotations", "train={e.src}/x.json"),
         "must name the same splits"),
    Case("annotations-no-equals", cmd("prepare", "--format", "chestxdet", "--annotations", "train.json"),
         "expected SPLIT=PATH"),
    Case("format-unknown", cmd("prepare", "--format", "nosuch", "--source", "{e.src}"), "unknown format 'nosuch'"),
    Case("source-missing", cmd("prepare", "--format", "chestxdet", "--source", "{e.tmp}/nowhere"), "source folder not found"),
    Case("source-without-json", cmd("prepare", "--format", "chestxdet", "--source", "{e.precious}"),
         "no ChestX_Det_train.json"),
    Case("source-without-images", cmd("prepare", "--format", "chestxdet", "--source", "{e.tmp}/s2"), "no images folder",
         lambda e: (e.tmp / "s2").mkdir() or shutil.copy(e.src / "ChestX_Det_train.json", e.tmp / "s2")),
    Case("synthetic-with-source", cmd("prepare", "--source", "{e.src}"), "need --format chestxdet"),
    Case("strict-missing-image", det("--strict", records=[*RECORDS, {**RECORDS[1], "file_name": "zz.png"}]),
         "image not found"),
    # -- hostile or huge files ----------------------------------------------------------------------
    Case("png-bomb-header", explain_image, "over the 64 Mpx limit", bad_image("bomb.png", lambda p: png_claiming(p, 30000, 30000))),
    Case("png-12000", explain_image, "over the 64 Mpx limit", bad_image("big.png", lambda p: png_claiming(p, 12000, 12000))),
    # a strip of a few bytes is padded to a square before it is resized: 1 x 40000 would take 6 GB
    Case("png-long-strip", explain_image, "padded to a square it holds 1600 Mpx",
         bad_image("strip.png", lambda p: Image.fromarray(np.full((1, 40000), 128, np.uint8)).save(p))),
    Case("png-over-user-limit", lambda e: [*explain_image(e), "--set", "data.max_pixels=100"], "over the 0.0001 Mpx limit",
         bad_image("small.png", lambda p: write_png(p, (20, 20)))),
    Case("prepare-strict-bomb", det("--strict"), "over the 64 Mpx limit",
         lambda e: png_claiming(e.src / "train" / "c.png", 30000, 30000)),
    Case("png-truncated", explain_image, "cannot read image",
         bad_image("cut.png", lambda p: p.write_bytes(write_png(p).read_bytes()[:60]))),
    Case("png-empty", explain_image, "cannot read image", bad_image("empty.png", lambda p: p.write_bytes(b""))),
    Case("png-is-text", explain_image, "cannot read image", bad_image("notes.png", lambda p: p.write_text("hello"))),
    Case("dicom-no-pixels", explain_image, "holds no image", bad_image("nopix.dcm", lambda p: dicom(p, pixels=False))),
    Case("dicom-truncated", explain_image, "DICOM", bad_image("cut.dcm", lambda p: dicom(p, truncate_at=400))),
    Case("dicom-jpeg2000-fake", explain_image, "transfer syntax",
         bad_image("j2k.dcm", lambda p: dicom(p, syntax="1.2.840.10008.1.2.4.90"))),
    Case("markup-closing-tag-in-path", explain_image, "[/b]bad.png",
         bad_image("[/b]bad.png", lambda p: p.parent.mkdir(parents=True, exist_ok=True) or p.write_text("x"))),
    Case("markup-tags-in-file-name", explain_image, "[bold]x[red].png",
         bad_image("[bold]x[red].png", lambda p: p.write_text("x"))),
    Case("folder-without-images", lambda e: ["explain", str(e.precious), "--run", str(e.run)], "no images"),
    Case("explain-missing-file", cmd("explain", "{e.tmp}/missing.png", "--run", "{e.run}"), "image not found"),
    # -- messages that name the file --------------------------------------------------------------------
    Case("safetensors-garbage", cmd("evaluate", "{e.run}"), "best.safetensors: not a readable safetensors file",
         lambda e: (e.run / "best.safetensors").write_bytes(b"\xff" * 64)),
    Case("safetensors-truncated", cmd("evaluate", "{e.run}"), "best.safetensors: not a readable safetensors file",
         truncate(lambda e: e.run / "best.safetensors")),
    Case("safetensors-empty", cmd("explain", "{e.src}/train/a.png", "--run", "{e.run}"), "best.safetensors",
         lambda e: (e.run / "best.safetensors").write_bytes(b"")),
    Case("weights-of-another-model", cmd("evaluate", "{e.run}"), "are not the model", other_model_weights),
    Case("meta-corrupt", cmd("evaluate", "{e.run}"), "corrupt checkpoint metadata",
         lambda e: (e.run / "best.json").write_text("{not json")),
    Case("meta-missing-keys", cmd("evaluate", "{e.run}"), "not a hegl checkpoint description",
         lambda e: (e.run / "best.json").write_text("{}")),
    Case("images-npy-truncated", cmd("evaluate", "{e.run}"), "images.npy: damaged or truncated",
         with_cache(lambda c: truncate(lambda e: c / "test" / "images.npy")(None))),
    Case("labels-npy-wrong-shape", cmd("evaluate", "{e.run}"), "labels.npy: shape",
         with_cache(lambda c: np.save(c / "test" / "labels.npy", np.zeros((3, 4), np.float32)))),
    Case("masks-npy-missing", cmd("evaluate", "{e.run}"), "masks.npy: missing",
         with_cache(lambda c: (c / "test" / "masks.npy").unlink())),
    Case("manifest-corrupt", cmd("evaluate", "{e.run}"), "corrupt manifest",
         with_cache(lambda c: (c / "manifest.json").write_text("[1"))),
    Case("files-json-missing", cmd("evaluate", "{e.run}"), "files.json: unreadable",
         with_cache(lambda c: (c / "test" / "files.json").unlink())),
    Case("cache-missing", train("--data", "{e.tmp}/nowhere"), "run `hegl prepare` first"),
    Case("cache-other-size", train("--set", "data.image_size=64"), "prepared at 32 px"),
    Case("resume-config-missing", resume(), "has no config.yaml", lambda e: (e.run / "config.yaml").unlink()),
    Case("resume-config-corrupt", resume(), "not valid YAML", lambda e: (e.run / "config.yaml").write_text("a: [")),
    Case("resume-changes-model", resume("--set", "model.decoder_layers=3"), "model.decoder_layers"),
    Case("resume-no-name", cmd("train", "--resume"), "--resume needs --name"),
    Case("resume-nothing", resume(name="ghost"), "nothing to resume"),
    Case("config-missing", cmd("config", "show", "--config", "{e.tmp}/none.yaml"), "config file not found"),
    Case("config-not-mapping", cmd("config", "show", "--config", "{e.tmp}/c.yaml"), "expected a mapping",
         write_config("- 1\n- 2\n")),
    Case("config-unknown-key", cmd("config", "show", "--config", "{e.tmp}/c.yaml"), "did you mean 'train.epochs'",
         write_config("train:\n  epoch: 3\n")),
    Case("config-bad-choice", cmd("config", "show", "--set", "loss.ha_type=cosine"), "must be one of"),
    # -- smaller ------------------------------------------------------------------------------------------
    Case("evaluate-no-latest", cmd("evaluate", "--runs-dir", "{e.tmp}/empty"), "no run given"),
    Case("evaluate-no-checkpoint", cmd("evaluate", "{e.precious}"), "is not a hegl run folder"),
    Case("evaluate-bad-checkpoint-name", cmd("evaluate", "{e.run}", "--checkpoint", "middle"), "unknown checkpoint 'middle'"),
    Case("evaluate-unknown-split", cmd("evaluate", "{e.run}", "--split", "nosuch"), "split 'nosuch'"),
    Case("evaluate-threshold-metric", cmd("evaluate", "{e.run}", "--threshold-metric", "auc"), "--threshold-metric"),
    Case("evaluate-unknown-device", cmd("evaluate", "{e.run}", "--device", "tpu"), "unknown device 'tpu'"),
    Case("robustness-missing-run", cmd("robustness", "{e.tmp}/nope"), "run folder not found"),
    Case("explain-unknown-class", cmd("explain", "{e.src}/train/a.png", "--run", "{e.run}", "--classes", "Tumour"),
         "class 'Tumour' is not in the model"),
    Case("train-unknown-encoder", train("--set", "model.encoder=vit_tiny_patch16_22"), "closest: vit_tiny_patch16_224"),
    Case("train-encoder-kwargs-unfit", train("--set", "model.encoder=resnet18", "--set", "model.encoder_kwargs={depth: 6}"),
         "do not fit 'resnet18'"),
    Case("train-text-encoder-missing", train("--set", "model.text_encoder={e.tmp}/bert"), "cannot load text encoder"),
    Case("train-patch-size", train("--set", "model.encoder_kwargs={patch_size: 7}"), "not divisible by the patch size 7"),
    Case("train-no-val", train("--data", "{e.tmp}/noval"), "has no 'val' split",
         lambda e: (shutil.copytree(e.cache, e.tmp / "noval"), shutil.rmtree(e.tmp / "noval" / "val"),
                    (e.tmp / "noval" / "manifest.json").write_text(json.dumps(
                        {**json.loads((e.cache / "manifest.json").read_text()),
                         "splits": {"train": 41, "test": 16, "test_counterfactual": 16}})))),
]


# --- issue 21: promises held by mechanisms, not case by case ------------------------------------------
def user_file(relative: str, text: str = "mine") -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        path = e.tmp / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def user_image(relative: str) -> Callable[[Env], None]:
    return lambda e: write_png(e.tmp / relative)


ALIAS_BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
                     for i in range(9))


def huge_yaml(e: Env) -> None:
    (e.tmp / "c.yaml").write_text("train:\n  epochs: 3\n# " + "x" * (50 << 20) + "\n")


def nan_tiff(path: Path) -> None:
    pixels = np.full((20, 20), 0.5, np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels, mode="F").save(path)


def torn(path_of: Callable[[Env], Path], text: str) -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        path = path_of(e)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def finished_ablation(e: Env) -> None:
    """An ablation folder hegl made with one finished cell whose record was torn since."""
    folder = e.tmp / "abl"
    (folder / "runs").mkdir(parents=True)
    (folder / "hegl-ablation.json").write_text("{}")
    shutil.copytree(e.run, folder / "runs" / "a0_b0_s0")
    (folder / "runs" / "a0_b0_s0" / "cell.json").write_text('{"cell": "a0_b0", "se')


MECHANISM_CASES = [
    # -- no file the user made is ever touched -----------------------------------------------------------
    Case("explain-out-keeps-user-grid", cmd("explain", "{e.src}/train/a.png", "--run", "{e.run}", "--out", "{e.tmp}/figs"),
         "grid.png exists and is not a file hegl wrote", user_file("figs/grid.png")),
    Case("explain-out-keeps-user-grid-force", cmd("explain", "{e.src}/train/a.png", "--run", "{e.run}", "--out",
                                                  "{e.tmp}/figs", "--force"),
         "grid.png exists and is not a file hegl wrote", user_file("figs/grid.png")),
    Case("explain-out-keeps-user-predictions", cmd("explain", "{e.src}/train", "--run", "{e.run}", "--out", "{e.tmp}/figs"),
         "predictions.json exists and is not a file hegl wrote", user_file("figs/a/predictions.json")),
    Case("robustness-out-keeps-user-json", cmd("robustness", "{e.run}", "--out", "{e.tmp}/paper", "--force"),
         "robustness.json exists and is not a file hegl wrote", user_file("paper/robustness.json")),
    Case("robustness-out-keeps-user-png", cmd("robustness", "{e.run}", "--out", "{e.tmp}/paper"),
         "robustness.png exists and is not a file hegl wrote", user_file("paper/robustness.png")),
    Case("explain-out-is-a-file", cmd("explain", "{e.src}/train/a.png", "--run", "{e.run}", "--out",
                                      "{e.precious}/thesis.txt"), "is not a folder"),
    Case("explain-out-under-a-file", cmd("explain", "{e.src}/train/a.png", "--run", "{e.run}", "--out",
                                         "{e.precious}/thesis.txt/figs"), "thesis.txt"),
    Case("explain-out-symlink", cmd("explain", "{e.src}/train/a.png", "--run", "{e.run}", "--out", "{e.tmp}/figlink"),
         "symbolic link", lambda e: os.symlink(e.precious, e.tmp / "figlink")),
    Case("report-out-keeps-user-html", cmd("report", "{e.run}", "--out", "{e.precious}/page.html", "--force"),
         "is not a report hegl wrote", user_file("precious/page.html", "<html>mine</html>")),
    Case("predict-out-keeps-user-csv", cmd("predict", "{e.src}/train/a.png", "--run", "{e.run}", "--out",
                                           "{e.precious}/sub/data.csv", "--force"), "not a predictions CSV"),
    Case("predict-every-input-unreadable", cmd("predict", "{e.tmp}/inbox/bad.png", "--run", "{e.run}", "--out",
                                               "{e.tmp}/p.csv"), "was not written",
         bad_image("bad.png", lambda p: p.write_text("not an image")),
         after=lambda e: None if not (e.tmp / "p.csv").exists() else pytest.fail("a header-only CSV was written")),
    # -- no input hangs -----------------------------------------------------------------------------------
    Case("yaml-alias-bomb", cmd("config", "show", "--config", "{e.tmp}/c.yaml"), "expands to more than",
         write_config(ALIAS_BOMB)),
    Case("yaml-alias-bomb-train", train("--config", "{e.tmp}/c.yaml"), "expands to more than", write_config(ALIAS_BOMB),
         after=no_run_created("new")),
    Case("yaml-50-mb", cmd("config", "show", "--config", "{e.tmp}/c.yaml"), "MB of YAML", huge_yaml),
    Case("yaml-alias-bomb-in-set", cmd("config", "show", "--set", "model.prompts=" + ALIAS_BOMB.replace("\n", ", ")
                                       .join("{}")), "expands to more than"),
    Case("yaml-recursive-alias", cmd("config", "show", "--config", "{e.tmp}/c.yaml"), "refers to itself",
         write_config("a: &a [1, *a]\n")),
    Case("yaml-is-a-folder", cmd("config", "show", "--config", "{e.precious}"), "is a folder"),
    # -- user tables and lists ------------------------------------------------------------------------------
    Case("list-binary", cmd("predict", "{e.tmp}/l.csv", "--run", "{e.run}", "--out", "{e.tmp}/p.csv"),
         "a binary file, not a list of images", lambda e: (e.tmp / "l.csv").write_bytes(b"\x89PNG\0\0\x01")),
    Case("list-huge-field", cmd("predict", "{e.tmp}/l.csv", "--run", "{e.run}", "--out", "{e.tmp}/p.csv"),
         "not a readable list of images", lambda e: (e.tmp / "l.csv").write_text("path\n\"" + "a" * (2 << 20) + "\"\n")),
    Case("list-not-utf8", cmd("predict", "{e.tmp}/l.csv", "--run", "{e.run}", "--out", "{e.tmp}/p.csv"),
         "not UTF-8 text", lambda e: (e.tmp / "l.csv").write_bytes(b"path\nb\xe9b\xe9.png\n")),
    Case("annotations-is-a-folder", lambda e: ["prepare", "--format", "chestxdet", "--annotations", f"train={e.precious}",
                                               "--images", f"train={e.src}/train", "--out", f"{e.tmp}/o"], "is a folder"),
    # -- damaged records of earlier commands ----------------------------------------------------------------
    Case("report-torn-metrics", cmd("report", "{e.run}", "--out", "{e.tmp}/r.html"), "metrics.jsonl: line 2",
         torn(lambda e: e.run / "metrics.jsonl", '{"epoch": 1, "val_auc": 0.5}\n{"epoch": 2, "val_')),
    Case("report-empty-evaluation", cmd("report", "{e.run}", "--out", "{e.tmp}/r.html"), "not a hegl evaluation",
         torn(lambda e: e.run / "eval" / "test.json", "{}")),
    Case("report-torn-evaluation", cmd("report", "{e.run}", "--out", "{e.tmp}/r.html"), "not valid JSON",
         torn(lambda e: e.run / "eval" / "test.json", '{"macro": ')),
    Case("ablation-torn-cell", cmd("ablation", "--name", "abl", "--out-root", "{e.tmp}", "--grid", "0,0", "--seeds", "1",
                                   *[a for o in TINY_OVERRIDES for a in ("--set", o)]),
         "not valid JSON", finished_ablation),
    # -- names, folders and files the user can fix ------------------------------------------------------------
    Case("run-name-300-chars", train(name="r" * 300), "over the 255 a folder name may have"),
    Case("runs-dir-is-a-file", lambda e: [*train(name="n")(e)[:3], "--runs-dir", str(e.precious / "thesis.txt"),
                                          *train(name="n")(e)[5:]], "is not a folder"),
    Case("runs-latest-is-a-user-folder", train(name="fresh"), "is not hegl's pointer to the newest run",
         lambda e: ((e.runs / "latest").unlink(), shutil.copytree(e.precious, e.runs / "latest")),
         after=no_run_created("fresh")),
    Case("pretrained-not-a-checkpoint", train("--set", "model.pretrained={e.precious}/thesis.txt"),
         "cannot load pretrained weights from"),
    Case("encoder-kwargs-without-value", train("--set", "model.encoder_kwargs={patch_size: 8, depth:1}"),
         "'depth:1' has no value"),
    Case("tiff-with-nan-pixels", explain_image, "not numbers", bad_image("nan.tiff", nan_tiff)),
    Case("background-swap-without-donors", train("--data", "{e.tmp}/nofree", "--set", "data.augment=background_swap"),
         "background_swap needs finding-free train images",
         lambda e: _cache_without_finding_free(e.cache, e.tmp / "nofree"), after=no_run_created("new")),
]


def _cache_without_finding_free(cache: Path, out: Path) -> None:
    shutil.copytree(cache, out)
    labels = np.load(out / "train" / "labels.npy")
    labels[:, 0] = 1.0  # every train image now has a finding
    np.save(out / "train" / "labels.npy", labels)
    reseal(out)


CASES += MECHANISM_CASES


# ---- --format table: a team's own data (issue 22); each bad row is fatal under --strict -------------

def _team(e: Env) -> Path:
    from test_table import own_dataset

    return own_dataset(e.tmp / "team")


def team_with(edit: Callable[[Path], None] | None = None) -> Callable[[Env], None]:
    """Setup: the team's folder, then one edit to it (made before the snapshot: it is the user's file)."""
    def setup(e: Env) -> None:
        root = _team(e)
        if edit is not None:
            edit(root)
    return setup


def table(*extra: str, strict: bool = True) -> Callable[[Env], list[str]]:
    def argv(e: Env) -> list[str]:
        root = e.tmp / "team"
        return ["prepare", "--format", "table", "--source", str(root), "--labels", str(root / "labels.csv"),
                "--out", str(e.tmp / "cache-table"), "--image-size", "16", "--workers", "1",
                "--set", "table.image_column=path", "--set", "table.class_columns=[Nodule, Effusion]",
                "--set", f"table.boxes={root / 'boxes.csv'}", *(["--strict"] if strict else []),
                *[x.format(root=root) for x in extra]]
    return argv


def _row(line: int, column: str, value: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        import csv

        rows = list(csv.reader((root / "labels.csv").open()))
        rows[line - 1][rows[0].index(column)] = value
        with open(root / "labels.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    return edit


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_text(text)


COCO_WRONG_ID = json.dumps({"images": [{"id": 1, "file_name": "images/p00.png"}],
                            "annotations": [{"image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4]}],
                            "categories": [{"id": 1, "name": "Nodule"}]})
TABLE_CASES = [
    Case("table-no-image-column", table("--set", "table.image_column=file", strict=False), "expected the columns",
         setup=_team),
    Case("table-class-column-missing", table("--set", "table.class_columns=[Nodule, Tumour]", strict=False),
         "missing 'Tumour'", setup=_team),
    Case("table-two-label-forms", table("--set", "table.labels_column=findings", strict=False), "not both",
         setup=_team),
    Case("table-labels-file-missing", lambda e: [a.replace("labels.csv", "nothere.csv") for a in table()(e)],
         "nothere.csv", setup=_team),
    Case("table-label-value-2", table(), "holds '2', not 1, 0, blank or -1", setup=team_with(_row(2, "Nodule", "2"))),
    Case("table-label-value-maybe", table(), "holds 'maybe'", setup=team_with(_row(3, "Effusion", "maybe"))),
    Case("table-path-escapes", table(), "escapes the source folder",
         setup=team_with(_row(3, "path", "../../etc/passwd"))),
    Case("table-absolute-path-outside", table(), "escapes the source folder",
         setup=team_with(_row(4, "path", "/etc/passwd"))),
    Case("table-image-missing", table(), "image not found under the source",
         setup=team_with(_row(4, "path", "images/none.png"))),
    Case("table-box-unknown-class", table(),
         "unknown class 'Tumour'", setup=team_with(_write("boxes.csv", "image,class,x1,y1,x2,y2\nimages/p00.png,Tumour,1,1,5,5\n"))),
    Case("table-box-other-image-size",
         table("--set", "table.box_size_columns=[w, h]",
               ),
         "drawn on a 512x512 image but the image is 50x40", setup=team_with(_write("boxes.csv", "image,class,x1,y1,x2,y2,w,h\nimages/p00.png,Nodule,1,1,5,5,512,512\n"))),
    Case("table-coco-image-id-unmatched", table("--set", "table.coco={root}/coco.json",
                                                ),
         "image id 2 is not among its images", setup=team_with(_write("coco.json", COCO_WRONG_ID))),
]
CASES += TABLE_CASES


def test_the_catalogue_has_at_least_95_cases():
    assert len(CASES) >= 95 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, env: Env):
    case.setup(env)
    before, dirs_before = snapshot(env.tmp), folders(env.tmp)
    precious_link_target = snapshot(env.precious)
    try:
        result = runner.invoke(app, ["-q", *case.argv(env)])
    finally:
        lock = env.notes.get("lock")
        if lock is not None:
            lock.release()
    assert result.exit_code == case.code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert case.message in lines[0], result.output
    assert "Traceback" not in result.output
    after = snapshot(env.tmp)
    lost = [p for p, digest in before.items() if after.get(p) != digest]
    assert not lost, f"changed or deleted: {lost[:5]}"
    assert snapshot(env.precious) == precious_link_target
    new_dirs = {d for d in folders(env.tmp) - dirs_before if not d.startswith(("data", "x"))}
    assert not [d for d in new_dirs if d.startswith("runs/") or "cache" in d], new_dirs
    assert not Path("/tmp/hegl-victim").exists() or Path("/tmp/hegl-victim").is_dir()
    case.after(env)


USAGE_CASES = [
    (["train", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["train", "--alpah", "1"], "No such option: --alpah"),
    (["evaluate", "a", "b"], "unexpected extra argument"),
    (["nosuch"], "No such command 'nosuch'"),
    (["robustness", "--seed", "-1"], "Invalid value for '--seed'"),
    (["predict"], "Missing argument"),
    (["explain", "x.png", "--checkpoint"], "requires an argument"),
]


@pytest.mark.parametrize("argv,message", USAGE_CASES, ids=[" ".join(a) for a, _ in USAGE_CASES])
def test_usage_errors_are_one_line_too(argv, message):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "--help" in lines[0], result.output
