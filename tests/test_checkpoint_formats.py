"""Every command reads every checkpoint format: one model written as a Hugging Face directory (safetensors,
sharded safetensors, pytorch_model.bin), a FlexBert Composer .pt, one of our Composer .pt files and a sharded
(DCP) directory, then read back by load_pretrained, train's init_from, eval-mlm, export, merge and fill-mask.
Also what each does with a damaged input or an output that would replace its input, and with a tokenizer
that is not the model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoints import _flexbert_weights_from_hf
from tokenizers import Tokenizer

from data_prep.testing import make_tokenizer
from mmbert_train.checkpoints import CheckpointError, detect_format, load_pretrained, open_checkpoint
from mmbert_train.checkpoints.testing import write_composer_checkpoint, write_dcp_checkpoint
from mmbert_train.commands.export import export, fill_mask_main
from mmbert_train.commands.export import main as export_main
from mmbert_train.commands.merge import main as merge_main
from mmbert_train.model import MMBertForMaskedLM, ModelConfig, save_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FORMATS = ["hf", "sharded", "bin", "flexbert", "ours", "dcp"]
DETECTED = {
    "hf": "hf-safetensors",
    "sharded": "hf-sharded-safetensors",
    "bin": "hf-bin",
    "flexbert": "composer",
    "ours": "composer",
    "dcp": "dcp",
}


def _write_sharded(out: Path, state: dict, config_json: Path) -> Path:
    """Two safetensors shards and the index transformers writes for them (``weight_map``: key -> file)."""
    out.mkdir()
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, out / name, metadata={"format": "pt"})
    weight_map = {k: name for name, part in halves.items() for k in part}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_bytes(config_json.read_bytes())
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    tokenizer_dir = make_tokenizer(root / "tokenizer", vocab_size=512)
    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    # non-default thetas, window and layer pattern: a reader that dropped any of them would change the logits
    config = ModelConfig.preset(
        "tiny", vocab_size=vocab, global_rope_theta=160000.0, local_rope_theta=10000.0, local_attention=8,
        global_attn_every_n_layers=2, attn_backend="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    model = MMBertForMaskedLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    paths = {"hf": save_pretrained(model, root / "hf", tokenizer=tokenizer_dir)}
    paths["sharded"] = _write_sharded(root / "sharded", state, paths["hf"] / "config.json")
    (root / "bin").mkdir()
    # written with torch.save (transformers 5 ignores save_pretrained(safe_serialization=False)); with the tied
    # decoder.weight, as transformers 4 writes .bin files
    torch.save({**state, "decoder.weight": state["model.embeddings.tok_embeddings.weight"]},
               root / "bin" / "pytorch_model.bin")  # fmt: skip
    (root / "bin" / "config.json").write_bytes((paths["hf"] / "config.json").read_bytes())
    paths["bin"] = root / "bin"
    flex_content = {
        "vocab_size": vocab, "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        "global_attn_every_n_layers": 2, "sliding_window": 8, "rotary_emb_base": 160000.0,
        "local_attn_rotary_emb_base": 10000.0, "norm_kwargs": {"eps": config.norm_eps},
        "max_position_embeddings": config.max_position_embeddings,
    }  # fmt: skip
    flex_state = {
        "model." + k: v for k, v in _flexbert_weights_from_hf(state, config.num_hidden_layers).items()
    }
    paths["flexbert"] = root / "flexbert-ext.pt"
    torch.save(
        {"state": {"model": flex_state, "integrations": {"huggingface": {"model": {"config": {"content": flex_content}}}}}},
        paths["flexbert"],
    )  # fmt: skip
    paths["ours"] = write_composer_checkpoint(root / "ep0-ba10-rank0.pt", config, state)
    paths["dcp"] = write_dcp_checkpoint(root / "ep0-ba10", config, state)
    return {
        "root": root,
        "model": model,
        "config": config,
        "state": state,
        "tokenizer": tokenizer_dir,
        **paths,
    }


def _same_weights(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key].float(), want[key].float()), key


@pytest.mark.parametrize("kind", FORMATS)
def test_load_pretrained_and_open_checkpoint_read_every_format(setup, kind):
    assert detect_format(setup[kind]) == DETECTED[kind]
    model = load_pretrained(setup[kind], attn_backend="sdpa")
    assert model.config == setup["config"]
    _same_weights(model.state_dict(), setup["state"])
    lazy = open_checkpoint(setup[kind]).weights
    assert not isinstance(lazy, dict) and "decoder.weight" not in lazy


@pytest.mark.parametrize("kind", FORMATS)
def test_export_and_fill_mask_read_every_format(setup, kind, tmp_path, capsys):
    out = export(setup[kind], tmp_path / "export", tokenizer=setup["tokenizer"])
    _same_weights(load_file(out / "model.safetensors"), setup["state"])
    assert ModelConfig.from_hf_dict(json.loads((out / "config.json").read_text())) == ModelConfig(
        **{**setup["config"].to_dict(), "attn_backend": "auto"}
    )
    text = "Hello <mask>."
    assert fill_mask_main([str(setup[kind]), text, "--tokenizer", str(setup["tokenizer"]), "--json"]) == 0
    (predictions,) = json.loads(capsys.readouterr().out)
    ids = torch.tensor([Tokenizer.from_file(str(setup["tokenizer"] / "tokenizer.json")).encode(text).ids])
    position = int((ids[0] == setup["config"].mask_token_id).nonzero())
    with torch.no_grad():
        top = torch.softmax(setup["model"](ids, torch.ones_like(ids)).logits[0, position], -1).topk(5)
    assert [p["token"] for p in predictions] == top.indices.tolist()
    assert [p["score"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-5)


@pytest.mark.parametrize("kind", FORMATS)
def test_merge_reads_every_format(setup, kind, tmp_path):
    # a linear merge of a checkpoint with itself is that checkpoint
    out = tmp_path / "merged"
    args = ["--method", "linear", "--models", str(setup[kind]), str(setup[kind]), "--out", str(out)]
    assert merge_main([*args, "--no-progress"]) == 0
    _same_weights(load_file(out / "model.safetensors"), setup["state"])
    assert ModelConfig.from_hf_dict(json.loads((out / "config.json").read_text())).local_rope_theta == 10000.0


@pytest.mark.parametrize("kind", FORMATS)
def test_train_init_from_reads_every_format(setup, kind, tmp_path):
    from test_train import make_recipe

    from mmbert_train.train.trainer import build_model

    recipe = make_recipe(
        tmp_path,
        overrides=[
            f"init_from.path={setup[kind]}",
            "init_from.load_optimizer_state=false",
            f"model.vocab_size={setup['config'].vocab_size}",
        ],
    )
    model, optim_state = build_model(recipe)
    _same_weights(model.state_dict(), setup["state"])
    assert (model.config.global_rope_theta, model.config.local_rope_theta) == (160000.0, 10000.0)
    assert optim_state is None


@pytest.mark.parametrize("kind", FORMATS)
def test_eval_mlm_reads_every_format(setup, kind, mds_root, capsys):
    from mmbert_train.commands.eval_mlm import main as eval_main

    args = ["--data", str(mds_root), "--languages", "eng", "--max-seq-len", "16", "--no-progress"]
    assert eval_main([str(setup[kind]), *args]) == 0
    report = capsys.readouterr().out
    assert eval_main([str(setup["hf"]), *args]) == 0
    assert capsys.readouterr().out == report  # the same model: the same scores


@pytest.fixture(scope="module")
def mds_root(setup, tmp_path_factory):
    from data_prep.testing import make_raw_corpus
    from data_prep.tokenize import plan_raw, run_tokenize

    root = tmp_path_factory.mktemp("mds")
    raw = make_raw_corpus(root / "raw", repeat=1)
    run_tokenize(
        plan_raw(raw), root / "mds", str(setup["tokenizer"]), max_seq_len=32, heldout_fraction=0.3,
        progress=False, log=lambda _: None,
    )  # fmt: skip
    return root / "mds"


# ---- damaged inputs --------------------------------------------------------------------------------------------


def _truncated_copy(src: Path, dest: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])
    return dest


def test_truncated_safetensors_is_a_checkpoint_error_naming_the_file(setup, tmp_path, capsys, mds_root):
    from mmbert_train.commands.eval_mlm import main as eval_main

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((setup["hf"] / "config.json").read_bytes())
    _truncated_copy(setup["hf"] / "model.safetensors", broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"broken/model.safetensors: truncated: tensor .* ends at byte"):
        load_pretrained(broken)
    assert export_main([str(broken), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "model.safetensors: truncated" in err and "SafetensorError" not in err
    args = ["--data", str(mds_root), "--languages", "eng", "--no-progress"]
    assert eval_main([str(broken), *args]) == 2
    assert "model.safetensors: truncated" in capsys.readouterr().err
    # cut inside the header
    _truncated_copy(setup["hf"] / "model.safetensors", broken / "model.safetensors", keep=0.0001)
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_pretrained(broken)


def test_truncated_pt_says_truncated_not_trust_pickle(setup, tmp_path, capsys):
    cut = _truncated_copy(setup["ours"], tmp_path / "ep0-ba10-rank0.pt")
    with pytest.raises(
        CheckpointError, match=r"ep0-ba10-rank0.pt: truncated or not a PyTorch checkpoint"
    ) as info:
        load_pretrained(cut)
    assert "trust_pickle" not in str(info.value)
    assert export_main([str(cut), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "truncated or not a PyTorch checkpoint" in err and "trust_pickle" not in err
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint at all\n")
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_pretrained(text)


def test_sharded_checkpoint_with_a_missing_shard_or_metadata_is_named(setup, tmp_path):
    import shutil

    broken = shutil.copytree(setup["dcp"], tmp_path / "ep0-ba10")
    for shard in broken.glob("*.distcp"):
        shard.unlink()
    with pytest.raises(CheckpointError, match=r"ep0-ba10: cannot read .* \(a shard missing or truncated\?\)"):
        load_pretrained(broken)
    (broken / ".metadata").unlink()
    with pytest.raises(CheckpointError, match="ep0-ba10: not a checkpoint directory"):
        load_pretrained(broken)


def test_fill_mask_on_a_checkpoint_without_tokenizer_is_a_clear_error(setup, capsys):
    assert fill_mask_main([str(setup["ours"]), "Hello <mask>."]) == 1
    err = capsys.readouterr().err
    assert "no tokenizer next to this checkpoint; pass --tokenizer" in err and "AttributeError" not in err


def test_a_directory_that_is_no_checkpoint_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: not a checkpoint directory \(expected a Hugging Face"):
        load_pretrained(tmp_path / "empty")


# ---- outputs that would replace an input ---------------------------------------------------------------------


def test_merge_refuses_an_output_that_is_an_input(setup, tmp_path, capsys):
    base = tmp_path / "base.pt"
    base.write_bytes(setup["ours"].read_bytes())
    before = base.read_bytes()
    common = ["--method", "ties", "--base", str(base), "--models", str(setup["hf"]), "--no-progress"]
    assert merge_main([*common, "--out", str(base), "--overwrite"]) == 1
    assert "is the base" in capsys.readouterr().err
    assert base.is_file() and base.read_bytes() == before
    hf = tmp_path / "hf"
    hf.mkdir()
    for f in setup["hf"].iterdir():
        (hf / f.name).write_bytes(f.read_bytes())
    listing = sorted(p.name for p in hf.iterdir())
    assert merge_main([*common[:-2], str(hf), "--no-progress", "--out", str(hf), "--overwrite"]) == 1
    assert "is the models[0]" in capsys.readouterr().err
    assert merge_main([*common, "--out", str(tmp_path), "--overwrite"]) == 1  # a folder holding the inputs
    assert "contains the base" in capsys.readouterr().err
    assert sorted(p.name for p in hf.iterdir()) == listing and base.read_bytes() == before
    # through a symlink (latest-rank0.pt) too
    (tmp_path / "latest-rank0.pt").symlink_to(base)
    assert merge_main([*common, "--out", str(tmp_path / "latest-rank0.pt"), "--overwrite"]) == 1
    assert base.read_bytes() == before


def test_export_refuses_an_output_that_is_its_input(setup, tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    for f in setup["hf"].iterdir():
        (hf / f.name).write_bytes(f.read_bytes())
    assert export_main([str(hf), "--out", str(hf), "--overwrite"]) == 1
    assert "is the checkpoint" in capsys.readouterr().err
    assert (hf / "model.safetensors").read_bytes() == (setup["hf"] / "model.safetensors").read_bytes()


# ---- tokenizers that do not fit the model --------------------------------------------------------------------


def test_export_and_merge_refuse_a_tokenizer_of_another_vocabulary(setup, tmp_path, capsys):
    size = setup["config"].vocab_size  # the tokenizer's
    big = save_pretrained(MMBertForMaskedLM(ModelConfig.preset("tiny", vocab_size=1024)), tmp_path / "big")
    tokenizer = str(setup["tokenizer"])
    assert export_main([str(big), "--out", str(tmp_path / "o"), "--tokenizer", tokenizer]) == 1
    assert f"has {size} tokens but the model's vocab_size is 1024" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    args = ["--method", "linear", "--models", str(big), "--out", str(tmp_path / "m"), "--no-progress"]
    assert merge_main([*args, "--tokenizer", tokenizer]) == 1
    assert f"has {size} tokens but the model's vocab_size is 1024" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    # a model whose vocabulary is the tokenizer's padded to a multiple of 64 is fine
    padded = -(-size // 64) * 64
    assert padded > size
    fits = save_pretrained(
        MMBertForMaskedLM(ModelConfig.preset("tiny", vocab_size=padded)), tmp_path / "fits"
    )
    assert export_main([str(fits), "--out", str(tmp_path / "o"), "--tokenizer", tokenizer]) == 0


def test_export_refuses_a_tokenizer_whose_special_ids_differ(setup, tmp_path, capsys):
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in setup["tokenizer"].iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    settings = json.loads((moved / "tokenizer_config.json").read_text())
    settings["mask_token"] = "<pad>"  # declares the mask at id 0
    (moved / "tokenizer_config.json").write_text(json.dumps(settings))
    (moved / "special_tokens_map.json").unlink(missing_ok=True)
    assert export_main([str(setup["ours"]), "--out", str(tmp_path / "o"), "--tokenizer", str(moved)]) == 1
    assert "mask token is id 0, the model's mask_token_id is 4" in capsys.readouterr().err
