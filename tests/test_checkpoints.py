"""Checkpoint I/O: HF directories (safetensors / .bin, with / without decoder.weight), Composer FlexBert
checkpoints written by a real Composer Trainer, our own Composer checkpoints, export to transformers, errors."""

from __future__ import annotations

import fractions
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_model import padded_batch, random_config, random_hf_model
from torch import nn
from transformers import AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel

from mmbert_train.checkpoints import CheckpointError, load_pickle, open_state_dict, read_model_config
from mmbert_train.model import MMBertForMaskedLM, ModelConfig, load_pretrained, save_pretrained


def hf_logits(hf, ids, mask):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).logits


def our_logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, mask).logits


def assert_same_logits(got, expected, mask):
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def reference():
    """A random transformers ModernBertForMaskedLM, its config and a padded batch."""
    config = random_config(11, num_hidden_layers=4)
    hf = random_hf_model(config, 11)
    ids, mask = padded_batch(config.vocab_size, [3 * config.local_attention, config.local_attention + 2], 11)
    return config, hf, ids, mask, hf_logits(hf, ids, mask)


# ---- Hugging Face directories -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("with_decoder_weight", [False, True])
def test_load_hf_directory(tmp_path, reference, fmt, with_decoder_weight):
    config, hf, ids, mask, expected = reference
    hf.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    # transformers drops the tied weight from safetensors but 4.x keeps it in .bin; published files have both
    # variants. The .bin is written with torch.save: transformers 5 ignores save_pretrained(safe_serialization=False).
    state.pop("decoder.weight", None)
    if with_decoder_weight:
        state["decoder.weight"] = state["model.embeddings.tok_embeddings.weight"].clone()
    if fmt == "safetensors":
        save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    else:
        (tmp_path / "model.safetensors").unlink()
        torch.save(state, tmp_path / "pytorch_model.bin")
    model = load_pretrained(tmp_path, attn_backend="sdpa")
    assert model.config == ModelConfig(**{**config.to_dict(), "attn_backend": "sdpa"})
    assert_same_logits(our_logits(model, ids, mask), expected, mask)
    lazy = open_state_dict(tmp_path)
    assert "decoder.weight" not in lazy and not isinstance(lazy, dict)
    assert set(lazy) == set(model.state_dict())


def test_read_model_config_overrides_fields(tmp_path, reference):
    config, hf, *_ = reference
    hf.config.save_pretrained(tmp_path)
    got = read_model_config(tmp_path, local_rope_theta=123.0, local_attention=32)
    assert (got.local_rope_theta, got.local_attention) == (123.0, 32)
    assert got.global_rope_theta == config.global_rope_theta and got.norm_eps == config.norm_eps


# ---- export --------------------------------------------------------------------------------------------------


def test_save_pretrained_loads_in_transformers_with_same_outputs(tmp_path, reference):
    config, hf, ids, mask, expected = reference
    ours = MMBertForMaskedLM(ModelConfig(**{**config.to_dict(), "attn_out_dropout": 0.1, "mlp_dropout": 0.1}))
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k != "decoder.weight"})
    out = save_pretrained(ours.eval(), tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary leftovers
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["ModernBertForMaskedLM"] and saved["model_type"] == "modernbert"
    for field in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "global_attn_every_n_layers",
        "local_attention",
        "global_rope_theta",
        "local_rope_theta",
        "norm_eps",
        "max_position_embeddings",
        "pad_token_id",
        "eos_token_id",
        "bos_token_id",
        "initializer_range",
        "initializer_cutoff_factor",
    ):
        assert saved[field] == getattr(config, field), field
    assert saved["cls_token_id"] == config.bos_token_id and saved["sep_token_id"] == config.eos_token_id
    assert saved["attention_dropout"] == saved["mlp_dropout"] == saved["embedding_dropout"] == 0.0
    assert "decoder.weight" not in load_file(out / "model.safetensors")

    reloaded = AutoModelForMaskedLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(reloaded).__name__ == "ModernBertForMaskedLM"
    assert_same_logits(hf_logits(reloaded, ids, mask), expected, mask)
    # ... and back into our model.
    assert_same_logits(our_logits(load_pretrained(out), ids, mask), expected, mask)


