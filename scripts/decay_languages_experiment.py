"""The decay-languages experiment: are languages added only in the decay phase learned? One command:

    make experiment
    python scripts/decay_languages_experiment.py --seeds 21 22 23 --jobs 2    # what `make experiment` runs
    python scripts/decay_languages_experiment.py --report-only          # rebuild the report from finished runs

For every seed it runs the recipes in ``recipes/experiments/decay_languages/`` on the UDHR sample corpus:

    pretrain (56 languages) -> midtrain (92) -> Decay-Eng / Decay-Cont (92) and Decay-All (447) -> TIES merge

then scores the final checkpoint of every phase, each decay variant and the merge with ``mmbert eval-mlm``'s code
on held-out UDHR articles (documents no phase trains on) at one fixed mask ratio (15%) and mask seed, for three
groups of languages: the pre-training ones, the mid-training-only ones and the decay-only ones. It writes
``docs/experiments/decay_languages.md`` (tables with the spread over seeds and the conclusions the numbers
support) and ``docs/experiments/decay_languages.png``.

Everything is resumable: data prep skips finished steps, a phase with ``done.json`` in its checkpoint folder is
not rerun (an interrupted one resumes from its last checkpoint, Composer's autoresume), finished merges and
evaluations are reused. Runs live under ``runs/decay_languages/`` (git-ignored); the corpus is never committed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmbert_train.atomic import atomic_output_dir, atomic_output_file, atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RECIPES = Path("recipes/experiments/decay_languages")  # relative to the repo root, where every step runs
RUN_DIR = Path("runs/decay_languages")
REPORT = Path("docs/experiments/decay_languages.md")

# phase -> the phase whose final checkpoint it starts from
PHASES: dict[str, str | None] = {
    "pretrain": None,
    "midtrain": "pretrain",
    "decay_eng": "midtrain",
    "decay_cont": "midtrain",
    "decay_all": "midtrain",
}
VARIANTS = ["pretrain", "midtrain", "decay_eng", "decay_cont", "decay_all", "merged"]
VARIANT_LABELS = {
    "pretrain": "end of pre-training",
    "midtrain": "end of mid-training",
    "decay_eng": "Decay-Eng",
    "decay_cont": "Decay-Cont",
    "decay_all": "Decay-All",
    "merged": "TIES merge",
}
GROUPS = ["pretrain", "midtrain_only", "decay_only"]
GROUP_LABELS = {
    "pretrain": "pre-training languages",
    "midtrain_only": "mid-training-only languages",
    "decay_only": "decay-only languages",
}

EVAL_MASK_RATIO = 0.15
EVAL_SEED = 1234
EVAL_MAX_SEQ_LEN = 256
EVAL_MAX_SAMPLES = 4  # held-out articles per language (UDHR articles: ~150 tokens)
DATA_SETTINGS = {"vocab_size": 8192, "max_seq_len": 512, "heldout_fraction": 0.2}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- language groups ----------------------------------------------------------------------------------------------


def read_languages(path: Path) -> list[str]:
    from mmbert_train.data.languages import read_language_file

    return read_language_file(path)


def language_groups(recipes: Path = RECIPES) -> dict[str, list[str]]:
    """The three disjoint groups: pretrain, midtrain minus pretrain, decay_all minus midtrain."""
    pre = read_languages(recipes / "languages" / "pretrain.txt")
    mid = read_languages(recipes / "languages" / "midtrain.txt")
    every = read_languages(recipes / "languages" / "decay_all.txt")
    if not set(pre) <= set(mid) <= set(every):
        raise SystemExit(f"{recipes}/languages: the sets must be nested (pretrain <= midtrain <= decay_all)")
    return {
        "pretrain": pre,
        "midtrain_only": [x for x in mid if x not in set(pre)],
        "decay_only": [x for x in every if x not in set(mid)],
    }


def scored_groups(groups: Mapping[str, list[str]], data: Path) -> dict[str, list[str]]:
    """The groups cut to the languages with held-out text (a language with one document has none)."""
    from mmbert_train.evaluation import all_heldout_languages

    have = set(all_heldout_languages(data / "mds", ["udhr"]))
    return {g: [x for x in langs if x in have] for g, langs in groups.items()}


# ---- steps ------------------------------------------------------------------------------------------------------


def run(cmd: Sequence[str], log_file: Path | None = None, env: Mapping[str, str] | None = None) -> float:
    """Run a command from the repo root (output to ``log_file`` when given); returns its wall time."""
    start = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    if log_file is None:
        if subprocess.run(list(cmd), cwd=REPO, env=full_env).returncode:
            raise SystemExit(f"failed: {' '.join(cmd)}")
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as f:
            proc = subprocess.run(list(cmd), cwd=REPO, env=full_env, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode:
            tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); last lines of {log_file}:\n{tail}")
    return time.perf_counter() - start


def mmbert(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmbert_train.cli", *args]


def prepare_data(data: Path, env: Mapping[str, str]) -> None:
    """UDHR raw text -> tokenizer -> MDS with a 20% held-out split; ``udhr_eng`` = a copy of the English text
    (Decay-Eng's fixed English source). Each step is skipped when its output exists."""
    raw, tok, mds = data / "raw", data / "tokenizer", data / "mds"
    if not (raw / "udhr").is_dir():
        log("data: mmbert prep udhr")
        run(mmbert("prep", "udhr", "--output", str(raw)), env=env)
    if not (tok / "tokenizer.json").exists():
        log("data: mmbert prep train-tokenizer")
        run(mmbert("prep", "train-tokenizer", "--input", str(raw), "--output", str(tok),
                   "--vocab-size", str(DATA_SETTINGS["vocab_size"])), env=env)  # fmt: skip
    eng = raw / "udhr_eng" / "eng"
    if not eng.is_dir():
        with atomic_output_dir(eng) as tmp:
            shutil.copytree(raw / "udhr" / "eng", tmp, dirs_exist_ok=True)
    from mmbert_train.data.manifest import load_manifest

    manifest = mds / "manifest.json"
    if not manifest.exists() or "udhr_eng" not in load_manifest(manifest)["sources"]:
        log("data: mmbert prep tokenize")
        run(mmbert("prep", "tokenize", "--input", str(raw), "--output", str(mds), "--tokenizer", str(tok),
                   "--max-seq-len", str(DATA_SETTINGS["max_seq_len"]),
                   "--heldout-fraction", str(DATA_SETTINGS["heldout_fraction"]), "--no-progress"), env=env)  # fmt: skip


def seed_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / f"seed{seed}"


def checkpoint(run_dir: Path, seed: int, phase: str) -> Path:
    return seed_dir(run_dir, seed) / phase / "latest-rank0.pt"


def phase_overrides(run_dir: Path, seed: int, phase: str, data: Path, scale: float) -> list[str]:
    from mmbert_train.config import load_recipe

    recipe = load_recipe(RECIPES / f"{phase}.yaml")
    folder = seed_dir(run_dir, seed) / phase
    batches = max(1, round(int(recipe.trainer.max_duration.removesuffix("ba")) * scale))
    out = [
        f"trainer.seed={seed}",
        f"data.shuffle_seed={seed}",
        f"data.root={data / 'mds'}",
        f"tokenizer={data / 'tokenizer'}",
        f"trainer.save_folder={folder}",
        f"trainer.run_name=decay-languages-{phase}-seed{seed}",
        f"trainer.max_duration={batches}ba",
        f"trainer.save_interval={batches}ba",
    ]
    if recipe.data.batch_warmup.tokens:
        out.append(f"data.batch_warmup.tokens={max(1, round(recipe.data.batch_warmup.tokens * scale))}")
    if recipe.scheduler.t_warmup.endswith("ba"):
        warm = int(recipe.scheduler.t_warmup.removesuffix("ba"))
        out.append(f"scheduler.t_warmup={min(warm, max(0, batches - 1))}ba")
    if PHASES[phase] is not None:
        out.append(f"init_from.path={checkpoint(run_dir, seed, PHASES[phase])}")
    return out


def tokens_seen(log_file: Path) -> int | None:
    """The last ``time/token`` Composer logged in a phase's log."""
    try:
        found = re.findall(r"time/token: (\d+)", log_file.read_text())
    except FileNotFoundError:
        return None
    return int(found[-1]) if found else None


def train_phase(
    run_dir: Path, seed: int, phase: str, data: Path, scale: float, env: Mapping[str, str]
) -> dict:
    folder = seed_dir(run_dir, seed) / phase
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    overrides = phase_overrides(run_dir, seed, phase, data, scale)
    log(f"seed {seed}: train {phase} ({' '.join(o for o in overrides if 'max_duration' in o)})")
    log_file = seed_dir(run_dir, seed) / "logs" / f"{phase}.log"
    cmd = [sys.executable, "train.py", str(RECIPES / f"{phase}.yaml"), *overrides]
    try:
        seconds = run(cmd, log_file, env)
    except SystemExit:
        # Streaming's clean_stale_shared_memory() unlinks every Streaming shared-memory name on the machine, so
        # two runs starting at the same moment (--jobs 2, or another user's job) can race on one; the phase
        # resumes from its last checkpoint (autoresume), so one retry is cheap.
        if "shared_memory" not in log_file.read_text():
            raise
        log(f"seed {seed}: {phase} hit a Streaming shared-memory race; retrying once")
        seconds = run(cmd, log_file, env)
    info = {"phase": phase, "seconds": seconds, "tokens": tokens_seen(log_file), "overrides": overrides}
    atomic_write_json(done, info)
    log(f"seed {seed}: {phase} done in {seconds:.0f}s ({info['tokens']} tokens)")
    return info


def merge(run_dir: Path, seed: int, data: Path, env: Mapping[str, str]) -> dict:
    out = seed_dir(run_dir, seed) / "merged"
    done = seed_dir(run_dir, seed) / "merged.json"
    if done.exists() and out.is_dir():
        return json.loads(done.read_text())
    models = ",".join(str(checkpoint(run_dir, seed, p)) for p in ("decay_eng", "decay_cont", "decay_all"))
    log(f"seed {seed}: TIES merge")
    seconds = run(
        mmbert("merge", str(RECIPES / "merge.yaml"), f"base={checkpoint(run_dir, seed, 'midtrain')}",
               f"models=[{models}]", f"out={out}", f"tokenizer={data / 'tokenizer'}", "--overwrite",
               "--no-progress"),
        seed_dir(run_dir, seed) / "logs" / "merge.log", env,
    )  # fmt: skip
    info = {"seconds": seconds}
    atomic_write_json(done, info)
    return info


def variant_path(run_dir: Path, seed: int, variant: str) -> Path:
    return seed_dir(run_dir, seed) / "merged" if variant == "merged" else checkpoint(run_dir, seed, variant)


def heldout_data_config(data: Path):
    """The data section held-out text is scored with: decay_all.yaml's (every language) on the prepared data,
    with the experiment's evaluation settings (EVAL_*)."""
    from mmbert_train.config import load_recipe

    overrides = [
        f"data.root={data / 'mds'}",
        f"data.eval.mask_ratio={EVAL_MASK_RATIO}",
        f"data.eval.seed={EVAL_SEED}",
        f"data.eval.max_seq_len={EVAL_MAX_SEQ_LEN}",
        f"data.eval.max_samples_per_language={EVAL_MAX_SAMPLES}",
    ]
    return load_recipe(RECIPES / "decay_all.yaml", overrides).data


def evaluate_seed(run_dir: Path, seed: int, data: Path, groups: Mapping[str, list[str]], heldout_cache: dict):
    """Score every variant of one seed; one JSON per variant under ``seed<S>/eval/`` (reused when present)."""
    from mmbert_train.evaluation import HeldoutSet, evaluate_model, write_json
    from mmbert_train.model import load_pretrained

    for variant in VARIANTS:
        out = seed_dir(run_dir, seed) / "eval" / f"{variant}.json"
        path = variant_path(run_dir, seed, variant)
        if out.exists() or not path.exists():
            continue
        model = load_pretrained(path, attn_backend="sdpa")
        key = (model.config.vocab_size, model.config.mask_token_id)
        if key not in heldout_cache:  # the same masked held-out tokens for every checkpoint
            heldout_cache[key] = HeldoutSet.from_data_config(
                heldout_data_config(data), vocab_size=key[0], mask_token_id=key[1],
                languages=[x for g in GROUPS for x in groups[g]], groups={g: groups[g] for g in GROUPS},
                sources=["udhr"],  # udhr_eng repeats udhr's English
            )  # fmt: skip
        heldout = heldout_cache[key]
        start = time.perf_counter()
        report = evaluate_model(model, heldout, heldout.groups)
        report.settings = {"model": str(path), **report.settings, "seconds": time.perf_counter() - start}
        write_json(report, out)
        log(f"seed {seed}: eval {variant}: " + ", ".join(
            f"{g} {report.groups[g].score.accuracy:.4f}" for g in GROUPS))  # fmt: skip


def decay_exposure(data: Path, groups: Mapping[str, list[str]], phase_tokens: float) -> dict[str, float]:
    """What Decay-All gives a decay-only language on average: tokens (its tau share x the phase's tokens) and
    epochs of its training text, from the sampling plan of ``decay_all.yaml`` over the prepared data."""
    from mmbert_train.config import load_recipe
    from mmbert_train.data.sampling import build_phase_plan

    recipe = load_recipe(RECIPES / "decay_all.yaml", [f"data.root={data / 'mds'}"])
    plan = build_phase_plan(recipe.data)
    langs = [x for x in groups["decay_only"] if x in plan.language_shares]
    tokens = [plan.language_shares[x] * phase_tokens for x in langs]
    epochs = [t / plan.language_tokens[x] for t, x in zip(tokens, langs)]
    return {
        "tokens": sum(tokens) / len(tokens),
        "epochs": sum(epochs) / len(epochs),
        "share": sum(plan.language_shares[x] for x in langs),
    }


# ---- report -------------------------------------------------------------------------------------------------------


@dataclass
class Results:
    """acc[variant][group][seed], loss likewise; per language: lang_acc[variant][seed][language], lang_loss too."""

    seeds: list[int]
    acc: dict[str, dict[str, dict[int, float]]]
    loss: dict[str, dict[str, dict[int, float]]]
    lang_acc: dict[str, dict[int, dict[str, float]]]
    masked_tokens: dict[str, int]
    lang_loss: dict[str, dict[int, dict[str, float]]] = dataclasses.field(default_factory=dict)
    eval_seconds: dict[int, float] = dataclasses.field(default_factory=dict)


def load_results(run_dir: Path, seeds: Sequence[int]) -> Results:
    acc: dict = {v: {g: {} for g in GROUPS} for v in VARIANTS}
    loss: dict = {v: {g: {} for g in GROUPS} for v in VARIANTS}
    lang_acc: dict = {v: {} for v in VARIANTS}
    lang_loss: dict = {v: {} for v in VARIANTS}
    eval_seconds: dict[int, float] = {}
    masked: dict[str, int] = {}
    for seed in seeds:
        for variant in VARIANTS:
            path = seed_dir(run_dir, seed) / "eval" / f"{variant}.json"
            if not path.exists():
                continue
            report = json.loads(path.read_text())
            for g in GROUPS:
                acc[variant][g][seed] = report["groups"][g]["accuracy"]
                loss[variant][g][seed] = report["groups"][g]["loss"]
                masked[g] = report["groups"][g]["masked_tokens"]
            lang_acc[variant][seed] = {k: v["accuracy"] for k, v in report["languages"].items()}
            lang_loss[variant][seed] = {k: v["loss"] for k, v in report["languages"].items()}
            eval_seconds[seed] = eval_seconds.get(seed, 0.0) + report.get("seconds", 0.0)
    return Results(list(seeds), acc, loss, lang_acc, masked, lang_loss, eval_seconds)


def cell(values: Mapping[int, float], scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """``mean (min–max)`` over seeds (``+mean [min, max]`` for differences), or ``—`` when no seed has it."""
    vals = [v * scale for v in values.values() if not math.isnan(v)]
    if not vals:
        return "—"
    mean = sum(vals) / len(vals)
    f = f"+.{digits}f" if signed else f".{digits}f"
    if len(vals) == 1:
        return f"{mean:{f}} (1 seed)"
    if signed:
        return f"{mean:{f}} [{min(vals):{f}}, {max(vals):{f}}]"
    return f"{mean:{f}} ({min(vals):{f}}–{max(vals):{f}})"


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict[int, float]:
    """Per-seed differences a - b over the seeds both have."""
    return {s: a[s] - b[s] for s in a if s in b}


def win_rate(
    results: Results, better: str, worse: str, languages: Sequence[str], metric: str = "loss"
) -> dict[int, tuple[float, float]]:
    """Per seed: (share of ``languages`` on which ``better`` beats ``worse``, share of ties), by held-out loss
    (lower wins; continuous, so ties do not happen) or accuracy (higher wins; with ~90 masked tokens per language
    many languages tie)."""
    table = results.lang_loss if metric == "loss" else results.lang_acc
    sign = -1.0 if metric == "loss" else 1.0
    out = {}
    for seed in results.seeds:
        a, b = table[better].get(seed), table[worse].get(seed)
        if a is None or b is None:
            continue
        langs = [x for x in languages if x in a and x in b]
        if langs:
            wins = sum(sign * (a[x] - b[x]) > 0 for x in langs) / len(langs)
            ties = sum(a[x] == b[x] for x in langs) / len(langs)
            out[seed] = (wins, ties)
    return out


def _sign_stable(diffs: Mapping[int, float]) -> str:
    """'up' / 'down' when every seed moves the same way, else 'mixed' (or 'none' without data)."""
    if not diffs:
        return "none"
    if all(d > 0 for d in diffs.values()):
        return "up"
    if all(d < 0 for d in diffs.values()):
        return "down"
    return "mixed"


def kept_share(results: Results, group: str) -> dict[int, float]:
    """(merged - best of Eng/Cont) / (All - best of Eng/Cont) per seed: how much of Decay-All's gain the merge keeps."""
    out = {}
    for seed in results.seeds:
        try:
            all_ = results.acc["decay_all"][group][seed]
            merged = results.acc["merged"][group][seed]
            other = max(results.acc["decay_eng"][group][seed], results.acc["decay_cont"][group][seed])
        except KeyError:
            continue
        if all_ - other > 0:
            out[seed] = (merged - other) / (all_ - other)
    return out


def write_plot(results: Results, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(GROUPS), figsize=(13, 4.2), sharey=False)
    colors = ["#bbbbbb", "#888888", "#4c72b0", "#55a868", "#c44e52", "#8172b2"]
    for ax, group in zip(axes, GROUPS):
        for i, variant in enumerate(VARIANTS):
            vals = [v * 100 for v in results.acc[variant][group].values()]
            if not vals:
                continue
            ax.bar(i, sum(vals) / len(vals), color=colors[i], width=0.75)
            ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(VARIANTS)))
        ax.set_xticklabels(
            [VARIANT_LABELS[v].replace("end of ", "") for v in VARIANTS], rotation=35, ha="right"
        )
        ax.set_title(GROUP_LABELS[group])
        ax.set_ylabel("held-out masked-token accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"Held-out MLM accuracy at {EVAL_MASK_RATIO:.0%} masking (bars: mean over seeds {results.seeds}; dots: seeds)"
    )
    fig.tight_layout()
    with atomic_output_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _points(d: Mapping[int, float]) -> str:
    return ", ".join(f"{v * 100:+.2f}" for v in d.values())


