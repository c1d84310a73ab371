"""`mmbert prep train-tokenizer` and tokenizer loading: byte fallback, Gemma 2 ids, lossless round trip, balance."""

from __future__ import annotations

import json

import pytest

from data_prep.cli import main as prep_main
from data_prep.testing import SAMPLE_TEXTS, make_raw_corpus, write_jsonl
from data_prep.tokenizer import TRAINING_INFO, TokenizerError, load_tokenizer, train_tokenizer

SCRIPTS = {
    "Latin": "Ça va? Größe, naïve façade — ‘quotes’  and  double  spaces.\n\tTabbed line.",
    "Cyrillic": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Arabic": "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق",
    "Devanagari": "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम",
    "CJK": "人人生而自由，在尊严和权利上一律平等。いろはにほへと 한국어 문장",
    "Ethiopic": "ሰማይ አይታረስ ንጉሥ አይከሰስ። ፩፪፫",
    "unseen": "🦜🧬 Ꭰ ꦲꦏ꧀ 𐌰𐌱 — characters the merges never saw",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    raw = make_raw_corpus(root / "raw", repeat=2)
    assert (
        prep_main(
            ["train-tokenizer", "--input", str(raw), "--output", str(root / "tok"), "--vocab-size", "700"]
        )
        == 0
    )
    return root / "tok"


def test_autotokenizer_loads_with_gemma2_special_ids(trained):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(trained))
    assert tok.is_fast
    expected = {
        "pad": ("<pad>", 0),
        "eos": ("<eos>", 1),
        "bos": ("<bos>", 2),
        "unk": ("<unk>", 3),
        "mask": ("<mask>", 4),
    }
    for role, (token, idx) in expected.items():
        assert getattr(tok, f"{role}_token") == token
        assert getattr(tok, f"{role}_token_id") == idx
    assert (tok.cls_token_id, tok.sep_token_id) == (2, 1)
    assert tok.convert_ids_to_tokens([5, 6, 260]) == ["<0x00>", "<0x01>", "<0xFF>"]
    assert len(tok) <= 700
    assert load_tokenizer(str(trained)).mask_token_id == 4


def test_post_processor_adds_bos_and_eos(trained):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(trained))
    ids = tok("hello world")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 1
    assert ids[1:-1] == tok("hello world", add_special_tokens=False)["input_ids"]


def test_mask_takes_the_space_before_it(trained):
    """ "in <mask> and" is "in", <mask>, "▁and": the mask stands for a whole word piece, as in training data, not a
    lone "▁" followed by the mask (which would ask fill-mask for a word-internal piece)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    for tok in (AutoTokenizer.from_pretrained(str(trained)), load_tokenizer(str(trained))):
        ids = tok("equal in <mask> and rights")["input_ids"]
        pieces = tok.convert_ids_to_tokens(ids)
        mask = pieces.index("<mask>")
        assert pieces[mask - 1] != "▁" and pieces[mask - 1].endswith("in")
        assert pieces[mask + 1].startswith("▁")
    raw = Tokenizer.from_file(str(trained / "tokenizer.json"))
    assert raw.encode("a <mask> b").tokens.count("▁") == 0


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_round_trip_without_unk(trained, script):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(trained))
    text = SCRIPTS[script]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids  # byte fallback: nothing is unrepresentable
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == text
    with_special = tok(text)["input_ids"]
    assert tok.decode(with_special, skip_special_tokens=True, clean_up_tokenization_spaces=False) == text
    if script == "unseen":  # these only exist as bytes
        assert any(5 <= i <= 260 for i in ids)


def test_languages_are_capped_so_the_largest_cannot_drown_the_others(tmp_path):
    raw = tmp_path / "raw"
    write_jsonl(raw / "web" / "eng" / "a.jsonl", [{"text": "english text " * 50} for _ in range(100)])
    write_jsonl(raw / "web" / "fra" / "a.jsonl", [{"text": "un peu de texte"}])
    write_jsonl(raw / "books" / "eng" / "a.jsonl", [{"text": "more english " * 50}])
    write_jsonl(raw / "web" / "rus_Cyrl" / "a.jsonl", [{"text": "немного " * 100}])
    write_jsonl(raw / "web" / "rus_Latn" / "a.jsonl", [{"text": "nemnogo " * 100}])
    info = train_tokenizer(raw, tmp_path / "tok", 300, chars_per_language=500)
    # eng (both sources together) is cut at the cap; script variants count toward one language (rus)
    assert info["characters_used"] == {"eng": 500, "fra": len("un peu de texte"), "rus": 500}
    assert json.loads((tmp_path / "tok" / TRAINING_INFO).read_text())["characters_used"]["eng"] == 500
    # the default cap splits --max-chars evenly over the languages
    info = train_tokenizer(raw, tmp_path / "tok2", 300, max_chars=3000)
    assert info["chars_per_language_cap"] == 1000
    assert info["characters_used"]["eng"] == 1000


def test_errors(tmp_path):
    raw = make_raw_corpus(tmp_path / "raw")
    with pytest.raises(TokenizerError, match="at least 262"):
        train_tokenizer(raw, tmp_path / "tok", 100)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        train_tokenizer(raw, tmp_path / "tok", 300)
    train_tokenizer(raw, tmp_path / "tok", 300, overwrite=True)
    assert not (tmp_path / "tok" / "keep.txt").exists() and (tmp_path / "tok" / "tokenizer.json").exists()
    assert not list(tmp_path.glob(".tok.tmp-*"))


def test_load_rejects_other_special_id_layouts(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[CLS]", eos_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(str(tmp_path / "bert"))  # fmt: skip
    with pytest.raises(TokenizerError, match=r"eos=3 \(expected 1\), bos=2|eos=3 \(expected 1\)"):
        load_tokenizer(str(tmp_path / "bert"))
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))


def test_sample_texts_cover_the_scripts_the_issue_names():
    joined = "".join(t for texts in SAMPLE_TEXTS.values() for t in texts)
    for lo, hi in [(0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F), (0x4E00, 0x9FFF), (0x1200, 0x137F)]:
        assert any(lo <= ord(c) <= hi for c in joined)
