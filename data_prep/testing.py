"""Small fixtures for tests (ours and other modules'): a multilingual raw corpus, a tokenizer, an MDS folder.

Everything is written into a folder the caller owns (pytest's ``tmp_path``); nothing touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

# A few sentences per script; the keys are the language folders they go in.
SAMPLE_TEXTS: dict[str, list[str]] = {
    "eng": [
        "All human beings are born free and equal in dignity and rights.",
        "Everyone has the right to life, liberty and security of person.",
        "No one shall be held in slavery or servitude;  the slave trade shall be prohibited.",
        "Everyone has the right to freedom of thought,\nconscience and religion.\n",
    ],
    "rus_Cyrl": [
        "Все люди рождаются свободными и равными в своем достоинстве и правах.",
        "Каждый человек имеет право на жизнь, на свободу и на личную неприкосновенность.",
        "Никто не должен содержаться в рабстве или в подневольном состоянии.",
    ],
    "arb": [
        "يولد جميع الناس أحرارًا متساوين في الكرامة والحقوق.",
        "لكل فرد الحق في الحياة والحرية وسلامة شخصه.",
        "لا يجوز استرقاق أحد أو استعباده.",
    ],
    "hin": [
        "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता और समानता प्राप्त है।",
        "प्रत्येक व्यक्ति को जीवन, स्वाधीनता और वैयक्तिक सुरक्षा का अधिकार है।",
    ],
    "cmn_Hani": [
        "人人生而自由,在尊严和权利上一律平等。他们赋有理性和良心,并应以兄弟关系的精神相对待。",
        "人人有权享有生命、自由和人身安全。",
        "任何人不得使为奴隶或奴役；一切形式的奴隶制度和奴隶买卖,均应予以禁止。",
    ],
    "amh": [
        "የሰው ልጅ ሁሉ ሲወለድ ነጻና በክብርና በመብትም እኩልነት ያለው ነው።",
        "እያንዳንዱ ሰው በሕይወት የመኖር፣ የነጻነትና የደህንነት መብት አለው።",
    ],
    "ell": ["Όλοι οι άνθρωποι γεννιούνται ελεύθεροι και ίσοι στην αξιοπρέπεια και τα δικαιώματα."],
    "tha": ["มนุษย์ทั้งหลายเกิดมามีอิสระและเสมอภาคกันในเกียรติศักดิ์และสิทธิ"],
    "code": ["def add(a, b):\n    return a + b  # 😀 <mask> stays text\n"],
}


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON value per line (strings are written as-is, to make faulty lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(record if isinstance(record, str) else json.dumps(record, ensure_ascii=False))
            f.write("\n")
    return path


def make_raw_corpus(root: Path, source: str = "web", repeat: int = 1) -> Path:
    """``root/<source>/<language>/part.jsonl`` with :data:`SAMPLE_TEXTS` (each text suffixed with its index)."""
    root = Path(root)
    for language, texts in SAMPLE_TEXTS.items():
        docs = [{"text": f"{text} [{i}]"} for i in range(repeat) for text in texts]
        write_jsonl(root / source / language / "part.jsonl", docs)
    return root


def make_tokenizer(out_dir: Path, vocab_size: int = 600) -> Path:
    """Train the byte-fallback BPE of :mod:`data_prep.tokenizer` on :data:`SAMPLE_TEXTS` into ``out_dir``."""
    from data_prep.tokenizer import build_tokenizer, save_tokenizer

    texts = [t for texts in SAMPLE_TEXTS.values() for t in texts]
    save_tokenizer(build_tokenizer(texts, vocab_size), Path(out_dir))
    return Path(out_dir)


def make_mds(root: Path, max_seq_len: int = 64, heldout_fraction: float = 0.2, repeat: int = 3) -> Path:
    """A finished ``root/mds`` (with manifest) tokenized from :func:`make_raw_corpus` by :func:`make_tokenizer`."""
    from data_prep.tokenize import plan_raw, run_tokenize

    root = Path(root)
    raw = make_raw_corpus(root / "raw", repeat=repeat)
    tok = make_tokenizer(root / "tokenizer")
    run_tokenize(
        plan_raw(raw), root / "mds", str(tok), max_seq_len=max_seq_len, heldout_fraction=heldout_fraction,
        progress=False, log=lambda _: None,
    )  # fmt: skip
    return root / "mds"
