"""Typed configuration: the public schema users write in YAML.

The defaults are the field defaults below, in this file only: the CPU demo (a ViT-Tiny with 6 of
its 12 blocks, trained from scratch at 128 px on the built-in benchmark with an offline text
encoder); ``hegl config show`` prints them resolved. Precedence (lowest to highest): these defaults
(or, for a run being resumed or evaluated, the run's own resolved config) < ``--config FILE`` <
``--set section.key=value`` (repeatable) < dedicated CLI flags (``--alpha``, ``--epochs``, ...).
:meth:`Config.was_set` tells whether the user set a key (the cache's own facts, such as its image
size, win over a default but not over a key the user set).

Every key is validated from its declared type: an unknown key names itself and the closest valid
key; a value of the wrong type names the key, the expected type and the value; ``Literal`` fields
take one of their values; numbers must be finite and inside the field's declared range.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import atomic_write_text
from hegl_cli.fs.yamlfile import YamlTooLarge, load_yaml
from hegl_cli.fs.yamlfile import read_yaml as load_yaml_file

MAX_IMAGE_SIZE = 2048
Device = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = typing.get_args(Device)
Precision = Literal["fp32", "bf16", "auto"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
ThresholdMetric = Literal["mcc", "f1"]
THRESHOLD_METRICS: tuple[str, ...] = typing.get_args(ThresholdMetric)
CALIBRATION_METHODS = ("temperature", "isotonic")  # `hegl evaluate --recalibrate --calibration-method`


def opt(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, factory: Any = dataclasses.MISSING) -> Any:
    """A config field with a declared range (checked whenever the key is set)."""
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt}.items() if v is not None}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"bounds": bounds})
    return field(default=default, metadata={"bounds": bounds})


@dataclass
class DataConfig:
    """Where the prepared cache lives and how it is split."""

    # One prepared cache, or several trained as one ([a, b]: classes the union by canonical name, NaN
    # where a cache does not label a class; README, "Training on several datasets").
    path: Union[str, list[str]] = "data/synthetic"
    # Several caches: the share of each batch each one gives, e.g. [0.5, 0.5] ([] = in proportion to size).
    source_weights: list[float] = opt(ge=0.0, factory=list)
    image_size: int = opt(128, ge=8, le=MAX_IMAGE_SIZE)
    val_fraction: float = opt(0.15, ge=0.0, lt=1.0)
    seed: int = opt(0, ge=0, lt=2**32)  # numpy's and torch's seeds: a 64-bit one overflowed in train
    mask_source: Literal["polygon", "box"] = "polygon"  # polygons fall back to boxes when absent
    classes: list[str] = field(default_factory=list)  # a subset of the dataset's classes ([] = all)
    # After the names are made canonical (README, "One pathology namespace"): rename or merge classes,
    # {old: new}; two classes mapped to one name become one (positive when either is).
    class_map: dict = field(default_factory=dict)
    # VinDr-CXR's three radiologists per image: any (one marked it; union of boxes) | majority
    label_fusion: Literal["any", "majority"] = "any"
    # CheXpert-style labels (--format chexpert, mimic: 1, 0, -1 uncertain, blank not mentioned; README,
    # "CheXpert, MIMIC-CXR and PadChest"). A blank on a row whose No Finding is 1: negative (the field's
    # convention, as torchxrayvision reads them) | unknown (NaN, as every other blank).
    label_no_finding: Literal["negative", "unknown", "all-negative"] = "negative"
    # What an uncertain label (-1) becomes: unknown (NaN: out of the loss and the scores) | ones (U-Ones)
    # | zeros (U-Zeros); and per class over that, e.g. {Atelectasis: ones, Edema: ones}.
    label_uncertain: Literal["unknown", "ones", "zeros"] = "unknown"
    label_uncertain_per_class: dict = field(default_factory=dict)
    # A patient whose images the data puts in two splits (official lists can): move them all to the
    # held-out split (test, then val) and name them in skipped.txt | refuse the prepare.
    patient_overlap: Literal["move", "refuse"] = "move"
    # Keep only images of these views (their 'view' metadata: NIH's View Position, a DICOM's
    # ViewPosition, a table's view column), e.g. [PA]; [] keeps every view (README, "Metadata and views").
    views: list[str] = field(default_factory=list)
    # Images with more pixels than this are refused (decompression bombs; a chest X-ray is ~10 Mpx).
    max_pixels: int = opt(64_000_000, ge=1)
    # How intensities reach [0, 1] (README, "Images"): stored_range scales by the range the stored
    # values can take (bit depth, window), the same for every container; min_max also stretches each
    # image to its own minimum and maximum.
    intensity: Literal["stored_range", "min_max"] = "stored_range"
    # A file with several frames (multi-frame DICOM, multi-page TIFF): which one is the image.
    frames: Literal["first", "middle", "mean", "refuse"] = "first"
    # Built-in synthetic dataset (used by `hegl prepare` with no --source).
    synthetic_train: int = opt(900, ge=8)
    synthetic_test: int = opt(300, ge=1)
    synthetic_source_size: int = opt(256, ge=32, le=4096)
    cue_strength: float = opt(0.9, ge=0.0, le=1.0)
    # Which member of the built-in benchmark family (README, "The benchmark family"); each has its own
    # cache folder, data/synthetic[-<member>][-cuefree]. cue_free: every cue independent of the labels
    # in train too, so a recipe's shifted-test AUC there is its no-shortcut ceiling.
    benchmark: Literal["v2", "inmask", "tags", "chestxdet13"] = "v2"
    cue_free: bool = False
    # Training-time augmentation: background_swap pastes annotated regions onto a random
    # finding-free image, so anything outside the masks (a shortcut too) is independent of the labels.
    augment: Literal["none", "background_swap"] = "none"
    # Joint image/mask augmentation (hegl_cli.data.augment, torchvision.transforms.v2): affine geometry,
    # image-only intensity (gamma, contrast, brightness, blur, noise), and a horizontal flip that is off
    # by default (left and right are anatomy in a chest X-ray).
    augment_geometry: Literal["none", "affine"] = "none"
    augment_intensity: Literal["none", "mild", "strong"] = "none"
    augment_flip: bool = False


@dataclass
class ModelConfig:
    """Image encoder (timm), text encoder (transformers) and query decoder."""

    encoder: str = "vit_tiny_patch16_224"
    pretrained: Union[bool, str] = False  # false | true (hub) | path/to/weights.safetensors
    in_chans: int = opt(1, ge=1, le=4)
    # Passed to timm.create_model. They belong to `encoder`: a config layer that changes the
    # encoder without giving encoder_kwargs of its own starts from {} (see load_config).
    # 6 of ViT-Tiny's 12 blocks: learns the demo in half the time on 2 CPU cores.
    encoder_kwargs: dict = field(default_factory=lambda: {"depth": 6})
    text_encoder: str = "builtin:minilm"  # builtin:minilm | hub id | local folder | none
    text_pooling: Literal["mean", "cls"] = "mean"
    prompts: dict = field(default_factory=dict)  # class name -> description used as the prompt
    decoder_dim: int = opt(256, ge=1)
    decoder_layers: int = opt(4, ge=1)
    decoder_heads: int = opt(4, ge=1)
    decoder_ffn: int = opt(1024, ge=1)
    dropout: float = opt(0.1, ge=0.0, lt=1.0)
    head: Literal["shared", "per_class"] = "shared"  # KAD: one linear for all class queries


@dataclass
class LossConfig:
    """L = CE + alpha * HA + beta * DAL (+ rrr_weight * RRR)."""

    alpha: float = opt(1.0, ge=0.0)
    beta: float = opt(1.0, ge=0.0)
    dice_k: float = opt(1.0, ge=0.0)  # penalized Dice penalty k (assumption: see README)
    ha_type: Literal["penalized_dice", "dice", "l1", "bce"] = "penalized_dice"
    ha_norm: Literal["max", "minmax"] = "max"  # how a map is scaled to [0, 1] before alignment
    ha_layers: Literal["last", "all"] = "last"  # which decoder layers' cross-attention is aligned
    # What the HA term aligns a map with: the mask's soft patch coverage (which a peak-scaled map
    # cannot match where a lesion covers no patch fully), peak (coverage / its maximum: a perfect map
    # reaches it) or binary (patches covered at least half as much as the most covered one).
    ha_target: Literal["coverage", "peak", "binary"] = "coverage"
    # DAL's pairs: all | positive (at least one of the two classes positive) | both_positive
    dal_pairs: Literal["all", "positive", "both_positive"] = "all"
    # What DAL compares: raw maps | above_uniform (only attention above 1/patches: a diffuse floor
    # costs nothing) | sharpened (maps squared and renormalised)
    # The default is the form the v2 study chose on context-swapped validation AUC (RESULTS.md);
    # paper.yaml keeps the published form (raw maps, all pairs).
    dal_maps: Literal["raw", "above_uniform", "sharpened"] = "sharpened"
    dal_warmup_epochs: int = opt(0, ge=0)  # beta ramps linearly from 0 over this many epochs
    dal_max_classes: int = opt(0, ge=0)  # sample this many classes per step for DAL (0 = all)
    rrr_weight: float = opt(0.0, ge=0.0)  # input-gradient penalty outside the mask (Ross et al. 2017)
    weighting: Literal["fixed", "warmup", "uncertainty"] = "fixed"
    weighting_warmup_epochs: int = opt(5, ge=0)


@dataclass
class TrainConfig:
    """Optimisation and run control."""

    epochs: int = opt(40, ge=1)
    batch_size: int = opt(16, ge=1)  # images per forward pass (per rank)
    accumulate: int = opt(1, ge=1)  # batches summed into one optimizer step: batch_size x accumulate x ranks
    lr: float = opt(3e-4, gt=0.0)
    weight_decay: float = opt(0.05, ge=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = opt(2, ge=0)
    grad_clip: float = opt(1.0, ge=0.0)  # 0 = no clipping
    patience: int = opt(8, ge=0)  # 0 = no early stopping
    seed: int = opt(0, ge=0, lt=2**32)  # numpy's and torch's seeds: a 64-bit one overflowed in train
    device: Device = "auto"
    workers: int = opt(0, ge=0)
    deterministic: bool = False
    # What the model computes in (README, "Precision"): fp32 | bf16 (autocast; losses, metrics, the maps
    # HA/DAL see and the optimizer state stay float32) | auto (bf16 where the device has bf16 units: AMX or
    # AVX512-BF16 on a CPU, compute capability 8.0+ on CUDA; else fp32). Replaces train.amp.
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile the training model (on a CPU, torch's inductor needs a C++ compiler)
    channels_last: bool = False  # channels-last memory layout for the encoder's convolutions (CNN encoders)
    # What chooses the checkpoint, early stopping and thresholds: the val images as they are, or
    # val_swapped: each val image's expert-masked regions on a finding-free val image's context
    # (fixed, seeded pairing), so that a shortcut outside the masks earns nothing. Never test.
    select_on: Literal["val", "val_swapped"] = "val"


@dataclass
class TableConfig:
    """`hegl prepare --format table`: a dataset in no public layout (README, "Your own data").

    Paths are relative to the working folder (or absolute); image paths in the tables are relative to
    ``--source`` (or absolute under it; a bare file name is looked up anywhere under it).
    """

    labels: str = ""  # CSV/TSV, one row per image (also --labels)
    image_column: str = "image"
    class_columns: list[str] = field(default_factory=list)  # one column per class: 1 | 0 | blank or -1 (unknown)
    labels_column: str = ""  # or one column of findings separated by `separator` (NIH)
    separator: str = "|"
    no_finding: str = "No Finding"  # the labels_column value of an image without findings
    patient_column: str = ""  # images of one patient stay in one split
    study_column: str = ""
    split_column: str = ""  # train | val | test per row; without it test is a seeded 20% of the patients
    # metadata kept next to each image, {name: column}: sex, age, view, site, scanner, ... (subgroup AUCs)
    metadata_columns: dict = field(default_factory=dict)
    boxes: str = ""  # CSV/TSV of boxes: one row per box
    box_image_column: str = "image"
    box_class_column: str = "class"
    box_columns: list[str] = field(default_factory=lambda: ["x1", "y1", "x2", "y2"])
    box_format: Literal["xyxy", "xywh"] = "xyxy"  # x1,y1,x2,y2 or x,y,w,h, pixels of the original image
    box_size_columns: list[str] = field(default_factory=list)  # [width, height] the boxes were drawn on
    coco: str = ""  # COCO JSON: boxes, polygons and RLE segmentations
    masks: str = ""  # a folder of masks/<class>/<image>.png (non-zero = the finding)


@dataclass
class EvalConfig:
    """Evaluation, faithfulness and robustness (``hegl evaluate/robustness/explain --set eval.KEY=V``)."""

    threshold_metric: ThresholdMetric = "mcc"  # how thresholds are chosen on validation
    bootstrap: int = opt(2000, ge=0)  # resamples of every 95% interval (classification.BOOTSTRAP_RESAMPLES)
    top_share: float = opt(0.2, gt=0.0, le=1.0)  # share of patches kept when a map is thresholded
    faithfulness_images: int = opt(48, ge=0)
    # Deletion/insertion curve points after the first: 0 = one patch per step (a random order cannot
    # tie a perfect map by the curve's coarseness); what replaces a removed patch: blur | mean | black.
    faithfulness_steps: int = opt(0, ge=0)
    faithfulness_baseline: Literal["blur", "mean", "black"] = "blur"
    # hegl evaluate --methods: the positive (image, class) pairs with a mask every method is scored on,
    # and the pairs of the sanity check (cascading parameter randomisation).
    method_pairs: int = opt(48, ge=1)
    sanity_pairs: int = opt(16, ge=1)
    robustness_draws: int = opt(3, ge=1)  # `hegl robustness` default for --draws
    sigmas: list[float] = opt(ge=0.0, le=1.0, factory=lambda: [0.05])  # `hegl robustness` default for --sigma
    batch_size: int = opt(64, ge=1)
    # What evaluate, robustness, explain, predict and report compute in: run (the precision the run
    # trained in, recorded in its checkpoint) | fp32 | bf16 | auto (see train.precision).
    precision: Literal["run", "fp32", "bf16", "auto"] = "run"


@dataclass
class Config:
    """The whole resolved configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    table: TableConfig = field(default_factory=TableConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def was_set(self, key: str) -> bool:
        """Whether ``section.key`` was set by the user (``--config``, ``--set`` or a flag), not a default."""
        return key in getattr(self, "_set_by_user", set())

    def mark_set(self, keys: set[str]) -> None:
        self._set_by_user = getattr(self, "_set_by_user", set()) | set(keys)

    def dump(self, path: Path) -> None:
        """Write the resolved config as YAML."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def check(self) -> None:
        """Checks that involve more than one key (one-key ranges are checked when a key is set)."""
        if self.model.decoder_dim % self.model.decoder_heads:
            raise UserError(f"config key 'model.decoder_heads' ({self.model.decoder_heads}) must divide "
                            f"model.decoder_dim ({self.model.decoder_dim})")
        if self.loss.dal_max_classes == 1:
            raise UserError("config key 'loss.dal_max_classes' must be 0 (all classes) or at least 2, got 1")


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _field_bounds(section_cls: type) -> dict[str, dict[str, float]]:
    return {f.name: dict(f.metadata.get("bounds", {})) for f in dataclasses.fields(section_cls)}


def all_keys() -> list[str]:
    """Every valid ``section.key``."""
    return [f"{s}.{k}" for s, cls in _sections().items() for k in _field_types(cls)]


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid: {', '.join(sorted(options))})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any, bounds: dict[str, float] | None = None) -> Any:
    """Check ``value`` against the annotated type ``tp`` and its bounds; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option, bounds)
            except UserError:
                continue
        raise _type_error(key, tp, value)
    if origin is Literal:
        choices = [str(c) for c in typing.get_args(tp)]
        if value not in choices:
            raise UserError(f"config key '{key}' must be one of {', '.join(choices)}; got {value!r}"
                            f"{_closest(str(value), choices)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, tp, value)
        (item_type,) = typing.get_args(tp)
        return [_coerce(key, item, item_type, bounds) for item in value]
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _in_bounds(key, float(value), bounds)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return _in_bounds(key, value, bounds)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp in (list, dict) and isinstance(value, tp):
        return value
    raise _type_error(key, tp, value)


_COMPARE = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
            "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def _in_bounds(key: str, value: float, bounds: dict[str, float] | None) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key '{key}' must be a finite number, got {value}")
    for name, bound in (bounds or {}).items():
        sign, ok = _COMPARE[name]
        if not ok(value, bound):
            raise UserError(f"config key '{key}' must be {sign} {bound:g}, got {value!r}")
    return value