def _consistent(acc_diffs: Mapping[int, float], loss_diffs: Mapping[int, float], wins: Mapping) -> str:
    """'up' when in every seed the accuracy rises, the loss falls and most languages' loss falls; 'down' for the
    mirror image; else 'mixed'."""
    acc_t, loss_t = _sign_stable(acc_diffs), _sign_stable(loss_diffs)
    if acc_t == "up" and loss_t == "down" and all(w > 0.5 for w, _ in wins.values()):
        return "up"
    if acc_t == "down" and loss_t == "up" and all(w < 0.5 for w, _ in wins.values()):
        return "down"
    return "mixed"


def conclusions(
    results: Results, groups: Mapping[str, list[str]], exposure: Mapping[str, float] | None = None
) -> list[str]:
    """Statements the numbers support, worded from the per-seed differences: a direction is claimed only when
    every seed agrees on accuracy and loss, and most of the group's languages agree in every seed."""
    acc, loss = results.acc, results.loss
    dec = "decay_only"
    d_cont = paired(acc["decay_all"][dec], acc["decay_cont"][dec])
    d_eng = paired(acc["decay_all"][dec], acc["decay_eng"][dec])
    l_cont = paired(loss["decay_all"][dec], loss["decay_cont"][dec])
    if not d_cont:
        return ["The decay runs are not finished for any seed: no conclusion yet."]
    wins = win_rate(results, "decay_all", "decay_cont", groups[dec])
    share = ", ".join(f"{w:.0%}" for w, _ in wins.values())
    lines = []
    trend = _consistent(d_cont, l_cont, wins)
    if trend == "up" and _sign_stable(d_eng) == "up":
        lines.append(
            "**The decay-only languages are learned in the decay phase.** On them Decay-All beats Decay-Cont by "
            f"{_points(d_cont)} points of held-out accuracy (per seed) and Decay-Eng by {_points(d_eng)}; its "
            f"held-out loss is lower by {', '.join(f'{-v:.2f}' for v in l_cont.values())} nats, and lower than "
            f"Decay-Cont's on {share} of these languages one by one."
        )
    elif trend == "down":
        lines.append(
            f"**At this scale Decay-All does not help the decay-only languages**: it trails Decay-Cont on them by "
            f"{_points(d_cont)} points (per seed; lower loss on {share} of the languages)."
        )
    else:
        lines.append(
            "**No consistent effect on the decay-only languages at this scale**: Decay-All minus Decay-Cont is "
            f"{_points(d_cont)} accuracy points and {', '.join(f'{v:+.2f}' for v in l_cont.values())} nats of "
            f"loss across seeds (lower loss on {share} of the languages), not the same direction in every seed."
        )
    before = acc["pretrain"][dec]
    if before:
        lines.append(
            f"Before any decay-only text is seen, these languages already score "
            f"{', '.join(f'{v * 100:.1f}' for v in before.values())}% (end of pre-training) and "
            f"{', '.join(f'{v * 100:.1f}' for v in acc['midtrain'][dec].values())}% (end of mid-training): "
            "shared subwords, punctuation, numbers and related languages transfer. Relative to the end of "
            f"mid-training, Decay-Cont moves them by {_points(paired(acc['decay_cont'][dec], acc['midtrain'][dec]))}"
            f" points and Decay-All by {_points(paired(acc['decay_all'][dec], acc['midtrain'][dec]))}."
        )
    for group in ("pretrain", "midtrain_only"):
        d = paired(acc["decay_all"][group], acc["decay_cont"][group])
        if not d:
            continue
        tail = {
            "up": ": spreading the decay over every language costs them nothing here.",
            "down": ": the cost of spreading the decay over 447 languages instead of 92"
            + (
                f" (tau 0.3 gives the 92 {1 - exposure['share']:.0%} of Decay-All's tokens)."
                if exposure
                else "."
            ),
        }.get(_sign_stable(d), ", not the same direction in every seed.")
        lines.append(f"On the {GROUP_LABELS[group]}, Decay-All vs Decay-Cont: {_points(d)} points{tail}")
    kept = kept_share(results, dec)
    if trend == "up" and kept:
        shape = (
            ": the same order as the paper's Faroese numbers (59.0 Decay-Eng < 73.5 merged < 76.0 Decay-All)."
            if all(0 < k < 1 for k in kept.values())
            else "."
        )
        lines.append(
            "The TIES merge keeps "
            + ", ".join(f"{k:.0%}" for k in kept.values())
            + " (per seed) of Decay-All's "
            f"accuracy gain over the better of Decay-Eng / Decay-Cont on the decay-only languages{shape}"
        )
    for group in GROUPS:
        d = paired(acc["merged"][group], acc["decay_cont"][group])
        if d:
            lines.append(f"On the {GROUP_LABELS[group]}, the merge vs Decay-Cont: {_points(d)} points.")
    return lines


