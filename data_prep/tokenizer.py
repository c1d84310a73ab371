"""Tokenizers: load any Hugging Face fast tokenizer, or train a small byte-fallback BPE with Gemma 2 special ids.

Real runs use the mmBERT (Gemma 2) tokenizer, by Hub id (``jhu-clsp/mmBERT-base``) or local folder. For smoke
runs and tests, :func:`train_tokenizer` builds a SentencePiece-style BPE with the ``tokenizers`` library:

* lossless: no normalisation except spaces -> ``▁`` (U+2581), words split on spaces with the ``▁`` kept, so
  ``decode(encode(text)) == text`` for any text that does not itself contain ``▁`` (the Gemma tokenizer shares
  that one exception);
* byte fallback: the 256 tokens ``<0x00>`` .. ``<0xFF>`` are in the vocabulary, so a character the merges never
  saw becomes its UTF-8 bytes instead of ``<unk>``;
* special ids as in Gemma 2: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4, bytes from 5
  (the mask takes the space before it, so it stands for a whole ``▁word`` piece);
  the post-processor wraps a sequence as ``<bos> ... <eos>``.

Language balance: each language (a ``<language>`` folder, script suffix dropped, summed over sources) contributes
at most ``chars_per_language`` characters, by default ``max_chars / number of languages``. Languages with less
text contribute all of it, so the largest language cannot drown the others: it gets the same share as any
language that has at least that much text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from mmbert_train.atomic import atomic_output_dir

SPECIAL_TOKENS = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"}
SPECIAL_IDS = {"pad": 0, "eos": 1, "bos": 2, "unk": 3, "mask": 4}
BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
DEFAULT_MAX_CHARS = 200_000_000
TRAINING_INFO = "tokenizer_training.json"


class TokenizerError(ValueError):
    """A tokenizer that cannot be used for mmBERT data (not fast, special ids missing or elsewhere)."""


def load_tokenizer(name_or_path: str):
    """Load a fast tokenizer with ``AutoTokenizer`` and check it has the Gemma 2 special-id layout."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot load tokenizer {name_or_path!r}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizerError(f"tokenizer {name_or_path!r} is not a fast (Rust) tokenizer; convert it first")
    check_special_ids(tokenizer, name_or_path)
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> dict:
    """What identifies a tokenizer's ids: ``{"sha256", "vocab_size", "special_ids"}``.

    ``sha256`` hashes the backend tokenizer exactly as tokenization uses it (its ``tokenizer.json``: vocabulary,
    merges, normalizer, pre-tokenizer, added tokens), serialised with sorted keys so the hash does not depend
    on how the file was formatted; the tokenizer's other files (config, special-tokens map) only name special
    tokens, which ``special_ids`` records. A tokenizer replaced at the same path or Hub id gets another
    fingerprint; the same tokenizer loaded from another copy gets the same one.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    canonical = json.dumps(spec, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return {
        "sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        "vocab_size": len(tokenizer),
        "special_ids": {role: getattr(tokenizer, f"{role}_token_id", None) for role in SPECIAL_IDS},
    }


def check_special_ids(tokenizer, name: str) -> None:
    """Raise :class:`TokenizerError` unless pad/eos/bos/unk/mask have ids 0/1/2/3/4."""
    wrong = []
    for role, expected in SPECIAL_IDS.items():
        actual = getattr(tokenizer, f"{role}_token_id", None)
        if actual != expected:
            wrong.append(f"{role}={actual} (expected {expected})")
    if wrong:
        raise TokenizerError(
            f"tokenizer {name!r} does not use the Gemma 2 special ids pad 0, eos 1, bos 2, unk 3, mask 4: "
            + ", ".join(wrong)
        )


def _language_texts(raw_dir: Path, text_field: str, chars_per_language: int | None, max_chars: int):
    """Yield training texts, at most ``chars_per_language`` characters per language; record counts in ``used``."""
    from data_prep.layout import discover_groups
    from data_prep.readers import read_documents
    from mmbert_train.data.languages import base_language

    groups = discover_groups(raw_dir)
    by_language = defaultdict(list)
    for group in groups:
        by_language[base_language(group.language)].append(group)
    cap = chars_per_language or max(1, max_chars // len(by_language))
    used: dict[str, int] = {}

    def texts() -> Iterator[str]:
        for language, lang_groups in sorted(by_language.items()):
            budget = cap
            for group in lang_groups:
                for path in group.files:
                    for _, text, _ in read_documents(path, text_field):
                        if text is None:
                            continue
                        if len(text) > budget:
                            text = text[:budget]
                        budget -= len(text)
                        yield text
                        if budget <= 0:
                            break
                    if budget <= 0:
                        break
                if budget <= 0:
                    break
            used[language] = cap - budget

    return texts(), used, cap


def build_tokenizer(texts, vocab_size: int, show_progress: bool = False):
    """Train the byte-fallback BPE on an iterator of texts; returns a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = [SPECIAL_TOKENS[role] for role in SPECIAL_IDS]  # in id order 0..4
    min_vocab = len(specials) + len(BYTE_TOKENS) + 1
    if vocab_size < min_vocab:
        raise TokenizerError(f"--vocab-size must be at least {min_vocab} (5 special + 256 byte tokens + 1)")
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"], byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # Byte tokens go in as "special" so they take ids 5..260 and never take part in merges; they are made
        # ordinary vocabulary entries again below.
        special_tokens=specials + BYTE_TOKENS,
        limit_alphabet=1000,
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer)
    # Drop the byte tokens from the added (special) tokens: they stay in the BPE vocabulary, reachable only by
    # byte fallback, and decoding with skip_special_tokens keeps them.
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in set(BYTE_TOKENS)]
    # The mask takes the space before it, as ModernBERT's and RoBERTa's tokenizers do: "in <mask> and" is
    # "in", <mask>, "▁and", so the mask stands for a whole "▁word" piece. Without it a lone "▁" precedes the mask
    # and a fill-mask query asks for a word-internal piece the model never saw after "▁".
    for token in spec["added_tokens"]:
        if token["content"] == SPECIAL_TOKENS["mask"]:
            token["lstrip"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, SPECIAL_IDS["bos"]), (eos, SPECIAL_IDS["eos"])],
    )
    return tok