def _type_error(key: str, tp: Any, value: Any) -> UserError:
    return UserError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")


def apply_mapping(cfg: Config, mapping: dict[str, Any], source: str) -> set[str]:
    """Apply a nested ``{section: {key: value}}`` mapping onto ``cfg`` with validation; returns the keys set."""
    if not isinstance(mapping, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(mapping).__name__}")
    sections = _sections()
    touched: set[str] = set()
    for section, values in mapping.items():
        if section not in sections:
            raise UserError(f"{source}: unknown config section '{section}'{_closest(str(section), list(sections))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section '{section}' must be a mapping")
        for key, value in values.items():
            set_value(cfg, f"{section}.{key}", value, source=source)
            touched.add(f"{section}.{key}")
    return touched


REPLACED_KEYS = {
    "train.amp": "was replaced by train.precision (fp32 | bf16 | auto); train.amp=true meant bf16 autocast on "
                 "CUDA only: set train.precision=bf16 (or auto) for bf16, fp32 for none",
}


def upgrade_stored(mapping: Any) -> Any:
    """A stored run config (a run folder's config, a checkpoint's metadata) from before ``train.precision``: its
    ``train.amp`` is read as ``train.precision: fp32``, what such a run computed in on a CPU (on CUDA it
    trained under bf16 autocast; README, "Precision"). The user's own ``train.amp`` is refused instead."""
    train = mapping.get("train") if isinstance(mapping, dict) else None
    if isinstance(train, dict) and "amp" in train:
        train = {k: v for k, v in train.items() if k != "amp"}
        train.setdefault("precision", "fp32")
        mapping = {**mapping, "train": train}
    return mapping