def write_report(
    results: Results,
    path: Path,
    plot: Path,
    *,
    groups: Mapping[str, list[str]],
    runs: Mapping[int, dict],
    command: str,
    missing: Sequence[str],
    machine: str,
    exposure: Mapping[str, float] | None = None,
) -> Path:
    out = []
    out.append("# Are languages added only in the decay phase learned? A miniature on the UDHR\n")
    out.append(
        "_Generated by `scripts/decay_languages_experiment.py` (`make experiment`); do not edit by hand. "
        f"Command: `{command}`. Machine: {machine}._\n"
    )
    out.append(
        "mmBERT adds ~1700 low-resource languages only in its short decay phase and reports that they are learned "
        "(e.g. Faroese QA F1 59.0 with Decay-Eng, 76.0 with Decay-All, 73.5 after the TIES merge, base model). "
        "This experiment runs the same chain of phases at toy scale on the UDHR sample corpus and measures "
        "masked-token accuracy on held-out UDHR articles, which no phase trains on.\n"
    )
    out.append("## Setup\n")
    out.append(
        f"- Languages (nested, mmBERT's sets cut to the UDHR): {len(groups['pretrain'])} pre-training languages "
        f"(those of mmBERT's 60 in the UDHR), +{len(groups['midtrain_only'])} in mid-training (mmBERT's 110), "
        f"+{len(groups['decay_only'])} only in Decay-All (every other UDHR language with held-out text).\n"
        "- Phases (`recipes/experiments/decay_languages/`, extending `recipes/smoke/`): pre-training 30% masking, "
        "tau 0.7, 128 tokens, RoPE theta 10k, warmup + constant LR; mid-training 15%, tau 0.5, 256 tokens, theta "
        "160k, constant LR; three decays from the same mid-training checkpoint with 5% masking, tau 0.3, 1 - sqrt "
        "LR decay: Decay-Eng (92 languages, English a fixed 18% share), Decay-Cont (92 languages), Decay-All (447). "
        "TIES merge of the three against the mid-training checkpoint (density 0.5, equal weights, lambda 1, as "
        "`recipes/base_merge.yaml`).\n"
        "- Model: 4 layers x 128 (ModernBERT layout, global attention in layers 0 and 3, local window 64), 8192-token "
        "BPE tokenizer trained on the whole UDHR, 1.7M parameters.\n"
        f"- Evaluation: `mmbert eval-mlm`'s code on the held-out split (20% of each language's articles, at most "
        f"{EVAL_MAX_SAMPLES} per language), one fixed mask ratio ({EVAL_MASK_RATIO:.0%}) and mask seed "
        f"({EVAL_SEED}) for every checkpoint, so every model is scored on exactly the same masked tokens. Group "
        "accuracy = correct / masked tokens over the group's languages (masked tokens per group: "
        + ", ".join(f"{GROUP_LABELS[g]} {results.masked_tokens.get(g, 0):,}" for g in GROUPS)
        + ").\n"
    )
    if runs:
        out.append("Phase lengths and wall time (seed: phase tokens / seconds):\n")
        out.append("| seed | " + " | ".join(PHASES) + " | merge | total incl. evaluation |")
        out.append("|---|" + "---|" * (len(PHASES) + 2))
        for seed, info in runs.items():
            cells = []
            for phase in PHASES:
                p = info.get(phase)
                cells.append(f"{(p.get('tokens') or 0) / 1e6:.2f}M / {p['seconds']:.0f}s" if p else "—")
            m = info.get("merge")
            cells.append(f"{m['seconds']:.0f}s" if m else "—")
            total = sum((info.get(p) or {}).get("seconds", 0) for p in PHASES) + (m or {}).get("seconds", 0)
            total += results.eval_seconds.get(seed, 0.0)
            cells.append(f"{total / 60:.1f} min")
            out.append(f"| {seed} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("## Held-out masked-token accuracy (%)\n")
    out.append(f"Mean over seeds {results.seeds}, with (min–max) across seeds.\n")
    out.append("| checkpoint | " + " | ".join(GROUP_LABELS[g] for g in GROUPS) + " |")
    out.append("|---|" + "---|" * len(GROUPS))
    for v in VARIANTS:
        out.append(f"| {VARIANT_LABELS[v]} | " + " | ".join(cell(results.acc[v][g]) for g in GROUPS) + " |")
    out.append("")
    out.append("## Held-out MLM loss (nats per masked token)\n")
    out.append("| checkpoint | " + " | ".join(GROUP_LABELS[g] for g in GROUPS) + " |")
    out.append("|---|" + "---|" * len(GROUPS))
    for v in VARIANTS:
        out.append(
            f"| {VARIANT_LABELS[v]} | " + " | ".join(cell(results.loss[v][g], 1.0, 3) for g in GROUPS) + " |"
        )
    out.append("")
    out.append("## Differences (accuracy points, mean [min, max] over seeds)\n")
    out.append("| comparison | " + " | ".join(GROUP_LABELS[g] for g in GROUPS) + " |")
    out.append("|---|" + "---|" * len(GROUPS))
    for a, b in [("decay_all", "decay_cont"), ("decay_all", "decay_eng"), ("decay_all", "midtrain"),
                 ("merged", "decay_cont"), ("merged", "decay_all")]:  # fmt: skip
        out.append(
            f"| {VARIANT_LABELS[a]} − {VARIANT_LABELS[b]} | "
            + " | ".join(cell(paired(results.acc[a][g], results.acc[b][g]), signed=True) for g in GROUPS)
            + " |"
        )
    by_loss = win_rate(results, "decay_all", "decay_cont", groups["decay_only"], "loss")
    by_acc = win_rate(results, "decay_all", "decay_cont", groups["decay_only"], "accuracy")
    if by_loss:
        out.append(
            "\nDecay-only languages one by one, Decay-All vs Decay-Cont, per seed: lower held-out loss on "
            + ", ".join(f"{w:.0%}" for w, _ in by_loss.values())
            + "; higher accuracy on "
            + ", ".join(f"{w:.0%} (ties {t:.0%})" for w, t in by_acc.values())
            + f" (about {results.masked_tokens.get('decay_only', 0) // max(1, len(groups['decay_only']))} masked "
            "tokens per language, so accuracy often ties)."
        )
    out.append(f"\n![held-out accuracy per group and checkpoint]({plot.name})\n")
    out.append("## What the numbers say\n")
    for line in conclusions(results, groups, exposure):
        out.append(f"- {line}")
    out.append("")
    out.append("## What this miniature can and cannot show\n")
    out.append(
        "- What it tests: whether a language that no earlier phase saw, trained only during a decay phase at 5% "
        "masking and a decaying LR, improves on text of that language the model never trained on, compared with "
        "decays that leave it out. Held-out articles are disjoint from the training articles of the same "
        "language, but the UDHR is one text in many translations, so a held-out article's content may be trained "
        "on in another language; with shared subwords and scripts that is transfer the paper relies on too, but "
        "it is stronger here than in web text.\n"
        "- The scale differs from mmBERT's by orders of magnitude: 1.7M parameters instead of 307M, a few million "
        "tokens instead of 3T, an 8k tokenizer instead of Gemma's 256k, ~5k training tokens per UDHR language "
        "instead of FineWeb2. The decay here is as long as mid-training (mmBERT: 100B vs 600B tokens) so that "
        "Decay-All gives each new language a measurable amount of text"
        + (
            f": {exposure['share']:.0%} of Decay-All's tokens go to the decay-only languages, on average "
            f"{exposure['tokens']:,.0f} tokens each ({exposure['epochs']:.2f} epochs of its training articles), "
            f"of which 5% are masked and predicted"
            if exposure
            else ""
        )
        + ".\n"
        "- What it cannot test is the part of the claim that needs a strong base: that a model which already "
        "models 60-110 languages well learns a new one from very few decay tokens, and keeps it after merging "
        "(task-level gains such as FoQA). A base at about 20% masked-token accuracy on its own languages is far "
        "from mmBERT's, so this run cannot say how much a strong base speeds up learning a new language. Testing "
        "that needs at least an mmBERT-small-sized model (140M "
        "parameters) trained on billions of tokens, decay-only languages with more text than the UDHR (FineWeb2's "
        "low-resource languages), a downstream task in those languages, and a control that trains the same "
        "decay tokens into a weak base, to separate what the base contributes from what the decay tokens do.\n"
        "- Masked-token accuracy is a proxy for what the paper measures (QA, classification, retrieval).\n"
    )
    if missing:
        out.append("## Missing from this run\n")
        for m in missing:
            out.append(f"- {m}")
        out.append("")
    return atomic_write_text(path, "\n".join(out).rstrip() + "\n")


def machine_description(threads: int, jobs: int = 1) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), shared with other work; {threads} torch thread(s) per training "
        f"process, {jobs} seed(s) at a time; no GPU"
    )


