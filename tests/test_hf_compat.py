"""Hugging Face compatibility across transformers generations: both config generations read and written, and the
mmBERT model card's snippets run on an export of ours with our logits.

transformers 4.x keeps the RoPE thetas in `global_rope_theta` / `local_rope_theta` and the layer pattern in
`global_attn_every_n_layers`; transformers 5 writes `rope_parameters` ({full_attention, sliding_attention}) and
`layer_types` only. Runs in whichever transformers the environment has (the pinned 4.57 and 5.x)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_model import padded_batch, random_config, random_hf_model
from tokenizers import Tokenizer

from data_prep.testing import make_tokenizer
from mmbert_train.checkpoints import CheckpointError, load_pretrained, read_model_config, save_pretrained
from mmbert_train.model import MMBertForMaskedLM, ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEGACY = ("global_rope_theta", "local_rope_theta", "rope_theta", "global_attn_every_n_layers")


def _transformers5_style(hf: dict) -> dict:
    """A config.json as transformers 5 saves a ModernBERT: thetas only in rope_parameters, plus layer_types."""
    return {k: v for k, v in hf.items() if k not in LEGACY}


def _legacy_style(hf: dict) -> dict:
    return {k: v for k, v in hf.items() if k not in ("rope_parameters", "layer_types")}


@pytest.fixture(scope="module")
def reference():
    """A transformers ModernBertForMaskedLM with global theta 160k, local 10k, and a padded batch."""
    config = random_config(5, num_hidden_layers=5, global_attn_every_n_layers=2, local_attention=8,
                           global_rope_theta=160000.0, local_rope_theta=10000.0)  # fmt: skip
    hf = random_hf_model(config, 5)
    ids, mask = padded_batch(config.vocab_size, [40, 23], 5)
    with torch.no_grad():
        logits = hf(input_ids=ids, attention_mask=mask).logits
    state = {k: v for k, v in hf.state_dict().items() if k != "decoder.weight"}
    return config, state, ids, mask, logits


def _write(tmp_path, hf_config: dict, state: dict):
    tmp_path.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors", {"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    return tmp_path


def _max_diff(model, ids, mask, expected) -> float:
    with torch.no_grad():
        got = model(ids, mask).logits
    real = mask.bool()
    return (got[real] - expected[real]).abs().max().item()


@pytest.mark.parametrize("style", ["transformers5", "legacy", "both"])
def test_each_config_generation_gives_transformers_logits(reference, tmp_path, style):
    config, state, ids, mask, expected = reference
    hf = config.to_hf_dict()
    hf = {"transformers5": _transformers5_style, "legacy": _legacy_style, "both": dict}[style](hf)
    model = load_pretrained(_write(tmp_path / "m", hf, state), attn_backend="eager")
    assert (model.config.global_rope_theta, model.config.local_rope_theta) == (160000.0, 10000.0)
    assert model.config.global_attn_every_n_layers == 2
    assert _max_diff(model, ids, mask, expected) <= 1e-4
    # the local theta matters on this batch: reading 160k for both (the old reader's mistake) is visibly off
    wrong = load_pretrained(tmp_path / "m", attn_backend="eager", local_rope_theta=160000.0)
    assert _max_diff(wrong, ids, mask, expected) > 1e-3


def test_legacy_defaults_follow_transformers():
    base = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 4,
            "num_attention_heads": 2, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
            "unk_token_id": 3, "mask_token_id": 4}  # fmt: skip
    # an absent local theta is transformers' default 10,000; null means "the global one"; rope_theta aliases global
    assert ModelConfig.from_hf_dict({**base, "global_rope_theta": 5e5}).local_rope_theta == 10000.0
    assert (
        ModelConfig.from_hf_dict({**base, "rope_theta": 5e5, "local_rope_theta": None}).local_rope_theta
        == 5e5
    )
    # one flat rope_parameters applies to every layer type
    flat = ModelConfig.from_hf_dict(
        {**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1234.0}}
    )
    assert (flat.global_rope_theta, flat.local_rope_theta) == (1234.0, 1234.0)
    only_full = {**base, "layer_types": ["full_attention"] + ["sliding_attention"] * 3}
    assert ModelConfig.from_hf_dict(only_full).global_attn_every_n_layers == 4  # any n >= 4: layer 0 only
    assert (
        ModelConfig.from_hf_dict({**only_full, "global_attn_every_n_layers": 7}).global_attn_every_n_layers
        == 7
    )


def test_config_generations_that_disagree_or_cannot_be_expressed_are_errors(reference, tmp_path):
    config, state, *_ = reference
    hf = config.to_hf_dict()
    bad = {**hf, "local_rope_theta": 160000.0}
    with pytest.raises(
        CheckpointError,
        match=r"config.json: the two config generations disagree on the local RoPE theta: "
        r"local_rope_theta=160000 but rope_parameters.sliding_attention.rope_theta=10000",
    ):
        read_model_config(_write(tmp_path / "a", bad, state))
    bad = {**hf, "global_attn_every_n_layers": 3}
    with pytest.raises(CheckpointError, match=r"disagree on the layer pattern: global_attn_every_n_layers=3"):
        read_model_config(_write(tmp_path / "b", bad, state))
    odd = ["sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    with pytest.raises(CheckpointError, match=r"layer_types \[.*\] cannot be expressed by this encoder"):
        read_model_config(_write(tmp_path / "c", {**_transformers5_style(hf), "layer_types": odd}, state))
    with pytest.raises(CheckpointError, match=r"layer_types must list 5 entries"):
        read_model_config(_write(tmp_path / "d", {**hf, "layer_types": ["full_attention"]}, state))
    scaled = {
        **hf,
        "rope_parameters": {**hf["rope_parameters"], "full_attention": {"rope_type": "yarn", "factor": 2}},
    }
    with pytest.raises(
        CheckpointError, match=r"rope_parameters.full_attention.rope_type='yarn' is not implemented"
    ):
        read_model_config(_write(tmp_path / "e", scaled, state))


# ---- an export of ours, as the model card uses it ------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    tokenizer_dir = make_tokenizer(root / "tokenizer")
    # the tokenizer as a transformers-5 environment saves it: a class and fields transformers 4 cannot read
    settings = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    settings.update(tokenizer_class="TokenizersBackend", is_local=True, local_files_only=False)
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(settings))
    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    config = ModelConfig.preset("tiny", vocab_size=vocab, global_rope_theta=160000.0, local_rope_theta=10000.0,
                                local_attention=8, global_attn_every_n_layers=2, attn_backend="eager")  # fmt: skip
    torch.manual_seed(1)
    model = MMBertForMaskedLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return save_pretrained(model, root / "export", tokenizer=tokenizer_dir), model


SENTENCES = ["Hello world, this is a longer English sentence.", "Bonjour le monde.", "Hola, mundo"]


def test_export_writes_both_config_generations_and_a_portable_tokenizer(exported):
    out, model = exported
    hf = json.loads((out / "config.json").read_text())
    assert (hf["global_rope_theta"], hf["local_rope_theta"], hf["global_attn_every_n_layers"]) == (
        160000.0,
        10000.0,
        2,
    )
    assert hf["rope_parameters"] == {
        "full_attention": {"rope_type": "default", "rope_theta": 160000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    assert hf["layer_types"] == ["full_attention", "sliding_attention"] * 2
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert settings["model_input_names"] == ["input_ids", "attention_mask"]
    assert not {"is_local", "local_files_only", "name_or_path"} & set(settings)
    from transformers import AutoConfig, AutoTokenizer

    # what the installed transformers reads back: the same thetas and layer types, whichever generation it is
    loaded = AutoConfig.from_pretrained(out)
    if getattr(loaded, "rope_parameters", None) and "full_attention" in loaded.rope_parameters:
        thetas = tuple(
            loaded.rope_parameters[k]["rope_theta"] for k in ("full_attention", "sliding_attention")
        )
        assert thetas == (160000.0, 10000.0) and loaded.layer_types == hf["layer_types"]
    else:
        assert (loaded.global_rope_theta, loaded.local_rope_theta) == (160000.0, 10000.0)
        assert loaded.global_attn_every_n_layers == 2
    tok = AutoTokenizer.from_pretrained(out)
    assert set(tok("Hello world")) == {"input_ids", "attention_mask"}
    assert (tok.mask_token_id, tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (4, 0, 2, 1)


def _our_logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, mask).logits


def test_card_usage_with_automodel(exported):
    from transformers import AutoModel, AutoTokenizer

    out, model = exported
    tok = AutoTokenizer.from_pretrained(out)
    inputs = tok("Hello world", return_tensors="pt")
    outputs = AutoModel.from_pretrained(out)(**inputs)
    hidden = outputs.last_hidden_state
    assert hidden.shape == (1, inputs["input_ids"].shape[1], model.config.hidden_size)
    # the MLM head applied by hand to the encoder output gives our logits: LayerNorm(gelu(dense h)), E x + b
    state = model.state_dict()
    x = torch.nn.functional.gelu(hidden @ state["head.dense.weight"].T)
    x = torch.nn.functional.layer_norm(
        x, (x.shape[-1],), state["head.norm.weight"], eps=model.config.norm_eps
    )
    logits = x @ state["model.embeddings.tok_embeddings.weight"].T + state["decoder.bias"]
    expected = _our_logits(model, inputs["input_ids"], inputs["attention_mask"])
    assert torch.allclose(logits.detach(), expected, atol=1e-4)


def test_card_cross_lingual_embeddings_on_a_padded_batch(exported):
    from transformers import AutoModel, AutoTokenizer

    out, _ = exported
    tok = AutoTokenizer.from_pretrained(out)
    encoder = AutoModel.from_pretrained(out)

    def embed(texts):
        inputs = tok(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    batch = embed(SENTENCES)
    assert batch.shape == (3, encoder.config.hidden_size)
    lengths = [len(tok(s)["input_ids"]) for s in SENTENCES]
    assert len(set(lengths)) == 3  # the batch is padded
    for i, sentence in enumerate(SENTENCES):  # padding changes nothing: each equals the sentence alone
        assert torch.allclose(batch[i], embed([sentence])[0], atol=1e-5)
    similarity = torch.nn.functional.cosine_similarity(batch[:1], batch[1:])
    assert similarity.shape == (2,)


def test_card_masked_lm_and_fill_mask_pipeline(exported):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    out, model = exported
    tok = AutoTokenizer.from_pretrained(out)
    mlm = AutoModelForMaskedLM.from_pretrained(out)
    text = f"Bonjour le {tok.mask_token}."
    inputs = tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = mlm(**inputs).logits
    position = int((inputs["input_ids"][0] == tok.mask_token_id).nonzero())
    expected = _our_logits(model, inputs["input_ids"], inputs["attention_mask"])
    assert torch.allclose(logits[0, position], expected[0, position], atol=1e-4)

    fill = pipeline("fill-mask", model=str(out), device="cpu")
    top = torch.softmax(expected[0, position], -1).topk(3)
    predictions = fill(text, top_k=3)
    assert [p["token"] for p in predictions] == top.indices.tolist()
    assert [p["score"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-5)