def set_value(cfg: Config, dotted: str, value: Any, source: str = "--set") -> None:
    """Set ``section.key`` to ``value`` after checking the key, the value's type and its range."""
    if dotted in REPLACED_KEYS:
        raise UserError(f"{source}: config key '{dotted}' {REPLACED_KEYS[dotted]}")
    sections = _sections()
    if "." not in str(dotted):
        raise UserError(f"{source}: config key '{dotted}' must look like section.key")
    section, key = dotted.split(".", 1)
    if section not in sections:
        raise UserError(f"{source}: unknown config section '{section}'{_closest(section, list(sections))}")
    types_ = _field_types(sections[section])
    if key not in types_:
        valid = [f"{section}.{k}" for k in types_]
        raise UserError(f"{source}: unknown config key '{dotted}'{_closest(dotted, valid)}")
    bounds = _field_bounds(sections[section]).get(key)
    setattr(getattr(cfg, section), key, _coerce(dotted, value, types_[key], bounds))


def get_value(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(cfg, section), key)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is read as YAML (``1e-4``, ``true``, ``[0.05, 0.1]``)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
    except YamlTooLarge:
        raise  # an oversized or alias-bomb value is refused, not read as text
    except UserError:
        value = raw
    if value is None:
        value = raw
    return key.strip(), _keep_text_for_strings(key.strip(), value, raw)


