"""`mmbert eval-mlm`: held-out masked-token accuracy / loss per language and group (mmbert_train/evaluation/, mmbert_train/commands/eval_mlm.py)."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch

from data_prep.testing import make_mds
from mmbert_train.commands.eval_mlm import main
from mmbert_train.data.masking import mask_generator, mask_tokens
from mmbert_train.data.mds import iter_input_ids
from mmbert_train.data.packing import cut_sample
from mmbert_train.evaluation import (
    EvalError,
    LanguageResult,
    MLMScore,
    aggregate_groups,
    evaluate_model,
    language_key,
    load_heldout,
)
from mmbert_train.model import MMBertForMaskedLM, ModelConfig, save_pretrained

VOCAB = 640  # above every id of the 600-entry fixture tokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mds(tmp_path_factory):
    # max_seq_len 16 cuts most held-out documents into several pieces; half the documents are held out
    return make_mds(tmp_path_factory.mktemp("eval_data"), max_seq_len=16, heldout_fraction=0.5, repeat=3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", vocab_size=VOCAB, attn_backend="sdpa")
    m = MMBertForMaskedLM(config).eval()
    with torch.no_grad():  # a random init predicts nearly uniformly; spread the logits so argmax is not a tie
        m.decoder.bias.normal_(0.0, 1.0)
    return m


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    return save_pretrained(model, tmp_path_factory.mktemp("model") / "hf")


def heldout_languages(mds) -> list[str]:
    manifest = json.loads((mds / "manifest.json").read_text())
    return sorted(
        folder.split("_")[0] for folder, c in manifest["sources"]["web"].items() if c["heldout_documents"]
    )


def direct_score(model, pieces) -> tuple[int, int, float]:
    """Masked tokens, correct and summed CE, one piece at a time in the padded form with full logits."""
    tokens = correct = 0
    loss = 0.0
    with torch.no_grad():
        for inputs, labels in pieces:
            logits = model(inputs[None], torch.ones(1, len(inputs), dtype=torch.long)).logits[0]
            picked = labels != -100
            target = labels[picked]
            lp = torch.log_softmax(logits[picked].double(), dim=-1)
            tokens += int(picked.sum())
            correct += int((logits[picked].argmax(-1) == target).sum())
            loss += float(-lp[torch.arange(len(target)), target].sum())
    return tokens, correct, loss


def expected_pieces(mds, language: str, folder: str, mask_ratio: float, seed: int, max_seq_len: int):
    """The contract: cut every held-out sample, mask piece j with mask_generator(seed, key(language), j)."""
    out = []
    for ids in iter_input_ids(mds / "web" / folder / "heldout"):
        for piece in cut_sample(np.asarray(ids, dtype=np.int64), max_seq_len):
            gen = mask_generator(seed, language_key(language), len(out))
            out.append(
                mask_tokens(
                    torch.from_numpy(piece.copy()), mask_ratio=mask_ratio, mask_token_id=4, vocab_size=VOCAB,
                    special_ids=(0, 1, 2, 3, 4), generator=gen,
                )
            )  # fmt: skip
    return out


def test_accuracy_and_loss_equal_a_direct_computation_with_our_logits(mds, model):
    langs = heldout_languages(mds)
    assert {"eng", "rus", "cmn"} <= set(langs)
    heldout = load_heldout(mds, langs, mask_ratio=0.3, seed=7, max_seq_len=16, vocab_size=VOCAB)
    report = evaluate_model(model, heldout, {"all": langs}, batch_tokens=40)
    folders = {"rus": "rus_Cyrl", "cmn": "cmn_Hani"}
    total = [0, 0, 0.0]
    for lang in langs:
        pieces = expected_pieces(mds, lang, folders.get(lang, lang), 0.3, 7, 16)
        got = heldout.languages[lang].pieces
        assert len(got) == len(pieces)
        for p, (inputs, labels) in zip(got, pieces):
            assert torch.equal(p.input_ids, inputs) and torch.equal(p.labels, labels)
        tokens, correct, loss = direct_score(model, pieces)
        result = report.languages[lang]
        assert tokens > 0
        assert (result.score.tokens, result.score.correct) == (tokens, correct)
        assert result.score.accuracy == correct / tokens
        assert result.score.loss == pytest.approx(loss / tokens, rel=1e-5)
        total = [total[0] + tokens, total[1] + correct, total[2] + loss]
    group = report.groups["all"]
    assert group.score.accuracy == total[1] / total[0]
    assert group.score.loss == pytest.approx(total[2] / total[0], rel=1e-5)
    # the model is random but not uniform: accuracy well below 1 and loss near log(V)
    assert 0 <= group.score.accuracy < 0.5 and abs(group.score.loss - math.log(VOCAB)) < 2.0


def test_masked_share_follows_the_mask_ratio_and_specials_are_never_scored(mds):
    langs = heldout_languages(mds)
    for ratio in (0.15, 0.5):
        heldout = load_heldout(mds, langs, mask_ratio=ratio, seed=1, max_seq_len=16, vocab_size=VOCAB)
        labels = torch.cat([p.labels for lang in heldout.languages.values() for p in lang.pieces])
        picked = labels[labels != -100]
        assert not torch.isin(picked, torch.tensor([0, 1, 2, 3, 4])).any()
        share = len(picked) / len(labels)
        assert abs(share - ratio) < 0.12  # Bernoulli over a few hundred tokens (bos/eos never picked)


def test_masks_do_not_depend_on_batching_or_on_the_other_languages(mds, model):
    langs = heldout_languages(mds)
    alone = load_heldout(mds, ["eng"], vocab_size=VOCAB, max_seq_len=16)
    together = load_heldout(mds, langs, vocab_size=VOCAB, max_seq_len=16)
    for a, b in zip(alone.languages["eng"].pieces, together.languages["eng"].pieces, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    small = evaluate_model(model, together, batch_tokens=16).languages
    large = evaluate_model(model, together, batch_tokens=1 << 20).languages
    for lang in langs:
        assert small[lang].score.tokens == large[lang].score.tokens
        assert small[lang].score.correct == large[lang].score.correct
        assert small[lang].score.loss == pytest.approx(large[lang].score.loss, rel=1e-5)
    other_seed = load_heldout(mds, ["eng"], vocab_size=VOCAB, max_seq_len=16, seed=99)
    assert any(
        not torch.equal(a.labels, b.labels)
        for a, b in zip(alone.languages["eng"].pieces, other_seed.languages["eng"].pieces)
    )


def test_groups_are_weighted_by_masked_tokens_and_report_the_macro_mean_too():
    results = {
        "aaa": LanguageResult("aaa", 1, 50, MLMScore(tokens=10, correct=5, loss_sum=20.0)),  # acc .5, loss 2
        "bbb": LanguageResult(
            "bbb", 1, 150, MLMScore(tokens=30, correct=27, loss_sum=30.0)
        ),  # acc .9, loss 1
        "ccc": LanguageResult("ccc", 1, 0, MLMScore()),  # nothing masked: no weight, not in the macro mean
    }
    groups = aggregate_groups(results, {"ab": ["aaa", "bbb", "ccc"], "a": ["aaa"]})
    assert groups["ab"].score.tokens == 40
    assert groups["ab"].score.accuracy == 32 / 40
    assert groups["ab"].score.loss == 50.0 / 40
    assert groups["ab"].macro_accuracy == pytest.approx(0.7)
    assert groups["ab"].macro_loss == pytest.approx(1.5)
    assert groups["a"].score.accuracy == 0.5
    assert math.isnan(MLMScore().accuracy)
    with pytest.raises(EvalError, match=r"group 'x': language\(s\) zzz were not evaluated"):
        aggregate_groups(results, {"x": ["aaa", "zzz"]})


def test_cli_writes_json_and_csv_and_is_deterministic(mds, model_dir, tmp_path, capsys):
    langs_file = tmp_path / "langs.txt"
    langs_file.write_text("# held-out languages\neng\nrus_Cyrl\narb\n")
    args = [str(model_dir), "--data", str(mds), "--languages", str(langs_file), "--group", "two=eng,rus",
            "--max-seq-len", "16", "--no-progress"]  # fmt: skip
    assert main([*args, "--output", str(tmp_path / "a.json"), "--csv", str(tmp_path / "a.csv")]) == 0
    assert main([*args, "--output", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert a["mask_ratio"] == 0.15 and a["seed"] == 1234 and a["max_seq_len"] == 16
    assert list(a["languages"]) == ["eng", "rus", "arb"]  # rus_Cyrl in the file counts as rus
    assert a["groups"]["all"]["languages"] == ["eng", "rus", "arb"]
    two = a["groups"]["two"]
    eng, rus = a["languages"]["eng"], a["languages"]["rus"]
    assert two["masked_tokens"] == eng["masked_tokens"] + rus["masked_tokens"]
    assert two["accuracy"] == (eng["correct"] + rus["correct"]) / two["masked_tokens"]
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert [(r["kind"], r["name"]) for r in rows] == [
        ("group", "all"), ("group", "two"), ("language", "eng"), ("language", "rus"), ("language", "arb"),
    ]  # fmt: skip
    assert float(rows[2]["accuracy"]) == eng["accuracy"]
    assert not list(tmp_path.glob(".*.tmp"))
    out = capsys.readouterr().out
    assert "group   all" in out and "lang    rus" in out


def test_cli_reads_a_composer_checkpoint_like_the_hf_directory(mds, model, model_dir, tmp_path):
    ckpt = tmp_path / "ep0-ba1-rank0.pt"
    torch.save(
        {"state": {"model": {"model." + k: v for k, v in model.state_dict().items()},
                   "callbacks": {"ModelConfigRecorder": {"model_config": model.config.to_dict()}}}},
        ckpt,
    )  # fmt: skip
    common = ["--data", str(mds), "--languages", "eng,arb", "--max-seq-len", "16", "--no-progress"]
    assert main([str(model_dir), *common, "--output", str(tmp_path / "hf.json")]) == 0
    assert main([str(ckpt), *common, "--output", str(tmp_path / "pt.json")]) == 0
    hf, pt = (json.loads((tmp_path / n).read_text())["languages"] for n in ("hf.json", "pt.json"))
    assert hf == pt


def test_default_languages_are_every_language_with_heldout_data(mds, model_dir, tmp_path):
    assert main([str(model_dir), "--data", str(mds), "--max-seq-len", "16", "--no-progress",
                 "--output", str(tmp_path / "r.json")]) == 0  # fmt: skip
    report = json.loads((tmp_path / "r.json").read_text())
    assert sorted(report["languages"]) == heldout_languages(mds)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--languages", "fra"], r"no held-out data for language 'fra'"),
        (["--languages", "english"], r"'english' is not a language id"),
        (["--languages", "missing_file.txt"], r"language file 'missing_file.txt' not found"),
        (["--languages", "eng", "--group", "g=eng,arb"], r"group 'g': language\(s\) arb were not evaluated"),
        (["--languages", "eng", "--group", "broken"], r"--group 'broken': expected NAME=FILE"),
        (["--languages", "eng", "--mask-ratio", "0"], r"--mask-ratio must be in \(0, 1\), got 0.0"),
        (
            ["--languages", "eng", "--max-seq-len", "1024"],
            r"above the model's max_position_embeddings \(512\)",
        ),
        (
            ["--languages", "eng", "--source", "nope"],
            r"--source nope: not in .*manifest.json \(sources: web\)",
        ),
    ],
)
def test_cli_errors_name_what_is_wrong(mds, model_dir, capsys, extra, message):
    args = [str(model_dir), "--data", str(mds), "--no-progress"]
    if "--max-seq-len" not in extra:
        args += ["--max-seq-len", "16"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmbert eval-mlm: error: ")
    assert re.search(message, err), err


def test_cli_errors_for_missing_data_model_or_mismatched_vocabulary(mds, tmp_path, capsys):
    small = save_pretrained(MMBertForMaskedLM(ModelConfig.preset("tiny", vocab_size=300)), tmp_path / "small")
    assert main([str(small), "--data", str(mds), "--languages", "eng", "--max-seq-len", "16"]) == 2
    assert "outside the model's vocabulary (300)" in capsys.readouterr().err
    assert main([str(small), "--data", str(tmp_path / "nowhere"), "--languages", "eng"]) == 2
    assert "nowhere/manifest.json: no manifest here" in capsys.readouterr().err
    assert main([str(tmp_path / "no_model"), "--data", str(mds), "--languages", "eng"]) == 2
    assert "no_model: no such checkpoint or directory" in capsys.readouterr().err


def test_heldout_set_from_a_recipe_data_config(mds, tmp_path):
    """The set a recipe's `data.eval` describes: its settings, its languages and groups (a group may be a language
    file next to the recipe), languages without held-out text left out, the masks of `load_heldout`."""
    from mmbert_train.data.spec import DataConfig, EvalDataConfig, SourceConfig
    from mmbert_train.evaluation import HeldoutSet

    langs = heldout_languages(mds)
    (tmp_path / "group.txt").write_text("rus\neng\nzul\n")  # zul has no data at all
    data = DataConfig(
        root=str(mds), languages=["eng", "rus", "cmn"], tau=0.5, sources={"web": SourceConfig()},
        max_seq_len=64, mask_ratio=0.3,
        eval=EvalDataConfig(
            languages=None, groups={"two": "group.txt", "none": ["zul"]}, mask_ratio=0.2, seed=5, max_seq_len=16,
            max_samples_per_language=3,
        ),
    )  # fmt: skip
    data.recipe_dir = str(tmp_path)  # as load_recipe sets it
    heldout = HeldoutSet.from_data_config(data, vocab_size=VOCAB)
    assert heldout.reported == ["eng", "rus", "cmn"]  # eval.languages None: the phase's languages
    assert heldout.groups == {"two": ["rus", "eng"]}  # zul dropped, and with it the empty group
    assert sorted(heldout.languages) == ["cmn", "eng", "rus"]
    assert (heldout.mask_ratio, heldout.seed, heldout.max_seq_len, heldout.max_samples_per_language) == (
        0.2, 5, 16, 3
    )  # fmt: skip
    direct = load_heldout(
        mds, ["cmn", "eng", "rus"], mask_ratio=0.2, seed=5, max_seq_len=16, max_samples_per_language=3,
        vocab_size=VOCAB,
    )  # fmt: skip
    for lang in ("cmn", "eng", "rus"):
        for a, b in zip(heldout.languages[lang].pieces, direct.languages[lang].pieces, strict=True):
            assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    # explicit languages / groups replace eval's; max_seq_len None falls back to the phase's
    data.eval.max_seq_len = None
    other = HeldoutSet.from_data_config(data, vocab_size=VOCAB, languages=langs[:1], groups={"g": langs[:2]})
    assert (other.reported, other.groups, other.max_seq_len) == (langs[:1], {"g": langs[:2]}, 64)
    data.eval.groups = {"missing": "nope.txt"}
    with pytest.raises(
        EvalError, match=r"language file 'nope.txt' not found .*recipe's folder and the working"
    ):
        HeldoutSet.from_data_config(data, vocab_size=VOCAB)
