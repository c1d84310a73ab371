"""`mmbert export` (HF dir, our Composer .pt, sharded FSDP dir -> transformers) and `mmbert fill-mask`."""

from __future__ import annotations

import json

import pytest
import torch

from data_prep.testing import make_tokenizer
from mmbert_train.checkpoints import CheckpointError, load_pretrained
from mmbert_train.checkpoints.testing import write_composer_checkpoint, write_dcp_checkpoint
from mmbert_train.commands.export import export, fill_mask_main
from mmbert_train.commands.export import main as export_main
from mmbert_train.model import MMBertForMaskedLM, ModelConfig, save_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tokenizer_dir = make_tokenizer(root / "tokenizer")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # RoPE thetas, window and layer pattern differ from transformers' defaults, so a config.json that lost
    # them would change the logits
    config = ModelConfig.preset(
        "tiny", vocab_size=len(tokenizer), global_rope_theta=160000.0, local_rope_theta=10000.0,
        local_attention=8, global_attn_every_n_layers=2, attn_backend="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    model = MMBertForMaskedLM(config).eval()
    with torch.no_grad():  # the init leaves norms at 1 and the decoder bias at 0: perturb everything
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoints = {
        "hf": save_pretrained(model, root / "hf", tokenizer=tokenizer),
        "composer": write_composer_checkpoint(root / "ep0-ba10-rank0.pt", config, state),
        "fsdp": write_dcp_checkpoint(root / "ep0-ba10", config, state),
    }
    return {"root": root, "model": model, "config": config, "tokenizer_dir": tokenizer_dir, **checkpoints}


def _batch(tokenizer):
    texts = ["Hello world, this is a test.", "Bonjour <mask>!"]
    return tokenizer(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("kind", ["hf", "composer", "fsdp"])
def test_export_loads_in_transformers_with_our_logits(setup, kind, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out = export(setup[kind], tmp_path / "exported", tokenizer=setup["tokenizer_dir"])
    config = json.loads((out / "config.json").read_text())
    ours = setup["config"]
    assert config["architectures"] == ["ModernBertForMaskedLM"]
    for field in ("global_rope_theta", "local_rope_theta", "local_attention", "global_attn_every_n_layers",
                  "pad_token_id", "bos_token_id", "eos_token_id", "mask_token_id", "vocab_size"):  # fmt: skip
        assert config[field] == getattr(ours, field), field
    assert (config["cls_token_id"], config["sep_token_id"]) == (ours.bos_token_id, ours.eos_token_id)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.mask_token_id == ours.mask_token_id
    batch = _batch(tokenizer)
    hf = AutoModelForMaskedLM.from_pretrained(str(out), attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(**batch).logits
        mine = setup["model"](batch["input_ids"], batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    assert torch.allclose(theirs[real], mine[real], atol=1e-4, rtol=1e-4)


def test_fill_mask_scores_are_the_softmax_of_our_logits(setup, capsys):
    text = "Bonjour <mask> monde."
    assert fill_mask_main([str(setup["hf"]), text, "--top-k", "4", "--json"]) == 0
    (predictions,) = json.loads(capsys.readouterr().out)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(setup["hf"]))
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    position = int((ids[0] == tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        logits = setup["model"](ids, torch.ones_like(ids)).logits[0, position]
    top = torch.softmax(logits, -1).topk(4)
    assert [p["token"] for p in predictions] == top.indices.tolist()
    assert [p["score"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-5)

    # the plain-text form prints one line per prediction
    assert fill_mask_main([str(setup["hf"]), text, "--top-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_fill_mask_on_a_training_checkpoint_and_errors(setup, tmp_path, capsys):
    text = "Hello <mask>."
    assert (
        fill_mask_main([str(setup["composer"]), text, "--tokenizer", str(setup["tokenizer_dir"]), "--json"])
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)[0]) == 5
    assert fill_mask_main([str(setup["hf"]), "no mask here"]) == 1
    assert "must contain the mask token '<mask>'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_export_errors(setup, tmp_path, capsys):
    assert export_main([str(tmp_path / "nowhere.pt"), "--out", str(tmp_path / "o")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert export_main([str(setup["hf"]), "--out", str(tmp_path / "taken")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert export_main([str(setup["hf"]), "--out", str(tmp_path / "taken"), "--overwrite"]) == 0
    assert (tmp_path / "taken" / "tokenizer.json").is_file()  # the HF checkpoint's own tokenizer came along

    import torch.distributed.checkpoint as dcp

    bare = tmp_path / "bare"
    dcp.save(
        {
            "state": {
                "model": {
                    "model.decoder.bias": torch.zeros(4),
                    "model.model.final_norm.weight": torch.ones(4),
                }
            }
        },
        storage_writer=dcp.FileSystemWriter(str(bare)),
    )
    with pytest.raises(CheckpointError, match="no ModelConfigRecorder state"):
        load_pretrained(bare)
