"""The encoder: parity with transformers' ModernBertForMaskedLM, the three batch forms, sparse MLM, training."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM

from mmbert_train.model import MaskedLMOutput, MMBertForMaskedLM, ModelConfig

# ---- helpers shared with the other model test files -------------------------------------------------------


def random_config(seed: int, **overrides) -> ModelConfig:
    """A small config with every architecture field randomised, so a dropped/misread field changes outputs."""
    rng = random.Random(seed)
    heads = rng.choice([2, 4])
    values = dict(
        vocab_size=rng.choice([300, 512]),
        hidden_size=heads * rng.choice([8, 16]),
        intermediate_size=rng.choice([40, 72]),
        num_hidden_layers=rng.choice([4, 5, 7]),
        num_attention_heads=heads,
        global_attn_every_n_layers=rng.choice([2, 3]),
        local_attention=rng.choice([6, 8, 13, 20]),
        global_rope_theta=rng.choice([500.0, 10000.0, 160000.0]),
        local_rope_theta=rng.choice([50.0, 1000.0, 40000.0]),
        norm_eps=rng.choice([1e-5, 1e-6, 1e-3]),
        max_position_embeddings=256,
    )
    values.update(overrides)
    return ModelConfig(**values)


def hf_config(config: ModelConfig, attn_implementation: str = "eager", **extra) -> ModernBertConfig:
    hf = ModernBertConfig(**{**config.to_hf_dict(), **extra})
    hf._attn_implementation = attn_implementation
    return hf


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter (norm weights and the decoder bias too), so no parameter can be ignored silently."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
        elif name.endswith("bias"):
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.08 * torch.randn(p.shape, generator=gen))


def random_hf_model(
    config: ModelConfig, seed: int = 0, attn_implementation: str = "eager"
) -> ModernBertForMaskedLM:
    torch.manual_seed(seed)
    model = ModernBertForMaskedLM._from_config(hf_config(config), attn_implementation=attn_implementation)
    randomize_(model, seed)
    return model.eval()


def hf_state_dict(hf_model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in hf_model.state_dict().items() if k != "decoder.weight"}


def ours_from_hf(hf_model, config: ModelConfig, backend: str = "sdpa") -> MMBertForMaskedLM:
    config = ModelConfig(**{**config.to_dict(), "attn_backend": backend})
    model = MMBertForMaskedLM(config)
    model.load_state_dict(hf_state_dict(hf_model))
    return model.eval()


def padded_batch(vocab: int, lengths: list[int], seed: int = 0, low: int = 5):
    gen = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    ids = torch.randint(low, vocab, (len(lengths), seq), generator=gen)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


# ---- config ------------------------------------------------------------------------------------------------


def test_presets_match_the_published_architectures():
    small = ModelConfig.preset("mmbert-small")
    base = ModelConfig.preset("mmbert-base")
    assert (
        small.num_hidden_layers,
        small.hidden_size,
        small.intermediate_size,
        small.num_attention_heads,
    ) == (
        22,
        384,
        1152,
        6,
    )
    assert (base.hidden_size, base.num_attention_heads, base.head_dim, base.vocab_size) == (
        768,
        12,
        64,
        256000,
    )
    assert (base.global_attn_every_n_layers, base.local_attention, base.window_half) == (3, 128, 64)
    assert [i for i in range(22) if base.is_global_layer(i)] == [0, 3, 6, 9, 12, 15, 18, 21]
    # Parameter count of the published jhu-clsp/mmBERT-base checkpoint (model card): 307,786,240 unique parameters for base.
    assert base.num_parameters() == 307_786_240
    assert abs(small.num_parameters() - 140e6) < 1e6
    assert abs(base.num_parameters(include_embeddings=False) - 110e6) < 2e6  # "110M"
    tiny = ModelConfig.preset("tiny", attn_backend="eager")
    assert tiny.attn_backend == "eager" and tiny.num_hidden_layers >= 4


def test_model_parameter_count_matches_config():
    config = ModelConfig.preset("tiny")
    model = MMBertForMaskedLM(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()


def test_config_rejects_bad_values_with_names():
    with pytest.raises(ValueError, match="unknown model preset 'mmbert-huge'"):
        ModelConfig.preset("mmbert-huge")
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['hiden_size'\]"):
        ModelConfig.preset("tiny", hiden_size=3)
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        ModelConfig.preset("tiny", hidden_size=66)
    with pytest.raises(ValueError, match="attn_backend 'cuda' is not one of"):
        ModelConfig.preset("tiny", attn_backend="cuda")


def test_config_round_trips_through_dict_and_hf_dict():
    config = random_config(3, attn_backend="eager")
    assert ModelConfig.from_dict(config.to_dict()) == config
    back = ModelConfig.from_hf_dict(config.to_hf_dict(), attn_backend="eager")
    assert back == config
    with pytest.raises(ValueError, match="norm_bias=True"):
        ModelConfig.from_hf_dict({**config.to_hf_dict(), "norm_bias": True})


def test_state_dict_keys_equal_transformers():
    config = random_config(1)
    hf = ModernBertForMaskedLM._from_config(hf_config(config), attn_implementation="eager")
    ours = MMBertForMaskedLM(config)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != "decoder.weight"}
    assert ours_shapes == hf_shapes
    assert "model.layers.0.attn_norm.weight" not in ours_shapes
    assert "decoder.weight" not in ours_shapes and "decoder.bias" in ours_shapes


def test_init_is_truncated_normal_with_scaled_output_projections():
    config = ModelConfig.preset("tiny", hidden_size=128, intermediate_size=256, num_hidden_layers=8)
    model = MMBertForMaskedLM(config)
    emb = model.model.embeddings.tok_embeddings.weight
    assert emb.abs().max() <= 2 * 0.02 + 1e-6  # cut at 2 std
    assert abs(emb.std().item() - 0.02 * 0.88) < 0.002  # std of N(0, s) truncated at 2s is 0.88 s
    wo = torch.cat([layer.attn.Wo.weight.flatten() for layer in model.model.layers])
    out_std = 0.02 / (2 * 8) ** 0.5
    assert wo.abs().max() <= 2 * out_std + 1e-6
    assert abs(wo.std().item() - out_std * 0.88) < out_std * 0.05
    assert torch.equal(model.decoder.bias, torch.zeros_like(model.decoder.bias))


# ---- parity with transformers -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_logits_match_transformers_eager(seed, backend):
    config = random_config(seed)
    assert config.num_hidden_layers > 3
    hf = random_hf_model(config, seed)
    ours = ours_from_hf(hf, config, backend)
    window = config.local_attention
    # Right-padded rows of different lengths, all longer than the local window (so local layers mask something).
    lengths = [3 * window + 7, 2 * window + 1, window + 3, 5 * window]
    ids, mask = padded_batch(config.vocab_size, lengths, seed)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask).logits
    assert got.shape == expected.shape == (len(lengths), max(lengths), config.vocab_size)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))  # padding positions are zeros


def test_sparse_logits_and_loss_match_transformers_sparse_prediction():
    config = random_config(4)
    hf = random_hf_model(config, 4)
    hf.sparse_prediction = True
    ours = ours_from_hf(hf, config)
    ids, mask = padded_batch(config.vocab_size, [40, 25, 33], 4)
    gen = torch.Generator().manual_seed(0)
    labels = torch.where(
        (torch.rand(ids.shape, generator=gen) < 0.3) & mask.bool(),
        torch.randint(5, 300, ids.shape, generator=gen),
        -100,
    )
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, mask, labels=labels)
    n_labelled = int((labels != -100).sum())
    assert got.logits.shape == (n_labelled, config.vocab_size) == expected.logits.shape
    assert (got.logits - expected.logits).abs().max().item() <= 1e-4
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5
    assert isinstance(got, MaskedLMOutput) and got["loss"] is got.loss


# ---- batch forms --------------------------------------------------------------------------------------------


def test_packed_rows_and_flat_form_equal_each_document_alone():
    config = random_config(5)
    model = MMBertForMaskedLM(config).eval()
    randomize_(model, 5)
    window = config.local_attention
    docs_per_row = [[2 * window + 3, window - 1, 9], [3 * window + 1], [5, 7, window + 4, 2]]
    gen = torch.Generator().manual_seed(1)
    docs = [[torch.randint(5, config.vocab_size, (n,), generator=gen) for n in row] for row in docs_per_row]
    width = max(sum(row) for row in docs_per_row) + 3
    ids = torch.zeros(len(docs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    doc_lens = torch.zeros(len(docs), 4, dtype=torch.int32)
    for r, row in enumerate(docs):
        flat = torch.cat(row)
        ids[r, : flat.numel()] = flat
        mask[r, : flat.numel()] = 1
        doc_lens[r, : len(row)] = torch.tensor([d.numel() for d in row])
    with torch.no_grad():
        alone = [model(d[None]).logits[0] for row in docs for d in row]
        packed = model(ids, mask, doc_lens=doc_lens).logits
        all_docs = torch.cat([d for row in docs for d in row])
        cu = torch.tensor([0] + [d.numel() for row in docs for d in row]).cumsum(0).to(torch.int32)
        flat = model(all_docs, cu_seqlens=cu).logits
    assert packed.shape == (3, width, config.vocab_size)
    assert flat.shape == (all_docs.numel(), config.vocab_size)
    expected = torch.cat(alone)
    assert (packed[mask.bool()] - expected).abs().max().item() <= 1e-4
    assert (flat - expected).abs().max().item() <= 1e-4
    # Without doc_lens the same rows are single long documents: the outputs must differ.
    with torch.no_grad():
        unpacked = model(ids, mask).logits
    assert (unpacked[mask.bool()] - expected).abs().max().item() > 1e-3


def test_full_logits_with_and_without_grad_agree():
    config = ModelConfig.preset("tiny")
    model = MMBertForMaskedLM(config)
    ids, mask = padded_batch(config.vocab_size, [30, 12, 1], 7)
    with torch.no_grad():
        fast = model(ids, mask).logits  # written row by row into the padded grid
    with_grad = model(ids, mask).logits
    assert (fast - with_grad.detach()).abs().max().item() <= 1e-6
    assert torch.equal(fast[~mask.bool()], torch.zeros_like(fast[~mask.bool()]))
    with_grad[mask.bool()].sum().backward()
    assert model.model.embeddings.tok_embeddings.weight.grad is not None


def test_labels_in_packed_rows_select_the_labelled_tokens_in_row_major_order():
    config = ModelConfig.preset("tiny", attn_backend="sdpa")
    model = MMBertForMaskedLM(config).eval()
    ids, mask = padded_batch(config.vocab_size, [30, 20], 2)
    doc_lens = torch.tensor([[10, 20], [20, 0]], dtype=torch.int32)
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[0, 15], labels[1, 0] = 7, 8, 9
    with torch.no_grad():
        full = model(ids, mask, doc_lens=doc_lens).logits
        sparse = model(ids, mask, labels, doc_lens=doc_lens)
    expected = torch.stack([full[0, 3], full[0, 15], full[1, 0]])
    assert (sparse.logits - expected).abs().max().item() <= 1e-5
    ref_loss = torch.nn.functional.cross_entropy(expected, torch.tensor([7, 8, 9]))
    assert abs(sparse.loss.item() - ref_loss.item()) <= 1e-5


def test_no_labelled_token_gives_zero_loss_attached_to_the_graph():
    model = MMBertForMaskedLM(ModelConfig.preset("tiny"))
    ids, mask = padded_batch(512, [12, 9])
    out = model(ids, mask, labels=torch.full_like(ids, -100))
    assert out.logits.shape == (0, 512) and out.loss.item() == 0.0
    out.loss.backward()


# ---- bad input ----------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    config = ModelConfig.preset("tiny", max_position_embeddings=64)
    model = MMBertForMaskedLM(config)
    ids, mask = padded_batch(512, [20, 10])
    with pytest.raises(ValueError, match=r"token id 512 is outside the vocabulary \[0, 512\)"):
        model(ids.masked_fill(ids == ids[0, 3], 512), mask)
    with pytest.raises(
        ValueError, match="a document of 65 tokens is longer than max_position_embeddings \\(64\\)"
    ):
        model(torch.randint(5, 500, (1, 65)))
    with pytest.raises(ValueError, match="doc_lens row 1 sums to 9 but attention_mask marks 10 real tokens"):
        model(ids, mask, doc_lens=torch.tensor([[20, 0], [4, 5]], dtype=torch.int32))
    with pytest.raises(ValueError, match="right-padded"):
        model(ids, mask.flip(1))
    with pytest.raises(ValueError, match="labels mark a padding position"):
        model(ids, mask, labels=torch.ones_like(ids))
    with pytest.raises(ValueError, match="the batch holds no real token"):
        model(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        model(ids[0], cu_seqlens=torch.tensor([0, 5, 19], dtype=torch.int32))


# ---- training ------------------------------------------------------------------------------------------------


def test_gradients_flow_to_every_parameter_and_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", attn_backend="sdpa")
    model = MMBertForMaskedLM(config).train()
    ids, mask = padded_batch(config.vocab_size, [48, 40, 30, 20], 3)
    gen = torch.Generator().manual_seed(3)
    labels = torch.where((torch.rand(ids.shape, generator=gen) < 0.3) & mask.bool(), ids, -100)
    inputs = ids.masked_fill(labels != -100, config.mask_token_id)
    out = model(inputs, mask, labels)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = out.loss.item()
    opt.step()
    for _ in range(7):
        opt.zero_grad()
        loss = model(inputs, mask, labels).loss
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
