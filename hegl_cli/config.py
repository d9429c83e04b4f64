"""Typed configuration: the public schema users write in YAML.

Precedence (lowest to highest): the packaged ``default.yaml`` < ``--config FILE`` <
``--set section.key=value`` (repeatable) < dedicated CLI flags (``--alpha``, ``--epochs``, ...).

Every key is validated: an unknown key names itself and the closest valid key; a value of the
wrong type names the key, the expected type and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from hegl_cli.errors import UserError


@dataclass
class DataConfig:
    """Where the prepared cache lives and how it is split."""

    path: str = "data/synthetic"
    image_size: int = 128
    val_fraction: float = 0.15
    seed: int = 0
    mask_source: str = "polygon"  # polygon | box (polygons fall back to boxes when absent)
    # Built-in synthetic dataset (used by `hegl prepare` with no --source).
    synthetic_train: int = 900
    synthetic_test: int = 300
    synthetic_source_size: int = 256
    cue_strength: float = 0.9
    # Training-time augmentation: none | background_swap (annotated regions pasted onto a random
    # finding-free image, so anything outside the masks, a shortcut too, is independent of the labels).
    augment: str = "none"


@dataclass
class ModelConfig:
    """Image encoder (timm), text encoder (transformers) and query decoder."""

    encoder: str = "vit_tiny_patch16_224"
    pretrained: Union[bool, str] = False  # false | true (hub) | path/to/weights.safetensors
    in_chans: int = 1
    encoder_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model
    text_encoder: str = "builtin:minilm"  # builtin:minilm | hub id | local folder | none
    text_pooling: str = "mean"  # mean | cls
    prompts: dict = field(default_factory=dict)  # class name -> description used as the prompt
    decoder_dim: int = 256
    decoder_layers: int = 4
    decoder_heads: int = 4
    decoder_ffn: int = 1024
    dropout: float = 0.1
    head: str = "shared"  # shared (KAD: one linear for all class queries) | per_class (one each)


@dataclass
class LossConfig:
    """L = CE + alpha * HA + beta * DAL (+ rrr_weight * RRR)."""

    alpha: float = 1.0
    beta: float = 1.0
    dice_k: float = 1.0  # penalized Dice penalty k (assumption: see README)
    ha_type: str = "penalized_dice"  # penalized_dice | dice | l1 | bce
    ha_norm: str = "max"  # max | minmax: how a map is scaled to [0, 1] before alignment
    ha_layers: str = "last"  # last | all decoder layers' cross-attention
    dal_pairs: str = "all"  # all | positive (pairs with at least one positive class)
    dal_max_classes: int = 0  # sample this many classes per step for DAL (0 = all)
    rrr_weight: float = 0.0  # input-gradient penalty outside the mask (Ross et al. 2017)
    weighting: str = "fixed"  # fixed | warmup | uncertainty
    weighting_warmup_epochs: int = 5


@dataclass
class TrainConfig:
    """Optimisation and run control."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: int = 2
    grad_clip: float = 1.0
    patience: int = 8
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    workers: int = 0
    deterministic: bool = False
    amp: bool = True  # bf16 autocast on CUDA


@dataclass
class EvalConfig:
    """Evaluation, faithfulness and robustness settings."""

    threshold_metric: str = "mcc"  # mcc | f1: how thresholds are chosen on validation
    bootstrap: int = 200
    top_share: float = 0.2  # share of patches kept when a map is thresholded for Dice/IoU
    faithfulness_images: int = 48
    faithfulness_steps: int = 8
    robustness_draws: int = 3
    sigmas: list = field(default_factory=lambda: [0.05])
    batch_size: int = 64


