"""The shipped recipes: all load without data, resolve as before, and the base/small ones hold the published values."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmbert_train.config import load_recipe, parse_time

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def shipped_recipes() -> list[Path]:
    """Every runnable training recipe: partial files start with `_`; `*merge.yaml` belong to `mmbert merge`."""
    return sorted(
        p for p in RECIPES.rglob("*.yaml") if not p.name.startswith("_") and not p.stem.endswith("merge")
    )


def test_there_are_recipes_for_every_phase_and_size():
    names = {p.name for p in shipped_recipes()}
    for size in ("small", "base"):
        for phase in ("pretrain", "midtrain", "decay_eng", "decay_cont", "decay"):
            assert f"{size}_{phase}.yaml" in names


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_shipped_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert recipe.data.max_seq_len <= recipe.model_config.max_position_embeddings


# The published recipe (paper, released configs, dataset cards), value by value. lr / wd are the peak values; decay = (shape, alpha_f) of the final decay.
M, B = 1_000_000, 1_000_000_000
EXPECTED = {
    # (size, phase): tokens, languages file, n languages, mask, tau, seq len, theta, lr, wd, warmup tokens,
    #                batch warmup (start, tokens), decay
    ("base", "pretrain"): (
        2300 * B,
        "phase1_pretrain",
        0.30,
        0.7,
        1024,
        10_000.0,
        8e-4,
        8e-5,
        3 * B,
        (48, 60 * B),
        None,
    ),
    ("small", "pretrain"): (
        2300 * B,
        "phase1_pretrain",
        0.30,
        0.7,
        1024,
        10_000.0,
        8e-4,
        8e-5,
        4 * B,
        (48, 100 * B),
        None,
    ),
    ("base", "midtrain"): (
        600 * B,
        "phase2_midtrain",
        0.15,
        0.5,
        8192,
        160_000.0,
        8e-4,
        8e-5,
        0,
        (0, 0),
        None,
    ),
    ("small", "midtrain"): (
        600 * B,
        "phase2_midtrain",
        0.15,
        0.5,
        8192,
        160_000.0,
        4e-4,
        4e-5,
        0,
        (0, 0),
        None,
    ),
}
for _variant, _file in (
    ("decay_eng", "decay_eng"),
    ("decay_cont", "decay_cont"),
    ("decay", "phase3_decay_all"),
):
    EXPECTED[("base", _variant)] = (
        100 * B, _file, 0.05, 0.3, 8192, 160_000.0, 8e-4, 8e-5, 0, (0, 0), ("one_minus_sqrt", 0.02)
    )  # fmt: skip
    EXPECTED[("small", _variant)] = (
        100 * B, _file, 0.05, 0.3, 8192, 160_000.0, 4e-4, 4e-5, 0, (0, 0), ("linear", 0.04)
    )  # fmt: skip


@pytest.mark.parametrize("size, phase", sorted(EXPECTED), ids=lambda v: str(v))
def test_recipe_matches_published_values(size, phase):
    tokens, lang_file, mask, tau, seq, theta, lr, wd, warmup, batch_warmup, decay = EXPECTED[(size, phase)]
    r = load_recipe(RECIPES / f"{size}_{phase}.yaml")
    model = r.model_config
    preset = {"small": (384, 6), "base": (768, 12)}[size]
    assert (model.hidden_size, model.num_attention_heads) == preset
    assert (model.num_hidden_layers, model.intermediate_size, model.vocab_size) == (22, 1152, 256000)
    assert (model.global_attn_every_n_layers, model.local_attention) == (3, 128)
    assert model.global_rope_theta == model.local_rope_theta == theta
    assert model.attn_out_dropout == 0.1
    assert parse_time(r.trainer.max_duration) == (tokens, "tok")
    assert r.data.languages == f"recipes/languages/{lang_file}.txt"
    assert (r.data.mask_ratio, r.data.tau, r.data.max_seq_len) == (mask, tau, seq)
    assert r.trainer.global_batch_size == 4608 and r.trainer.seed == 21
    opt = r.optimizer
    assert (opt.name, opt.lr, opt.weight_decay, opt.betas, opt.eps) == (
        "stableadamw",
        lr,
        wd,
        (0.9, 0.95),
        1e-8,
    )
    assert opt.decouple_lr and opt.max_lr is None and set(opt.no_decay) == {"bias", "norm"}
    assert parse_time(r.scheduler.t_warmup)[0] == warmup
    assert (r.data.batch_warmup.start_batch_size, r.data.batch_warmup.tokens) == batch_warmup
    if decay is None:
        assert parse_time(r.scheduler.t_decay)[0] == 0
    else:
        assert r.scheduler.t_decay == "1dur"
        assert (r.scheduler.decay_shape, r.scheduler.alpha_f) == decay
    if phase == "midtrain":
        assert r.scheduler.name == "constant"
    assert r.trainer.precision == "auto" and r.trainer.compile


def _fixed_share(recipe, source: str) -> float:
    return recipe.data.sources[source].share


@pytest.mark.parametrize("size", ["small", "base"])
def test_mixtures_follow_the_dataset_cards(size):
    pre = load_recipe(RECIPES / f"{size}_pretrain.yaml")
    assert (_fixed_share(pre, "dclm"), _fixed_share(pre, "starcoder")) == (0.302, 0.051)
    fixed = sum(s.share for s in pre.data.sources.values() if s.kind == "fixed")
    assert 1 - fixed == pytest.approx(0.602, abs=0.002)  # FineWeb2's share: 60.2%
    cont = load_recipe(RECIPES / f"{size}_decay_cont.yaml")
    assert 1 - sum(s.share for s in cont.data.sources.values() if s.kind == "fixed") == pytest.approx(
        0.760, abs=0.001
    )
    for recipe in (pre, cont):
        multilingual = [s.name for s in recipe.data.sources.values() if s.kind == "multilingual"]
        assert multilingual == ["fineweb2"]


@pytest.mark.parametrize("size", ["small", "base"])
def test_phases_chain(size):
    pre = load_recipe(RECIPES / f"{size}_pretrain.yaml")
    mid = load_recipe(RECIPES / f"{size}_midtrain.yaml")
    decays = [load_recipe(RECIPES / f"{size}_{v}.yaml") for v in ("decay_eng", "decay_cont", "decay")]
    assert pre.init_from is None
    assert mid.init_from.path == f"{pre.trainer.save_folder}/latest-rank0.pt"
    assert {d.init_from.path for d in decays} == {f"{mid.trainer.save_folder}/latest-rank0.pt"}
    # the released configs carry the optimizer state over
    assert mid.init_from.load_optimizer_state and all(d.init_from.load_optimizer_state for d in decays)
    folders = [r.trainer.save_folder for r in (pre, mid, *decays)]
    assert len(set(folders)) == len(folders)


def test_small_overrides_only_what_small_changes():
    base, small = load_recipe(RECIPES / "base_decay.yaml"), load_recipe(RECIPES / "small_decay.yaml")
    assert small.data == base.data


def test_every_recipe_value_has_a_comment():
    """Every value of the mmBERT recipes and their partials says where it comes from: each `key: value` line
    carries a comment, except names and paths."""
    exempt = ("name:", "description:", "save_folder:", "phase:", "extends:", "path:")
    for path in sorted(RECIPES.glob("*.yaml")):
        if path.stem.endswith("merge"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if (
                not stripped
                or stripped.startswith("#")
                or stripped.endswith(":")
                or stripped.startswith(exempt)
            ):
                continue
            assert "#" in line, f"{path.name}:{number}: value without a comment: {stripped}"


def synthetic_manifest(recipes) -> dict:
    """Every source the recipes name, multilingual ones holding all 1834 published ids, fixed ones their ids."""
    all_ids = [
        line.strip()
        for line in (RECIPES / "languages" / "phase3_decay_all.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(all_ids) == 1834
    counts = {"documents": 10, "samples": 10, "tokens": 10_000, "skipped": 0, "heldout_documents": 1}
    sources: dict[str, dict] = {}
    for recipe in recipes:
        for source in recipe.data.sources.values():
            ids = source.languages if source.languages else all_ids
            sources.setdefault(source.name, {}).update({i: dict(counts) for i in ids})
    return {"tokenizer": "jhu-clsp/mmBERT-base", "max_seq_len": 8192, "sources": sources}


BIG_RECIPES = [p for p in shipped_recipes() if p.parent == RECIPES]


def test_data_validation_passes_on_a_manifest_with_all_published_ids():
    from mmbert_train.data.sampling import build_phase_plan

    recipes = [load_recipe(p) for p in BIG_RECIPES]
    manifest = synthetic_manifest(recipes)
    for path, recipe in zip(BIG_RECIPES, recipes):
        plan = build_phase_plan(recipe.data, manifest, check_files=False)
        assert plan.entries, path.name


def test_missing_language_data_fails_with_the_language_named():
    from mmbert_train.data.sampling import DataValidationError, build_phase_plan

    recipe = load_recipe(RECIPES / "base_decay.yaml")
    manifest = synthetic_manifest([recipe])
    del manifest["sources"]["fineweb2"]["fao"]
    with pytest.raises(DataValidationError, match="fao"):
        build_phase_plan(recipe.data, manifest, check_files=False)
    manifest = synthetic_manifest([recipe])
    del manifest["sources"]["megawika"]
    with pytest.raises(DataValidationError, match="source 'megawika' does not exist"):
        build_phase_plan(recipe.data, manifest, check_files=False)


# ------------------------------------------------------------------------------ resolved recipes are unchanged

SNAPSHOTS = ROOT / "tests" / "data" / "resolved_recipes"
# rows per rank the memory planner chose for an 80 GB H100 (docs/recipes.md, "Microbatches")
PLANNED_MICROBATCH = {("mmbert-base", 1024): 72, ("mmbert-base", 8192): 9, ("mmbert-small", 1024): 96,
                      ("mmbert-small", 8192): 12}  # fmt: skip


def snapshot_path(recipe: Path) -> Path:
    """`mmbert config <recipe>` as it was before the recipes were rebuilt from partials (path, / -> _)."""
    return SNAPSHOTS / str(recipe.relative_to(ROOT)).replace("/", "_")


def snapshot_in_current_form(recipe: Path) -> str:
    """The snapshot with the two differences the rebuild made on purpose, and nothing else, applied:

    * ``data.sources`` was a list of ``{name, kind, share, languages}``; it is now a mapping keyed by the name
      (same sources, same order, same values);
    * ``trainer.run_name: null`` (recipes that set no run name: smoke, experiment) now shows the name the trainer
      already used for such a run, the recipe's ``name``;
    * ``trainer.gpu_memory`` (new key, default ``80GB``) follows ``trainer.compile``, and the real recipes'
      ``trainer.device_microbatch_size`` is the memory planner's choice (`PLANNED_MICROBATCH`);
    * ``model.loss_chunk_size`` (a later model field, the chunked loss) appears with its default.

    Keys added to the schema since then appear with their defaults (``trainer.allow_nonfinite_loss: false``).
    Values changed on purpose since are changed in the snapshot files themselves (the smoke chain's LR, local
    window, pre-training length and English share: recipes/smoke/_common.yaml and _pretrain.yaml say why).
    """
    import yaml
    from omegaconf import OmegaConf

    old = yaml.safe_load(snapshot_path(recipe).read_text())
    old["data"]["sources"] = {
        s.pop("name"): dict(s, path=None, include=None, exclude=[]) for s in old["data"]["sources"]
    }  # + the keys of published sources, unset
    data = {}
    for key, value in old["data"].items():
        data[key] = value
        if key == "remote":
            data["cache"] = None  # where published sources keep their normalized indexes
    old["data"] = data
    if old["trainer"]["run_name"] is None:
        old["trainer"]["run_name"] = old["name"]
    trainer = old["trainer"]
    old["trainer"] = {}
    for key, value in trainer.items():
        old["trainer"][key] = value
        if key == "compile":
            old["trainer"]["gpu_memory"] = "80GB"
    if recipe.parent == RECIPES:
        planned = PLANNED_MICROBATCH[(old["model"]["preset"], old["data"]["max_seq_len"])]
        old["trainer"]["device_microbatch_size"] = planned
    old["model"]["loss_chunk_size"] = 4096
    old["trainer"].setdefault("allow_nonfinite_loss", False)
    return OmegaConf.to_yaml(OmegaConf.create(old), sort_keys=False)


def snapshotted_recipes() -> list[Path]:
    """The recipes that existed when the snapshots were taken (recipes/continue/ came later: test_published)."""
    return [p for p in shipped_recipes() if "continue" not in p.relative_to(RECIPES).parts]


def test_every_shipped_recipe_has_a_snapshot():
    assert sorted(snapshot_path(p).name for p in snapshotted_recipes()) == sorted(
        p.name for p in SNAPSHOTS.glob("*.yaml")
    )


@pytest.mark.parametrize("path", snapshotted_recipes(), ids=lambda p: str(p.relative_to(RECIPES)))
def test_resolved_recipe_is_unchanged(path):
    """Rebuilding the recipes from partials changed no resolved value, key order or source order."""
    from mmbert_train.config import recipe_to_yaml

    assert recipe_to_yaml(load_recipe(path)) == snapshot_in_current_form(path)
