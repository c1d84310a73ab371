"""`mmbert merge` on checkpoints on disk: the streaming engine, its inputs and outputs, errors, both CLI forms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmbert_train.checkpoints.testing import (
    random_state,
    save_with_transformers,
    write_composer_checkpoint,
    write_dcp_checkpoint,
    write_hf_dir,
)
from mmbert_train.commands.merge import main
from mmbert_train.merge import MergeError, linear_merge, merge_checkpoints, ties_merge
from mmbert_train.model import ModelConfig

CONFIG = ModelConfig.preset("tiny", vocab_size=320)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Four Hugging Face directories written by transformers: a base and three 'decay variants'."""
    root = tmp_path_factory.mktemp("hf")
    return [
        save_with_transformers(root / name, CONFIG, seed)
        for seed, name in enumerate(["ext", "eng", "cont", "all"])
    ]


def weights_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_ties_of_transformers_dirs_equals_in_memory_ties_and_loads_in_transformers(hf_dirs, tmp_path):
    from transformers import AutoModelForMaskedLM

    base, *models = hf_dirs
    out = merge_checkpoints(
        method="ties", base=base, models=models, out=tmp_path / "merged", density=0.4,
        weights=[1.0, 2.0, 1.0], scale=0.9, chunk_numel=1000, progress=False,
    )  # fmt: skip
    got = weights_of(out)
    want = ties_merge(
        weights_of(base), [weights_of(m) for m in models], density=0.4, weights=[1.0, 2.0, 1.0], scale=0.9
    )
    assert set(got) == set(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    assert type(model).__name__ == "ModernBertForMaskedLM"
    for key, value in model.state_dict().items():
        expected = want["model.embeddings.tok_embeddings.weight" if key == "decoder.weight" else key]
        assert torch.equal(value, expected), key
    assert json.loads((out / "config.json").read_text())["hidden_size"] == CONFIG.hidden_size
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "ties" and record["density"] == 0.4 and record["weights"] == [1.0, 2.0, 1.0]
    assert not list(tmp_path.glob(".merged.tmp-*"))


def test_linear_and_ema_merge_from_the_cli_with_globs(hf_dirs, tmp_path):
    # checkpoints of one run, named as Composer names them; ba10 < ba20 < ba100 in training order
    run = tmp_path / "run"
    for name, src in zip(["ep0-ba100-rank0", "ep0-ba20-rank0", "ep0-ba10-rank0"], hf_dirs[1:]):
        (run / name).mkdir(parents=True)
        for f in src.iterdir():
            (run / name / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "ema"
    assert main(["--method", "ema", "--models", str(run / "ep*-ba*"), "--last", "2", "--beta", "0.5",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    record = json.loads((out / "merge.json").read_text())
    assert [Path(p).name for p in record["models"]] == ["ep0-ba20-rank0", "ep0-ba100-rank0"]
    assert record["weights"] == pytest.approx([1 / 3, 2 / 3])
    want = linear_merge([weights_of(hf_dirs[2]), weights_of(hf_dirs[1])], [1 / 3, 2 / 3])
    got = weights_of(out)
    for key in want:
        assert torch.equal(got[key], want[key]), key

    assert main(["--method", "linear", "--models", *map(str, hf_dirs[1:]), "--out", str(tmp_path / "avg"),
                 "--no-progress"]) == 0  # fmt: skip
    want = linear_merge([weights_of(d) for d in hf_dirs[1:]])
    got = weights_of(tmp_path / "avg")
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_recipe_form_with_overrides(hf_dirs, tmp_path):
    base, *models = hf_dirs
    recipe = tmp_path / "merge.yaml"
    recipe.write_text(
        f"method: ties\nbase: {base}\nmodels: [{', '.join(map(str, models))}]\n"
        f"density: 0.5\nweights: [1.0, 1.0, 1.0]\nscale: 1.0\nout: {tmp_path / 'from_recipe'}\n"
    )
    assert main([str(recipe), "density=0.3", "dtype=bfloat16", "--no-progress"]) == 0
    got = weights_of(tmp_path / "from_recipe")
    want = ties_merge(weights_of(base), [weights_of(m) for m in models], density=0.3)
    assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], want[k].bfloat16()) for k in want)
    assert json.loads((tmp_path / "from_recipe" / "merge.json").read_text())["recipe"]["density"] == 0.3
    # a typo in the recipe is named with its closest match
    assert main([str(recipe), "densty=0.3", "--no-progress"]) == 1


def test_recipe_typo_error_message(hf_dirs, tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"method: ties\nbase: {hf_dirs[0]}\nmodels: [{hf_dirs[1]}]\nout: x\ndensty: 0.3\n")
    assert main([str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "densty" in err and "did you mean 'density'" in err


def test_flags_that_a_recipe_sets_are_refused_next_to_a_recipe(hf_dirs, tmp_path, capsys):
    """Every MergeConfig field is a flag; with a recipe each must be a key=value override instead (a flag would
    otherwise be silently ignored, e.g. --density before its default moved into MergeConfig alone)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: ties\nbase: {hf_dirs[0]}\nmodels: [{hf_dirs[1]}]\nout: {tmp_path / 'o'}\n")
    with pytest.raises(SystemExit):
        main([str(recipe), "--density", "0.3", "--trust-pickle"])
    assert (
        "with a recipe, set --density, --trust-pickle as key=value overrides instead"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["--method", "ties", "--base", str(hf_dirs[0])])
    assert "give a recipe, or at least --models, --out" in capsys.readouterr().err


def test_mixed_input_formats_dcp_and_bf16(tmp_path):
    """A sharded (DCP) checkpoint, a bf16 safetensors directory and a float32 one merge together."""
    states = [random_state(CONFIG, seed) for seed in range(3)]
    dcp_dir = write_dcp_checkpoint(tmp_path / "ep0-ba10", CONFIG, states[0])
    bf16 = write_hf_dir(tmp_path / "bf16", CONFIG, {k: v.bfloat16() for k, v in states[1].items()})
    fp32 = write_hf_dir(tmp_path / "fp32", CONFIG, states[2])
    out = merge_checkpoints(
        method="ties", base=dcp_dir, models=[bf16, fp32], out=tmp_path / "m", progress=False
    )
    want = ties_merge(states[0], [{k: v.bfloat16() for k, v in states[1].items()}, states[2]], density=0.5)
    got = weights_of(out)
    assert all(torch.equal(got[k], want[k]) for k in want)
    # the config of a DCP base comes from the ModelConfigRecorder state
    assert json.loads((out / "config.json").read_text())["vocab_size"] == CONFIG.vocab_size


def test_bad_inputs_are_named(hf_dirs, tmp_path):
    base, *models = hf_dirs
    with pytest.raises(MergeError, match=r"models\[1\] not found: .*nowhere"):
        merge_checkpoints(
            method="ties", base=base, models=[models[0], tmp_path / "nowhere"], out=tmp_path / "o"
        )

    small_vocab = write_hf_dir(
        tmp_path / "v", CONFIG, random_state(ModelConfig.preset("tiny", vocab_size=256), 0)
    )
    with pytest.raises(
        MergeError, match=r"vocab sizes differ: tensor decoder.bias is \[320\] in base .* but \[256\]"
    ):
        merge_checkpoints(method="ties", base=base, models=[small_vocab], out=tmp_path / "o")

    state = random_state(CONFIG, 0)
    state["model.layers.1.mlp.Wo.weight"] = state["model.layers.1.mlp.Wo.weight"][:, :10].contiguous()
    wrong = write_hf_dir(tmp_path / "w", CONFIG, state)
    with pytest.raises(MergeError, match=r"shapes differ: tensor model.layers.1.mlp.Wo.weight is \[64, 96\] in "
                       r"models\[0\] .* but \[64, 10\] in models\[1\] \(.*/w\)"):  # fmt: skip
        merge_checkpoints(method="linear", models=[models[0], wrong], out=tmp_path / "o")

    state = random_state(CONFIG, 0)
    del state["head.norm.weight"]
    fewer = write_hf_dir(tmp_path / "f", CONFIG, state)
    with pytest.raises(
        MergeError, match=r"models\[0\] \(.*/f\) does not have the same tensors: missing 1 .*head.norm"
    ):
        merge_checkpoints(method="ties", base=base, models=[fewer], out=tmp_path / "o")
    assert not (tmp_path / "o").exists()

    with pytest.raises(MergeError, match="TIES needs a base"):
        merge_checkpoints(method="ties", models=models, out=tmp_path / "o")


def test_output_is_atomic(hf_dirs, tmp_path, monkeypatch):
    base, *models = hf_dirs
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        merge_checkpoints(method="linear", models=models, out=out, progress=False)

    import mmbert_train.merge.engine as engine

    def broken(*args, **kwargs):
        yield torch.zeros(3)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine, "linear_chunks", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        merge_checkpoints(method="linear", models=models, out=out, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "old"  # the old output is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary directory left behind
    monkeypatch.undo()
    merge_checkpoints(method="linear", models=models, out=out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "merge.json", "model.safetensors"]


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_shipped_recipes_validate():
    from mmbert_train.merge import MergeConfig
    from mmbert_train.schema import from_dict, load_yaml

    base = from_dict(MergeConfig, load_yaml(RECIPES / "base_merge.yaml"), "base_merge.yaml:")
    assert (base.method, base.density, base.weights, base.scale) == ("ties", 0.5, [1.0, 1.0, 1.0], 1.0)
    assert base.base.startswith("checkpoints/base_midtrain/") and len(base.models) == 3
    small = from_dict(MergeConfig, load_yaml(RECIPES / "small_merge.yaml"), "small_merge.yaml:")
    assert (small.method, small.beta, small.last) == ("ema", 0.5, 4)


def test_shipped_recipes_run_on_checkpoints_named_like_ours(hf_dirs, tmp_path, monkeypatch):
    """Both recipes, unchanged but for where the checkpoints are, on a tree laid out as training writes it."""
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "checkpoints"
    for name, src in zip(["base_midtrain", "base_decay_eng", "base_decay_cont", "base_decay_all"], hf_dirs):
        (ckpt / name).mkdir(parents=True)
        (ckpt / name / "latest-rank0.pt").symlink_to(src, target_is_directory=True)
    assert main([str(RECIPES / "base_merge.yaml"), "--no-progress"]) == 0
    want = ties_merge(weights_of(hf_dirs[0]), [weights_of(d) for d in hf_dirs[1:]], density=0.5)
    got = weights_of(ckpt / "base_merged")
    assert all(torch.equal(got[k], want[k]) for k in want)

    run = ckpt / "small_decay_all"
    run.mkdir()
    order = [("ep0-ba500-rank0.pt", 0), ("ep0-ba1000-rank0.pt", 1), ("ep0-ba1500-rank0.pt", 2),
             ("ep0-ba2000-rank0.pt", 3), ("ep0-ba2650-rank0.pt", 1)]  # fmt: skip
    for name, i in order:
        (run / name).symlink_to(hf_dirs[i], target_is_directory=True)
    (run / "latest-rank0.pt").symlink_to(hf_dirs[1], target_is_directory=True)
    assert main([str(RECIPES / "small_merge.yaml"), "--no-progress"]) == 0
    record = json.loads((ckpt / "small_merged" / "merge.json").read_text())
    assert [Path(p).name for p in record["models"]] == [name for name, _ in order[1:]]
    want = linear_merge([weights_of(hf_dirs[i]) for _, i in order[1:]], [1 / 15, 2 / 15, 4 / 15, 8 / 15])
    got = weights_of(ckpt / "small_merged")
    assert all(torch.allclose(got[k], want[k], rtol=0, atol=1e-7) for k in want)


def test_composer_checkpoints_merge_with_config_tokenizer_and_progress(tmp_path, capsys):
    """Our Composer .pt files (keys "model." + HF key, config in ModelConfigRecorder) as merge inputs."""
    from tokenizers import Tokenizer

    from data_prep.testing import make_tokenizer

    tokenizer = make_tokenizer(tmp_path / "tokenizer")
    vocab = Tokenizer.from_file(str(tokenizer / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    config = ModelConfig.preset("tiny", vocab_size=vocab, global_rope_theta=160000.0)
    states = [random_state(config, seed) for seed in range(3)]
    paths = [
        write_composer_checkpoint(tmp_path / f"ep0-ba{(i + 1) * 100}-rank0.pt", config, state)
        for i, state in enumerate(states)
    ]
    out = tmp_path / "merged"
    assert main(["--method", "ties", "--base", str(paths[0]), "--models", *map(str, paths[1:]), "--out", str(out),
                 "--tokenizer", str(tokenizer), "--density", "0.7"]) == 0  # fmt: skip
    assert "merge (ties)" in capsys.readouterr().err  # the tqdm progress bar
    want = ties_merge(states[0], states[1:], density=0.7)
    got = weights_of(out)
    assert all(torch.equal(got[k], want[k]) for k in want)
    written = json.loads((out / "config.json").read_text())
    assert ModelConfig.from_hf_dict(written) == config  # the base's recorded ModelConfig
    # both config generations, the same thetas
    assert (written["global_rope_theta"], written["local_rope_theta"]) == (160000.0, 10000.0)
    assert written["rope_parameters"]["full_attention"]["rope_theta"] == 160000.0
    assert written["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    assert (out / "tokenizer.json").read_bytes() == (tokenizer / "tokenizer.json").read_bytes()


def test_model_globs_sort_by_batch_count_and_errors(tmp_path):
    from mmbert_train.merge.config import expand_models

    for name in ["ep0-ba1000-rank0.pt", "ep0-ba500-rank0.pt", "ep1-ba2650-rank0.pt", "latest-rank0.pt"]:
        (tmp_path / name).touch()
    pattern = str(tmp_path / "ep*-ba*-rank0.pt")
    names = [Path(p).name for p in expand_models([pattern], None)]
    assert names == ["ep0-ba500-rank0.pt", "ep0-ba1000-rank0.pt", "ep1-ba2650-rank0.pt"]
    assert [Path(p).name for p in expand_models([pattern], 2)] == names[1:]
    with pytest.raises(MergeError, match="no checkpoint matches"):
        expand_models([str(tmp_path / "nothing-*.pt")], None)
    with pytest.raises(MergeError, match="last: 4 asks for more checkpoints than the 3 given"):
        expand_models([pattern], 4)
