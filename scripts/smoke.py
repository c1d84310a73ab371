"""`make smoke`: the whole mmBERT chain at toy scale on the UDHR sample corpus, on CPU, in a few minutes.

    prep udhr -> train-tokenizer -> tokenize -> plan (each phase) -> pretrain -> midtrain
    -> decay Eng / Cont / All (from the same midtrain checkpoint) -> TIES merge -> HF export -> fill-mask

Every step runs the command a user would run (``mmbert ...``, ``python train.py ...``). Before and after each
phase the held-out text of the phase's languages is scored at ONE fixed mask ratio and seed (data.eval in
recipes/smoke/_common.yaml), so the numbers compare across phases whose training mask ratios differ; the run fails
unless the loss falls in every phase and pre-training clearly beats a unigram model (top-1 accuracy at least twice
its, loss 0.5 nats lower). The last line is ``final model: <Hugging Face directory>``.

Prepared data is reused on a rerun (each prep step skips finished work); checkpoints, merge and export are
redone from scratch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path("build/smoke")
RAW, TOKENIZER, MDS = BUILD / "raw", BUILD / "tokenizer", BUILD / "mds"
CHECKPOINTS, MERGED, EXPORT = BUILD / "checkpoints", BUILD / "merged", BUILD / "hf"
VOCAB_SIZE = 4096  # recipes/smoke/_common.yaml: model.vocab_size
PREP_MAX_SEQ_LEN = 512
ENGLISH_SOURCE = "udhr_eng"  # recipes/smoke/decay_eng.yaml
PHASES = [  # (name, recipe); the three decays start from the same midtrain checkpoint
    ("pretrain", "recipes/smoke/pretrain.yaml"),
    ("midtrain", "recipes/smoke/midtrain.yaml"),
    ("decay_eng", "recipes/smoke/decay_eng.yaml"),
    ("decay_cont", "recipes/smoke/decay_cont.yaml"),
    ("decay_all", "recipes/smoke/decay.yaml"),
]
# UDHR Article 3, a training text. A 4 x 64 model after a few hundred steps fills frequent words from their
# context ("the" after "has" and before "right"), not rarer ones such as "dignity" (three tokens here anyway).
FILL_MASK_TEXT = "Everyone has <mask> right to life, liberty and security of person."
FILL_MASK_ANSWER = "the"

BIN = Path(sys.executable).parent
MMBERT = [str(BIN / "mmbert")] if (BIN / "mmbert").exists() else [sys.executable, "-m", "mmbert_train.cli"]


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def run(*args: str, env: dict | None = None) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(list(args), check=True, env={**os.environ, **(env or {})})


def prepare_data(workers: int) -> None:
    step("sample corpus: mmbert prep udhr")
    if (RAW / "udhr").is_dir() and any((RAW / "udhr").iterdir()):
        print(f"{RAW / 'udhr'} is there; reusing it")
    else:
        run(*MMBERT, "prep", "udhr", "--output", str(RAW))
    step("tokenizer: mmbert prep train-tokenizer")
    if (TOKENIZER / "tokenizer.json").is_file():
        print(f"{TOKENIZER} is there; reusing it")
    else:
        run(*MMBERT, "prep", "train-tokenizer", "--input", str(RAW), "--output", str(TOKENIZER),
            "--vocab-size", str(VOCAB_SIZE))  # fmt: skip
    step("tokenize to MDS: mmbert prep tokenize (finished languages are skipped on a rerun)")
    run(*MMBERT, "prep", "tokenize", "--input", str(RAW), "--output", str(MDS), "--tokenizer", str(TOKENIZER),
        "--max-seq-len", str(PREP_MAX_SEQ_LEN), "--workers", str(workers), "--no-progress")  # fmt: skip
    # Decay-Eng takes English as a fixed-share source, as the real recipe takes DCLM: give it its own source
    # folder (a copy of udhr/eng) and rebuild the manifest with `mmbert prep stats`.
    english = MDS / ENGLISH_SOURCE / "eng"
    if not english.is_dir():
        step(f"English as its own source for Decay-Eng: {english} + mmbert prep stats")
        shutil.copytree(MDS / "udhr" / "eng", english)
        run(*MMBERT, "prep", "stats", str(MDS))


def plan_phases() -> None:
    (BUILD / "plans").mkdir(parents=True, exist_ok=True)
    recipes = [recipe for _, recipe in PHASES]
    step("sampling plans of the five phases: mmbert plan " + " ".join(recipes))
    run(*MMBERT, "plan", *recipes, "--top", "12", "--out", str(BUILD / "plans" / "smoke"))


class HeldoutScorer:
    """Held-out MLM loss / accuracy over a phase's languages, the same masked tokens for every model.

    The held-out set is the phase recipe's (``data.eval``: one mask ratio, seed and length for every phase),
    grouped as one group of the phase's languages, read from the ``udhr`` source only (``udhr_eng`` repeats its
    English)."""

    def __init__(self) -> None:
        self.cache: dict[str, object] = {}

    def heldout(self, recipe):
        from mmbert_train.evaluation import HeldoutSet

        key = str(recipe.data.languages)
        if key not in self.cache:
            model = recipe.model_config
            self.cache[key] = HeldoutSet.from_data_config(
                recipe.data,
                vocab_size=model.vocab_size,
                mask_token_id=model.mask_token_id,
                groups={"phase": recipe.data.languages},
                sources=["udhr"],
            )
        return self.cache[key]

    def languages(self, recipe) -> list[str]:
        return self.heldout(recipe).groups["phase"]

    def score(self, model, recipe) -> tuple[float, float]:
        from mmbert_train.evaluation import evaluate_model

        heldout = self.heldout(recipe)
        group = evaluate_model(model, heldout, heldout.groups).groups["phase"]
        return group.score.loss, group.score.accuracy


class UnigramModel:
    """The reference a model must beat to have learned more than token frequencies: every masked token is
    predicted from the training tokens' frequencies alone (add-one smoothed), whatever its context. Scored by the
    same `evaluate_model` as the real models (it answers the same call)."""

    def __init__(self, languages: list[str], vocab_size: int) -> None:
        import numpy as np
        import torch

        from mmbert_train.data.mds import iter_input_ids

        counts = np.ones(vocab_size, dtype=np.float64)
        for language in languages:
            for folder in sorted((MDS / "udhr").glob(f"{language}*")):
                for ids in iter_input_ids(folder):
                    counts += np.bincount(ids.astype(np.int64), minlength=vocab_size)[:vocab_size]
        self.log_probs = torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)
        from mmbert_train.constants import MASK_ID

        self.config = type(
            "Config",
            (),
            {"vocab_size": vocab_size, "max_position_embeddings": 1 << 30, "mask_token_id": MASK_ID},
        )()
        self.training = False

    def parameters(self):
        yield self.log_probs

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, input_ids, labels, **_):
        n = int((labels != -100).sum())
        return type("Out", (), {"logits": self.log_probs.expand(n, -1)})()


def start_model(recipe):
    """The weights a phase starts from, exactly as the trainer builds them (seeded init, or init_from)."""
    from mmbert_train.train.trainer import build_model

    return build_model(recipe)[0]


def final_model(recipe):
    from mmbert_train.model import load_pretrained

    return load_pretrained(Path(recipe.trainer.save_folder) / "latest-rank0.pt")


def train_phases(scorer: HeldoutScorer) -> list[dict]:
    from mmbert_train.config import load_recipe

    rows = []
    for name, recipe_path in PHASES:
        recipe = load_recipe(recipe_path)
        languages = scorer.languages(recipe)
        before = scorer.score(start_model(recipe), recipe)
        unigram = scorer.score(UnigramModel(languages, VOCAB_SIZE), recipe)
        step(f"train {name}: python train.py {recipe_path}")
        started = time.perf_counter()
        run(sys.executable, "train.py", recipe_path)
        seconds = time.perf_counter() - started
        after = scorer.score(final_model(recipe), recipe)
        rows.append(
            {"phase": name, "languages": len(languages), "before": before, "after": after, "seconds": seconds,
             "unigram": unigram, "recipe": recipe})  # fmt: skip
        print(f"{name}: held-out loss {before[0]:.3f} -> {after[0]:.3f} on {len(languages)} languages")
    return rows


def merge_and_export(rows: list[dict], scorer: HeldoutScorer) -> Path:
    decays = {row["phase"]: Path(row["recipe"].trainer.save_folder) / "latest-rank0.pt" for row in rows[2:]}
    base = Path(rows[1]["recipe"].trainer.save_folder) / "latest-rank0.pt"
    step("TIES merge of the three decay variants against the midtrain checkpoint: mmbert merge")
    run(*MMBERT, "merge", "--method", "ties", "--base", str(base), "--models", *map(str, decays.values()),
        "--density", "0.5", "--out", str(MERGED), "--tokenizer", str(TOKENIZER), "--overwrite",
        "--no-progress")  # fmt: skip
    step("Hugging Face export: mmbert export")
    run(*MMBERT, "export", str(MERGED), "--out", str(EXPORT), "--tokenizer", str(TOKENIZER), "--overwrite")
    from mmbert_train.model import load_pretrained

    decay_all = rows[-1]  # its "before" is the midtrain checkpoint on all languages: the merge's base
    merged = scorer.score(load_pretrained(EXPORT), decay_all["recipe"])
    rows.append(
        {"phase": "merge (TIES)", "languages": decay_all["languages"], "before": decay_all["before"],
         "after": merged, "seconds": float("nan"), "unigram": decay_all["unigram"]})  # fmt: skip
    return EXPORT


def fill_mask_predictions(model_dir: Path) -> list[tuple[str, float]]:
    """`mmbert fill-mask --json` on the exported model, run once: its top-5 (token, score) for the mask."""
    step("fill-mask with transformers on the exported model: mmbert fill-mask")
    args = [*MMBERT, "fill-mask", str(model_dir), FILL_MASK_TEXT, "--top-k", "5", "--json"]
    print("$ " + " ".join(args), flush=True)
    out = subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout
    return [(p["token_str"], p["score"]) for p in json.loads(out.strip().splitlines()[-1])[0]]


def print_table(rows: list[dict]) -> bool:
    print(
        "\nHeld-out MLM loss (nats per masked token; lower is better) and top-1 accuracy of the masked tokens,"
    )
    print(
        "at a fixed 15% mask ratio and seed 1234 on text no phase trained on, for each phase's own languages"
    )
    print(
        "(the merge row: all of them, vs the midtrain checkpoint it merges onto). 'unigram' is a model that knows"
    )
    print("only how often each token occurs in the training data: a phase beats it when it uses the context.")
    header = (
        f"{'phase':<14}{'langs':>6}{'loss before':>13}{'loss after':>12}{'unigram':>9}"
        f"{'acc before':>12}{'acc after':>11}{'unigram':>9}"
    )
    print(header + f"{'train s':>9}")
    print("-" * (len(header) + 9))
    ok = True
    for row in rows:
        (lb, ab), (la, aa), (lu, au) = row["before"], row["after"], row["unigram"]
        falls = la < lb
        ok &= falls or row["phase"].startswith("merge")
        mark = "" if falls else "  <- did not fall"
        print(f"{row['phase']:<14}{row['languages']:>6}{lb:>13.3f}{la:>12.3f}{lu:>9.3f}{ab:>12.3f}{aa:>11.3f}"
              f"{au:>9.3f}{row['seconds']:>9.0f}{mark}")  # fmt: skip
    return ok


def learned_beyond_unigram(row: dict) -> bool:
    """Print what pre-training achieved against the unigram model; True when it clearly used the context: held-out
    loss at least 0.5 nats below the unigram model's and top-1 accuracy at least twice its."""
    (loss, accuracy), (unigram_loss, unigram_accuracy) = row["after"], row["unigram"]
    print(
        f"\nafter pre-training, held-out masked tokens: top-1 accuracy {accuracy:.1%} vs the unigram model's "
        f"{unigram_accuracy:.1%} ({accuracy / max(unigram_accuracy, 1e-9):.1f}x), loss {unigram_loss - loss:.2f} "
        f"nats lower (perplexity {math.exp(loss):.0f} vs {math.exp(unigram_loss):.0f})"
    )
    return loss <= unigram_loss - 0.5 and accuracy >= 2 * unigram_accuracy