# ---- main ---------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[21, 22, 23], help="training seeds (default 21 22 23)"
    )
    p.add_argument("--run-dir", type=Path, default=RUN_DIR, help=f"where runs go (default {RUN_DIR})")
    p.add_argument("--data", type=Path, default=None, help="prepared data (default RUN_DIR/data)")
    p.add_argument("--report", type=Path, default=REPORT, help=f"report path (default {REPORT})")
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every phase's batches (e.g. 0.05 to test)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="seeds trained at the same time (default 1)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")
    p.add_argument("--no-report", action="store_true", help="train and evaluate, write no report")
    return p


def run_seeds_in_parallel(args: argparse.Namespace) -> None:
    """One process per seed (``--seeds S --no-report``), at most ``--jobs`` at a time; logs in seed<S>/script.log."""
    pending, running = list(args.seeds), []
    common = ["--run-dir", str(args.run_dir), "--scale", str(args.scale), "--threads", str(args.threads),
              "--no-report"] + (["--data", str(args.data)] if args.data else [])  # fmt: skip
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            log_file = seed_dir(args.run_dir, seed) / "script.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            f = open(log_file, "w")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--seeds", str(seed), *common]
            running.append((seed, subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT), f))
            log(f"seed {seed}: started (log {log_file})")
        time.sleep(2)
        for item in list(running):
            seed, proc, f = item
            if proc.poll() is not None:
                f.close()
                running.remove(item)
                log(f"seed {seed}: finished with exit code {proc.returncode}")
                if proc.returncode:
                    failed.append(seed)
    if failed:
        log(f"seeds {failed} failed; the report shows what finished")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.chdir(REPO)
    data = args.data or args.run_dir / "data"
    env = {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    os.environ.update(env)
    import torch

    torch.set_num_threads(args.threads)
    groups = language_groups()
    runs: dict[int, dict] = {}
    missing: list[str] = []
    if not args.report_only:
        prepare_data(data, env)
    if (data / "mds" / "manifest.json").exists():
        groups = scored_groups(groups, data)
    if not args.report_only and args.jobs > 1 and len(args.seeds) > 1:
        run_seeds_in_parallel(args)
    elif not args.report_only:
        heldout_cache: dict = {}
        for seed in args.seeds:
            start = time.perf_counter()
            info: dict = {}
            for phase in PHASES:
                info[phase] = train_phase(args.run_dir, seed, phase, data, args.scale, env)
            info["merge"] = merge(args.run_dir, seed, data, env)
            evaluate_seed(args.run_dir, seed, data, groups, heldout_cache)
            info["total_seconds"] = time.perf_counter() - start
            atomic_write_json(seed_dir(args.run_dir, seed) / "run.json", info)
            runs[seed] = info
    for seed in args.seeds:
        run_json = seed_dir(args.run_dir, seed) / "run.json"
        if seed not in runs and run_json.exists():
            runs[seed] = json.loads(run_json.read_text())
        for variant in VARIANTS:
            if not (seed_dir(args.run_dir, seed) / "eval" / f"{variant}.json").exists():
                missing.append(f"seed {seed}: {VARIANT_LABELS[variant]} (not trained / evaluated)")
    if args.no_report:
        return 0
    results = load_results(args.run_dir, args.seeds)
    plot = write_plot(results, args.report.with_suffix(".png"))
    command = "python scripts/decay_languages_experiment.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    exposure = None
    decay_tokens = [
        r["decay_all"].get("tokens") for r in runs.values() if r.get("decay_all", {}).get("tokens")
    ]
    if decay_tokens and (data / "mds" / "manifest.json").exists():
        exposure = decay_exposure(data, groups, sum(decay_tokens) / len(decay_tokens))
    write_report(results, args.report, plot, groups=groups, runs=runs, command=command.strip(), missing=missing,
                 machine=machine_description(args.threads, args.jobs), exposure=exposure)  # fmt: skip
    log(f"wrote {args.report} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