def save_tokenizer(tok, out_dir: Path, max_length: int = 8192):
    """Save as a folder that ``AutoTokenizer.from_pretrained`` loads with all special tokens set."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        eos_token=SPECIAL_TOKENS["eos"],
        bos_token=SPECIAL_TOKENS["bos"],
        unk_token=SPECIAL_TOKENS["unk"],
        mask_token=AddedToken(
            SPECIAL_TOKENS["mask"], lstrip=True, rstrip=False, normalized=False, special=True
        ),
        cls_token=SPECIAL_TOKENS["bos"],  # mmBERT: cls = bos, sep = eos
        sep_token=SPECIAL_TOKENS["eos"],
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )
    check_special_ids(hf, str(out_dir))
    hf.save_pretrained(str(out_dir))
    return hf


def train_tokenizer(
    raw_dir: str | Path,
    out_dir: str | Path,
    vocab_size: int,
    *,
    text_field: str = "text",
    chars_per_language: int | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    overwrite: bool = False,
    show_progress: bool = False,
) -> dict:
    """Train on ``RAW/<source>/<language>/`` and write an ``AutoTokenizer`` folder to ``out_dir``.

    Writes into a temporary sibling folder and renames it, so ``out_dir`` is either absent or complete.
    Returns the training summary that is also saved as ``tokenizer_training.json``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    texts, used, cap = _language_texts(raw_dir, text_field, chars_per_language, max_chars)
    tok = build_tokenizer(texts, vocab_size, show_progress=show_progress)
    info = {
        "input": str(raw_dir),
        "vocab_size_requested": vocab_size,
        "vocab_size": tok.get_vocab_size(),
        "chars_per_language_cap": cap,
        "characters_used": dict(sorted(used.items())),
    }
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        save_tokenizer(tok, tmp)
        with open(tmp / TRAINING_INFO, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, ensure_ascii=False)
    return info


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mmbert prep train-tokenizer",
        description="Train a small byte-fallback BPE tokenizer with Gemma 2 special ids on RAW/<source>/<language>/.",
    )
    parser.add_argument("--input", required=True, help="raw corpus folder RAW/<source>/<language>/<files>")
    parser.add_argument("--output", required=True, help="folder to write (AutoTokenizer-loadable)")
    parser.add_argument(
        "--vocab-size", type=int, required=True, help="vocabulary size incl. 261 special/byte tokens"
    )
    parser.add_argument(
        "--text-field", default="text", help="JSON/parquet field holding the text (default: text)"
    )
    parser.add_argument(
        "--chars-per-language",
        type=int,
        default=None,
        help="cap per language (default: --max-chars / #languages)",
    )
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="total character budget")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    info = train_tokenizer(
        args.input,
        args.output,
        args.vocab_size,
        text_field=args.text_field,
        chars_per_language=args.chars_per_language,
        max_chars=args.max_chars,
        overwrite=args.overwrite,
        show_progress=sys.stderr.isatty(),
    )
    used = info["characters_used"]
    print(
        f"trained tokenizer: vocab {info['vocab_size']} (asked {info['vocab_size_requested']}) on "
        f"{sum(used.values()):,} characters from {len(used)} languages (cap {info['chars_per_language_cap']:,} "
        f"per language) -> {args.output}"
    )
    if info["vocab_size"] < info["vocab_size_requested"]:
        print(
            "note: the corpus has too little text for the requested vocabulary; ids stay below --vocab-size"
        )
    return 0