def _keep_text_for_strings(key: str, value: Any, raw: str) -> Any:
    """A ``--set`` value for a string field keeps the user's text (``--set data.path=2024``)."""
    section, _, name = key.partition(".")
    sections = _sections()
    tp = _field_types(sections[section]).get(name) if section in sections else None
    options = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else ()
    takes_text = tp is str or (str in options and all(o is str or typing.get_origin(o) is list for o in options))
    if takes_text and not isinstance(value, (str, list)):
        return raw
    return value


def packaged_config(name: str) -> Path:
    """Path of a YAML file shipped in ``hegl_cli/configs``."""
    return Path(str(resources.files("hegl_cli") / "configs" / name))


def read_yaml(path: Path) -> Any:
    """A YAML file through the one bounded loader (:mod:`hegl_cli.fs.yamlfile`); an empty file is {}."""
    return load_yaml_file(Path(path)) or {}


def config_layers(
    config_file: Path | str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The user's layers above the base, lowest first, as ``(source, {section.key: value})``."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        path = Path(config_file)
        if not path.exists() and packaged_config(str(config_file)).is_file():
            path = packaged_config(str(config_file))
        mapping = read_yaml(path)
        if not isinstance(mapping, dict):
            raise UserError(f"{config_file}: expected a mapping of sections, got {type(mapping).__name__}")
        flat: dict[str, Any] = {}
        for section, values in mapping.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                raise UserError(f"{config_file}: section '{section}' must be a mapping")
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        layers.append((str(config_file), flat))
    if overrides:
        layers.append(("--set", dict(parse_override(text) for text in overrides)))
    if flags:
        layers.append(("option", {k: v for k, v in flags.items() if v is not None}))
    return layers


def apply_layer(cfg: Config, source: str, values: dict[str, Any]) -> None:
    """Set every key of one layer; encoder options given for another encoder are dropped."""
    encoder_before = cfg.model.encoder
    for key, value in values.items():
        set_value(cfg, key, value, source=source)
    if cfg.model.encoder != encoder_before and "model.encoder_kwargs" not in values:
        cfg.model.encoder_kwargs = {}


RUN_TIME_KEYS = ("data.max_pixels",)  # besides eval.*: keys a trained run may take from the command line


def apply_eval_layers(cfg: Config, layers: list[tuple[str, dict[str, Any]]], command: str) -> None:
    """Apply ``--config/--set`` layers to a trained run's config; only ``eval.*`` keys (and
    :data:`RUN_TIME_KEYS`) may change: the rest is what was trained."""
    for source, values in layers:
        other = [k for k in values if not str(k).startswith("eval.") and k not in RUN_TIME_KEYS]
        if other:
            raise UserError(f"{source}: {command} can only set eval.* keys (and {', '.join(RUN_TIME_KEYS)}) of a "
                            f"trained run, not {other[0]} (the rest is the config the run was trained with)")
        apply_layer(cfg, source, values)


def load_config(
    config_file: Path | str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    base: Path | None = None,
) -> Config:
    """Resolve the configuration: base < file < ``--set`` overrides < dedicated flags.

    Args:
        config_file: a YAML file, or a packaged name such as ``paper.yaml``.
        overrides: ``section.key=value`` strings.
        flags: ``{"section.key": value}`` from dedicated CLI flags; ``None`` values are skipped.
        base: a complete config YAML (a run's resolved config) used instead of the defaults.
    """
    cfg = Config()
    if base is not None:
        apply_mapping(cfg, upgrade_stored(read_yaml(Path(base))), str(base))
    for source, values in config_layers(config_file, overrides, flags):
        apply_layer(cfg, source, values)
        cfg.mark_set(set(values))
    cfg.check()
    return cfg


def config_from_dict(mapping: dict[str, Any], source: str = "checkpoint config") -> Config:
    """Rebuild a config stored with a checkpoint (no defaults file involved)."""
    cfg = Config()
    apply_mapping(cfg, upgrade_stored(mapping), source)
    return cfg


def changed_keys(before: Config, after: Config) -> list[str]:
    """The ``section.key``s whose values differ between two configs."""
    a, b = before.to_dict(), after.to_dict()
    return [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s][k]]