@dataclass
class Config:
    """The whole resolved configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def dump(self, path: Path) -> None:
        """Write the resolved config as YAML."""
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


CHOICES: dict[str, tuple[str, ...]] = {
    "data.mask_source": ("polygon", "box"),
    "data.augment": ("none", "background_swap"),
    "model.text_pooling": ("mean", "cls"),
    "model.head": ("per_class", "shared"),
    "loss.ha_type": ("penalized_dice", "dice", "l1", "bce"),
    "loss.ha_norm": ("max", "minmax"),
    "loss.ha_layers": ("last", "all"),
    "loss.dal_pairs": ("all", "positive"),
    "loss.weighting": ("fixed", "warmup", "uncertainty"),
    "train.schedule": ("cosine", "constant"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "eval.threshold_metric": ("mcc", "f1"),
}


def _sections() -> dict[str, type]:
    return {f.name: f.type if isinstance(f.type, type) else _resolve(f.type) for f in dataclasses.fields(Config)}


def _resolve(name: str) -> type:
    return {"DataConfig": DataConfig, "ModelConfig": ModelConfig, "LossConfig": LossConfig,
            "TrainConfig": TrainConfig, "EvalConfig": EvalConfig}[name]


def _field_types(section_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(section_cls)


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid: {', '.join(sorted(options))})"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotated type ``tp``; return it (ints widen to float)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option)
            except UserError:
                continue
        raise _type_error(key, tp, value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(f"config key '{key}' must be one of {', '.join(CHOICES[key])}; got {value!r}"
                            f"{_closest(value, list(CHOICES[key]))}")
        return value
    if tp is list and isinstance(value, list):
        return value
    if tp is dict and isinstance(value, dict):
        return value
    raise _type_error(key, tp, value)


def _type_error(key: str, tp: Any, value: Any) -> UserError:
    return UserError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")


def apply_mapping(cfg: Config, mapping: dict[str, Any], source: str) -> None:
    """Apply a nested ``{section: {key: value}}`` mapping onto ``cfg`` with validation."""
    if not isinstance(mapping, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(mapping).__name__}")
    sections = _sections()
    for section, values in mapping.items():
        if section not in sections:
            raise UserError(f"{source}: unknown config section '{section}'{_closest(str(section), list(sections))}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section '{section}' must be a mapping")
        for key, value in values.items():
            set_value(cfg, f"{section}.{key}", value, source=source)


def set_value(cfg: Config, dotted: str, value: Any, source: str = "--set") -> None:
    """Set ``section.key`` to ``value`` after checking the key and the value's type."""
    sections = _sections()
    if "." not in dotted:
        raise UserError(f"{source}: config key '{dotted}' must look like section.key")
    section, key = dotted.split(".", 1)
    if section not in sections:
        raise UserError(f"{source}: unknown config section '{section}'{_closest(section, list(sections))}")
    types_ = _field_types(sections[section])
    if key not in types_:
        valid = [f"{section}.{k}" for k in types_]
        raise UserError(f"{source}: unknown config key '{dotted}'{_closest(dotted, valid)}")
    setattr(getattr(cfg, section), key, _coerce(dotted, value, types_[key]))


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is read as YAML (``1e-4``, ``true``, ``[0.05, 0.1]``)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if value is None:
        value = raw
    return key.strip(), value


def _coerce_override(cfg: Config, key: str, value: Any, raw: str) -> Any:
    """A ``--set`` value for a string field keeps the user's text (``--set data.path=2024``)."""
    section, _, name = key.partition(".")
    sections = _sections()
    if section in sections:
        tp = _field_types(sections[section]).get(name)
        if tp is str and not isinstance(value, str):
            return raw
    return value


def packaged_config(name: str) -> Path:
    """Path of a YAML file shipped in ``hegl_cli/configs``."""
    return Path(str(resources.files("hegl_cli") / "configs" / name))


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc


def load_config(
    config_file: Path | str | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> Config:
    """Resolve the configuration: default < file < ``--set`` overrides < dedicated flags.

    Args:
        config_file: a YAML file, or a packaged name such as ``paper.yaml``.
        overrides: ``section.key=value`` strings.
        flags: ``{"section.key": value}`` from dedicated CLI flags; ``None`` values are skipped.
    """
    cfg = Config()
    apply_mapping(cfg, read_yaml(packaged_config("default.yaml")), "default.yaml")
    if config_file is not None:
        path = Path(config_file)
        if not path.exists() and packaged_config(str(config_file)).is_file():
            path = packaged_config(str(config_file))
        apply_mapping(cfg, read_yaml(path), str(config_file))
    for text in overrides or []:
        key, value = parse_override(text)
        raw = text.split("=", 1)[1]
        set_value(cfg, key, _coerce_override(cfg, key, value, raw))
    for key, value in (flags or {}).items():
        if value is not None:
            set_value(cfg, key, value, source="option")
    return cfg


def config_from_dict(mapping: dict[str, Any]) -> Config:
    """Rebuild a config stored with a checkpoint (no defaults file involved)."""
    cfg = Config()
    apply_mapping(cfg, mapping, "checkpoint config")
    return cfg