def test_save_pretrained_writes_a_tokenizer_and_replaces_an_existing_export(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "hello", "world"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    model = MMBertForMaskedLM(ModelConfig.preset("tiny", vocab_size=8))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "stale.txt").write_text("old")
    out = save_pretrained(model, tmp_path / "export", tokenizer=tok)
    assert not (out / "stale.txt").exists()
    loaded = AutoTokenizer.from_pretrained(out)
    assert (loaded.mask_token, loaded.pad_token_id, loaded.cls_token, loaded.sep_token) == (
        "<mask>",
        0,
        "<bos>",
        "<eos>",
    )
    assert loaded("hello world")["input_ids"] == [5, 6]


def test_failed_export_leaves_no_output(tmp_path):
    model = MMBertForMaskedLM(ModelConfig.preset("tiny"))
    with pytest.raises(TypeError, match="tokenizer must be"):
        save_pretrained(model, tmp_path / "export", tokenizer=42)
    assert list(tmp_path.iterdir()) == []


# ---- bad checkpoints -------------------------------------------------------------------------------------------


def test_directory_without_weights_or_config(tmp_path, reference):
    config, hf, *_ = reference
    hf.config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_pretrained(tmp_path / "missing")


def test_missing_unexpected_and_wrongly_shaped_keys_are_named(tmp_path, reference):
    config, hf, *_ = reference
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    good = load_file(weights)

    def write(state):
        save_file(state, weights, metadata={"format": "pt"})

    write({k: v for k, v in good.items() if k != "model.layers.2.mlp.Wo.weight"})
    with pytest.raises(CheckpointError, match=r"missing keys \['model.layers.2.mlp.Wo.weight'\]"):
        load_pretrained(tmp_path)
    write({**good, "model.layers.9.attn.extra": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \['model.layers.9.attn.extra'\]"):
        load_pretrained(tmp_path)
    h = config.hidden_size
    write({**good, "head.dense.weight": torch.zeros(h, h + 1)})
    with pytest.raises(
        CheckpointError,
        match=rf"head.dense.weight: checkpoint has shape \({h}, {h + 1}\), the model expects \({h}, {h}\)",
    ):
        load_pretrained(tmp_path)


# ---- Composer checkpoints ----------------------------------------------------------------------------------------


class FlexBertConfig(PretrainedConfig):
    """Stand-in for ModernBERT's FlexBertConfig: only the keys our loader reads, under FlexBert's names."""

    model_type = "flex_bert"


class _Node(nn.Module):
    pass


class FlexBertLike(PreTrainedModel):
    """A module whose attribute names reproduce ModernBERT's FlexBertForMaskedLM (the training model)."""

    config_class = FlexBertConfig

    def __init__(self, config: FlexBertConfig):
        super().__init__(config)
        h, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
        self.bert = _Node()
        self.bert.embeddings = _Node()
        self.bert.embeddings.tok_embeddings = nn.Embedding(v, h)
        self.bert.embeddings.norm = nn.LayerNorm(h, bias=False)
        self.bert.encoder = _Node()
        self.bert.encoder.layers = nn.ModuleList()
        for n in range(config.num_hidden_layers):
            layer = _Node()
            layer.attn_norm = nn.Identity() if n == 0 else nn.LayerNorm(h, bias=False)
            layer.attn = _Node()
            layer.attn.Wqkv = nn.Linear(h, 3 * h, bias=False)
            layer.attn.Wo = nn.Linear(h, h, bias=False)
            layer.mlp_norm = nn.LayerNorm(h, bias=False)
            layer.mlp = _Node()
            layer.mlp.Wi = nn.Linear(h, 2 * i, bias=False)
            layer.mlp.Wo = nn.Linear(i, h, bias=False)
            self.bert.encoder.layers.append(layer)
        self.bert.final_norm = nn.LayerNorm(h, bias=False)
        self.head = _Node()
        self.head.dense = nn.Linear(h, h, bias=False)
        self.head.norm = nn.LayerNorm(h, bias=False)
        self.decoder = nn.Linear(h, v)
        self.decoder.weight = self.bert.embeddings.tok_embeddings.weight

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden = self.bert.embeddings.norm(self.bert.embeddings.tok_embeddings(input_ids))
        logits = self.decoder(self.head.norm(self.head.dense(hidden)))
        return {"loss": nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()), "logits": logits}


def _flexbert_weights_from_hf(hf_state: dict, num_layers: int) -> dict:
    """FlexBert module key -> tensor, with every name written out by hand (not by the loader's mapping)."""
    out = {
        "bert.embeddings.tok_embeddings.weight": hf_state["model.embeddings.tok_embeddings.weight"],
        "bert.embeddings.norm.weight": hf_state["model.embeddings.norm.weight"],
        "bert.final_norm.weight": hf_state["model.final_norm.weight"],
        "head.dense.weight": hf_state["head.dense.weight"],
        "head.norm.weight": hf_state["head.norm.weight"],
        "decoder.weight": hf_state["model.embeddings.tok_embeddings.weight"],
        "decoder.bias": hf_state["decoder.bias"],
    }
    for n in range(num_layers):
        if n > 0:
            out[f"bert.encoder.layers.{n}.attn_norm.weight"] = hf_state[f"model.layers.{n}.attn_norm.weight"]
        out[f"bert.encoder.layers.{n}.attn.Wqkv.weight"] = hf_state[f"model.layers.{n}.attn.Wqkv.weight"]
        out[f"bert.encoder.layers.{n}.attn.Wo.weight"] = hf_state[f"model.layers.{n}.attn.Wo.weight"]
        out[f"bert.encoder.layers.{n}.mlp_norm.weight"] = hf_state[f"model.layers.{n}.mlp_norm.weight"]
        out[f"bert.encoder.layers.{n}.mlp.Wi.weight"] = hf_state[f"model.layers.{n}.mlp.Wi.weight"]
        out[f"bert.encoder.layers.{n}.mlp.Wo.weight"] = hf_state[f"model.layers.{n}.mlp.Wo.weight"]
    return out


def _train_and_save(composer_model, path, callbacks=()):
    """One Composer Trainer batch with lr 0 (weights unchanged), then a real Composer checkpoint."""
    from composer import Trainer

    vocab = 50
    data = [
        {
            "input_ids": torch.randint(5, vocab, (8,)),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.randint(5, vocab, (8,)),
        }
        for _ in range(2)
    ]
    trainer = Trainer(
        model=composer_model,
        train_dataloader=torch.utils.data.DataLoader(data, batch_size=2),
        max_duration="1ba",
        optimizers=torch.optim.SGD(composer_model.parameters(), lr=0.0),
        callbacks=list(callbacks),
        progress_bar=False,
        log_to_console=False,
        loggers=[],
        device="cpu",
    )
    trainer.fit()
    trainer.save_checkpoint(str(path))
    trainer.close()
    return path


@pytest.fixture(scope="module")
def flexbert_checkpoint(tmp_path_factory, reference):
    from composer.models import HuggingFaceModel

    config, hf, *_ = reference
    flex_config = FlexBertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        global_attn_every_n_layers=config.global_attn_every_n_layers,
        sliding_window=config.local_attention,
        rotary_emb_base=config.global_rope_theta,
        local_attn_rotary_emb_base=config.local_rope_theta,
        norm_kwargs={"eps": config.norm_eps},
        max_position_embeddings=config.max_position_embeddings,
    )
    module = FlexBertLike(flex_config)
    module.load_state_dict(_flexbert_weights_from_hf(hf.state_dict(), config.num_hidden_layers), strict=True)
    path = tmp_path_factory.mktemp("flexbert") / "flexbert.pt"
    return _train_and_save(HuggingFaceModel(module, tokenizer=None, use_logits=True), path)


