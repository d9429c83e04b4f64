"""KAD's Transformer Query Network: class queries cross-attend to image patch tokens.

Pre-norm decoder layers (self-attention among queries, cross-attention to the patches, FFN), as in
KAD/DETR's ``forward_pre``. Attention runs through the fused ``scaled_dot_product_attention``
kernel except where its weights are needed (the cross-attention whose maps we return), which is
computed explicitly so that the maps are exactly the softmax the layer used. That softmax is float32
under bf16 autocast too (the scores come from a bf16 matmul; the maps HA and DAL see do not lose
bf16's 8-bit mantissa a second time), and is cast to the values' dtype for the weighted sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Multi-head attention that can also return its weights averaged over heads."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"decoder width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.fused_attn = True  # False: explicit softmax (double backward on CPU needs it)
        self.record_heads = False  # True: keep the last call's per-head softmax in head_weights (explainers)
        self.head_weights: torch.Tensor | None = None  # (B, H, Lq, Lk)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, hd)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (B, Lq, D), key/value (B, Lk, D) -> out (B, Lq, D), weights (B, Lq, Lk) or None.

        The returned weights are the pre-dropout softmax averaged over heads; each row sums to 1.
        """
        return self.attend(query, self.k(key), self.v(value), need_weights)

    def attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Like :meth:`forward` with keys/values already projected by ``self.k`` / ``self.v``: (B, Lk, D)."""
        q, k, v = self._split(self.q(query)), self._split(keys), self._split(values)
        p = self.dropout if self.training else 0.0
        if need_weights or not self.fused_attn or self.record_heads:
            attn = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, H, Lq, Lk)
            attn = attn.float().softmax(dim=-1)  # float32 maps under bf16 autocast too (a no-op in fp32)
            if self.record_heads:
                self.head_weights = attn.detach()
            out = F.dropout(attn, p, self.training).to(v.dtype) @ v
            weights = attn.mean(dim=1) if need_weights else None  # (B, Lq, Lk)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            weights = None
        b, _, lq, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, lq, -1)), weights


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer (queries attend to themselves, then to the patches)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, dropout)
        self.cross_attn = MultiHeadAttention(dim, heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """queries (B, C, D); the memory's keys and values for this layer's cross-attention, already
        projected, (B, N, D) each -> (B, C, D), weights (B, C, N)."""
        x = self.norm1(queries)
        queries = queries + self.drop(self.self_attn(x, x, x)[0])
        x = self.norm2(queries)
        attended, weights = self.cross_attn.attend(x, keys, values, need_weights=need_weights)
        queries = queries + self.drop(attended)
        queries = queries + self.drop(self.ffn(self.norm3(queries)))
        return queries, weights


class QueryDecoder(nn.Module):
    """Stack of :class:`DecoderLayer` with a final LayerNorm."""

    def __init__(self, dim: int, layers: int, heads: int, ffn: int, dropout: float, num_tokens: int):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.memory_pos = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.memory_pos, std=0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, all_weights: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """queries (B, C, D), memory (B, N, D) -> decoded (B, C, D) and cross-attention weights.

        The weights list holds (B, C, N) per layer when ``all_weights``, else only the last layer's.
        """
        weights: list[torch.Tensor] = []
        last = len(self.layers) - 1
        keys, values = self.memory_keys_values(memory)
        for i, layer in enumerate(self.layers):
            queries, w = layer(queries, keys[i], values[i], need_weights=all_weights or i == last)
            if w is not None:
                weights.append(w)
        return self.norm(queries), weights

    def memory_keys_values(self, memory: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every layer's cross-attention keys (from memory + position) and values (from memory), (B, N, D)
        each, in two matmuls instead of two per layer: the memory does not change between layers, so
        the layers' projection weights are stacked. Same values as each layer's own ``k``/``v``."""
        attn = [layer.cross_attn for layer in self.layers]
        k_weight, k_bias = torch.cat([a.k.weight for a in attn]), torch.cat([a.k.bias for a in attn])
        v_weight, v_bias = torch.cat([a.v.weight for a in attn]), torch.cat([a.v.bias for a in attn])
        keys = F.linear(memory + self.memory_pos, k_weight, k_bias)  # (B, N, L*D)
        values = F.linear(memory, v_weight, v_bias)
        d = memory.shape[-1]
        return list(keys.split(d, dim=-1)), list(values.split(d, dim=-1))