def print_fill_mask(predictions: list[tuple[str, float]]) -> None:
    print(
        f"\nfill-mask on the final model: {FILL_MASK_TEXT!r} (Article 3 of the UDHR, a training text; "
        f"the answer is {FILL_MASK_ANSWER!r})"
    )
    print("  " + ", ".join(f"{token.strip()!r} {score:.0%}" for token, score in predictions))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="tokenize worker processes")
    parser.add_argument("--skip-prep", action="store_true", help="reuse build/smoke/mds as it is")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    if not args.skip_prep:
        prepare_data(args.workers)
    plan_phases()
    for folder in (CHECKPOINTS, MERGED, EXPORT):
        shutil.rmtree(
            folder, ignore_errors=True
        )  # a fresh chain every time (autoresume would continue old runs)
    scorer = HeldoutScorer()
    rows = train_phases(scorer)
    export = merge_and_export(rows, scorer)
    predictions = fill_mask_predictions(export)
    ok = print_table(rows)
    learned = learned_beyond_unigram(rows[0])
    print_fill_mask(predictions)
    print(f"\nsmoke chain took {time.perf_counter() - started:.0f} s")
    if not ok:
        print("error: the held-out loss did not fall in every phase", file=sys.stderr)
        return 1
    if not learned:
        print("error: pre-training did not clearly beat the unigram model on held-out text", file=sys.stderr)
        return 1
    print(f"final model: {export.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