def test_composer_flexbert_checkpoint_has_flexbert_keys(flexbert_checkpoint, reference):
    config = reference[0]
    state = load_pickle(flexbert_checkpoint)["state"]
    keys = set(state["model"])
    assert {
        "model.bert.embeddings.tok_embeddings.weight",
        "model.bert.embeddings.norm.weight",
        "model.bert.encoder.layers.0.attn.Wqkv.weight",
        "model.bert.encoder.layers.1.attn_norm.weight",
        "model.bert.encoder.layers.3.mlp.Wi.weight",
        "model.bert.final_norm.weight",
        "model.head.dense.weight",
        "model.head.norm.weight",
        "model.decoder.weight",
        "model.decoder.bias",
    } <= keys
    assert "model.bert.encoder.layers.0.attn_norm.weight" not in keys
    content = state["integrations"]["huggingface"]["model"]["config"]["content"]
    assert content["sliding_window"] == config.local_attention
    assert content["rotary_emb_base"] == config.global_rope_theta


def test_load_composer_flexbert_checkpoint_matches_hf(flexbert_checkpoint, reference):
    config, hf, ids, mask, expected = reference
    model = load_pretrained(flexbert_checkpoint)  # weights_only + allow-list: no trust needed
    assert model.config == config
    assert_same_logits(our_logits(model, ids, mask), expected, mask)
    lazy = open_state_dict(flexbert_checkpoint)
    assert set(lazy) == set(model.state_dict())


