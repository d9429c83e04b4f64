"""The H-EGL model: image encoder -> patch tokens; class embeddings -> queries; decoder -> logits + maps."""

from __future__ import annotations

import torch
from torch import nn

from hegl_cli.config import ModelConfig
from hegl_cli.models.decoder import QueryDecoder
from hegl_cli.models.encoder import ImageEncoder
from hegl_cli.models.text import embed_prompts

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


class ClassHeads(nn.Module):
    """One linear classifier per class query (Query2Label's group-wise linear): (B, C, D) -> (B, C, 1).

    KAD shares one classifier across the queries (``model.head: shared``, the default). The decoded
    queries start out as near-identical averages of the image tokens, so a shared head can tell the
    classes apart only through them; a head per class picked up a simple cue several times faster in
    a small CNN, but did not help the demo ViT (see README, "Method and assumptions").
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, decoded: torch.Tensor) -> torch.Tensor:
        return ((decoded * self.weight).sum(-1) + self.bias).unsqueeze(-1)


class HEGLModel(nn.Module):
    """KAD-style classifier whose class queries' last cross-attention is each class's attention map.

    Args:
        classes: class names, in label order.
        cfg: the ``model`` config section.
        image_size: input side length in pixels.
        class_embeddings: (C, T) frozen text embeddings, or None for learned queries.
    """

    def __init__(self, classes: list[str], cfg: ModelConfig, image_size: int,
                 class_embeddings: torch.Tensor | None):
        super().__init__()
        self.classes = list(classes)
        self.image_size = image_size
        self.in_chans = cfg.in_chans
        self.channels_last = False  # see use_channels_last
        self.encoder = ImageEncoder(cfg.encoder, image_size, cfg.in_chans, cfg.pretrained, cfg.encoder_kwargs)
        self.grid = self.encoder.grid
        d = cfg.decoder_dim
        self.memory_proj = nn.Sequential(nn.Linear(self.encoder.dim, d), nn.LayerNorm(d))
        if class_embeddings is not None:
            if class_embeddings.shape[0] != len(classes):
                raise ValueError(f"{class_embeddings.shape[0]} class embeddings for {len(classes)} classes")
            self.register_buffer("class_embeddings", class_embeddings.float().clone())  # frozen (C, T)
            self.query_proj: nn.Module = nn.Linear(class_embeddings.shape[1], d)
            self.learned_queries = None
        else:
            self.class_embeddings = None
            self.query_proj = nn.Identity()
            self.learned_queries = nn.Parameter(torch.randn(len(classes), d) * 0.02)
        self.decoder = QueryDecoder(d, cfg.decoder_layers, cfg.decoder_heads, cfg.decoder_ffn, cfg.dropout,
                                    num_tokens=self.grid[0] * self.grid[1])
        self.head: nn.Module = ClassHeads(len(classes), d) if cfg.head == "per_class" else nn.Linear(d, 1)

    def use_channels_last(self, enabled: bool) -> None:
        """Channels-last memory layout for the convolutions' weights and the encoder's input (NHWC
        kernels for CNN encoders; the values are the same)."""
        self.channels_last = enabled
        self.encoder.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def set_fused_attention(self, enabled: bool) -> None:
        """Fused attention kernels on/off in encoder and decoder (off for double backward, RRR)."""
        for module in self.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = enabled

    def queries(self, batch: int) -> torch.Tensor:
        """(B, C, D) class queries."""
        if self.learned_queries is not None:
            q = self.learned_queries
        else:
            q = self.query_proj(self.class_embeddings)
        return q.unsqueeze(0).expand(batch, -1, -1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) in [0, 1] -> normalised (B, in_chans, S, S)."""
        x = (images - PIXEL_MEAN) / PIXEL_STD
        if self.in_chans != x.shape[1]:
            x = x.expand(-1, self.in_chans, -1, -1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, images: torch.Tensor, all_layers: bool = False) -> dict[str, torch.Tensor]:
        """Classify and explain.

        Args:
            images: (B, 1, S, S) intensities in [0, 1].
            all_layers: also return every decoder layer's cross-attention.

        Returns:
            ``logits`` (B, C); ``attention`` (B, C, h, w), the last layer's cross-attention averaged
            over heads (each map sums to 1); with ``all_layers``, ``attention_layers`` (L, B, C, h, w).
            Under bf16 autocast the logits (a small head run outside autocast) and the maps (a float32
            softmax, :class:`~hegl_cli.models.decoder.MultiHeadAttention`) are still float32.
        """
        b = images.shape[0]
        h, w = self.grid
        tokens = self.encoder(self.normalize(images))  # (B, N, E)
        memory = self.memory_proj(tokens)  # (B, N, D)
        decoded, weights = self.decoder(self.queries(b), memory, all_weights=all_layers)  # (B, C, D)
        with torch.autocast(decoded.device.type, enabled=False):  # C x D multiply-adds: float32 logits
            logits = self.head(decoded.float()).squeeze(-1)  # (B, C)
        out = {
            "logits": logits,
            "attention": weights[-1].reshape(b, -1, h, w),
        }
        if all_layers:
            out["attention_layers"] = torch.stack([wt.reshape(b, -1, h, w) for wt in weights])
        return out


class ClassSubset(nn.Module):
    """A trained model answering for some of its classes only, in a given order (external validation):
    ``logits`` (B, C'), ``attention`` (B, C', h, w) and ``attention_layers`` of those classes."""

    def __init__(self, model: HEGLModel, indices: list[int] | tuple[int, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.as_tensor(list(indices), dtype=torch.long), persistent=False)
        self.grid = model.grid
        self.classes = [model.classes[i] for i in indices]
        self.image_size = model.image_size

    def forward(self, images: torch.Tensor, all_layers: bool = False) -> dict[str, torch.Tensor]:
        out = self.model(images, all_layers=all_layers)
        picked = {"logits": out["logits"][:, self.indices], "attention": out["attention"][:, self.indices]}
        if "attention_layers" in out:
            picked["attention_layers"] = out["attention_layers"][:, :, self.indices]
        return picked


def class_prompts(classes: list[str], prompts: dict) -> list[str]:
    """The text each class is embedded from: its configured description, else its name."""
    return [str(prompts.get(name, name)) for name in classes]


def compute_class_embeddings(classes: list[str], cfg: ModelConfig) -> torch.Tensor | None:
    """(C, T) embeddings from the configured text encoder, or None for ``text_encoder: none``."""
    if cfg.text_encoder.lower() == "none":
        return None
    return embed_prompts(cfg.text_encoder, class_prompts(classes, cfg.prompts), cfg.text_pooling)


def build_model(classes: list[str], cfg: ModelConfig, image_size: int,
                class_embeddings: torch.Tensor | None = None) -> HEGLModel:
    """Build from config; the text encoder runs only when embeddings are not given."""
    if class_embeddings is None:
        class_embeddings = compute_class_embeddings(classes, cfg)
    return HEGLModel(classes, cfg, image_size, class_embeddings)