def test_flexbert_checkpoint_without_config_needs_overrides(tmp_path, flexbert_checkpoint, reference):
    config, hf, ids, mask, expected = reference
    checkpoint = load_pickle(flexbert_checkpoint)
    del checkpoint["state"]["integrations"]
    bare = tmp_path / "bare.pt"
    torch.save(checkpoint, bare)
    with pytest.raises(
        CheckpointError, match=r"does not say \['num_attention_heads', .*'local_rope_theta'\]"
    ):
        load_pretrained(bare)
    overrides = {
        k: getattr(config, k)
        for k in ("num_attention_heads", "global_attn_every_n_layers", "local_attention", "global_rope_theta")
    }
    model = load_pretrained(
        bare,
        **overrides,
        local_rope_theta=config.local_rope_theta,
        norm_eps=config.norm_eps,
        max_position_embeddings=256,
    )
    assert_same_logits(our_logits(model, ids, mask), expected, mask)


def test_untrusted_pickle_is_refused_unless_trusted(tmp_path, flexbert_checkpoint, reference):
    config, hf, ids, mask, expected = reference
    checkpoint = load_pickle(flexbert_checkpoint)
    checkpoint["state"]["run_name"] = fractions.Fraction(1, 3)  # a type outside the allow-list
    odd = tmp_path / "odd.pt"
    torch.save(checkpoint, odd)
    with pytest.raises(
        CheckpointError, match=r"odd.pt: cannot be opened safely .*fractions.Fraction.*trust_pickle=True"
    ):
        load_pretrained(odd)
    with pytest.warns(UserWarning, match="full unpickling"):
        model = load_pretrained(odd, trust_pickle=True)
    assert_same_logits(our_logits(model, ids, mask), expected, mask)


def _composer_wrapper_and_recorder():
    """A ComposerModel holding MMBertForMaskedLM as ``.model`` and a stand-in for the trainer's
    ModelConfigRecorder callback (Composer keys callback state by the class's __qualname__)."""
    from composer.core import Callback
    from composer.models import ComposerModel

    class Wrapper(ComposerModel):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, batch):
            return self.model(batch["input_ids"], batch["attention_mask"], batch["labels"])

        def loss(self, outputs, batch):
            return outputs.loss

    class ModelConfigRecorder(Callback):
        def __init__(self, model_config):
            self.model_config = model_config

        def state_dict(self):
            return {"model_config": self.model_config.to_dict()}

    ModelConfigRecorder.__qualname__ = "ModelConfigRecorder"
    return Wrapper, ModelConfigRecorder


def test_load_our_composer_checkpoint(tmp_path, reference):
    config, hf, ids, mask, expected = reference
    Wrapper, ModelConfigRecorder = _composer_wrapper_and_recorder()
    ours = MMBertForMaskedLM(ModelConfig(**{**config.to_dict(), "attn_backend": "eager"}))
    ours.load_state_dict({k: v for k, v in hf.state_dict().items() if k != "decoder.weight"})
    path = _train_and_save(Wrapper(ours), tmp_path / "ours.pt", callbacks=[ModelConfigRecorder(ours.config)])
    state = load_pickle(path)["state"]
    assert "model.model.embeddings.tok_embeddings.weight" in state["model"]
    assert "model.decoder.bias" in state["model"]
    assert (
        state["callbacks"]["ModelConfigRecorder"]["model_config"]["local_attention"] == config.local_attention
    )
    model = load_pretrained(path)
    assert model.config.attn_backend == "eager" and model.config.local_rope_theta == config.local_rope_theta
    assert_same_logits(our_logits(model, ids, mask), expected, mask)
