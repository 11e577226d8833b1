"""Run one benchmark (dataset × system × seed), or the whole suite with ``--all``.

Each run trains with ``python -m spacy train`` in a child process (output teed to
``RUN_DIR/train.log``), evaluates ``model-best`` and ``model-last`` and writes ONE JSON to
``RESULTS/<dataset>__<system>__seed<seed>.json`` (atomically). An existing JSON means the run
is done and it is skipped (``--force`` reruns it). ``benchmarks/report.py`` turns the JSONs
into ``benchmarks/RESULTS.md``.

    python benchmarks/run.py --dataset webpage --system bond_moe --seed 0
    python benchmarks/run.py --all                       # the suite, cheap runs first
    python benchmarks/run.py --all --dataset webpage --dry-run
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
BATCH_SENTENCES = 16  # [training.batcher] size of every config: 16 sentences per step
COMPONENT = "bond_moe_ner"
TRAIN_LOG = "train_log.jsonl"
EVENTS_LOG = "bond_moe_events.jsonl"  # spacy-bond-moe.ConsoleLogger.v1's events_path
ARGMAX_ASSIGNER = {"@misc": "spacy-bond-moe.argmax_assigner.v1"}  # w/o fair assignment
HARD_PSEUDO_LABELS = {"@misc": "spacy-bond-moe.hard_pseudo_labels.v1"}  # BOND's Twitter row
STDOUT_LOG = "train.log"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Schedule:
    """BOND's per-dataset schedule in optimizer steps of 16 sentences (algorithm.md §4)."""

    steps_per_epoch: int
    teacher_start: int
    teacher_refresh: int
    estep_every: int
    self_training: str  # "soft" | "hard"
    max_steps: int  # the step cap: the same for every system of a dataset (CPU budget, not BOND's)
    eval_frequency: int


# dataset: steps/epoch, teacher_start, teacher_refresh, estep_every, mode, max_steps cap, eval_frequency.
# Wikigold's teacher_refresh is 175 instead of BOND's 700: with the 700-step cap BOND's value would
# give a single teacher (at 350); 175 gives refreshes at 350/525/700.
SCHEDULES: Dict[str, Schedule] = {
    "webpage": Schedule(25, 300, 200, 25, "soft", 600, 50),
    "wikigold": Schedule(72, 350, 175, 72, "soft", 700, 100),
    "twitter": Schedule(150, 900, 300, 150, "hard", 1500, 100),
    "conll03": Schedule(878, 900, 450, 878, "soft", 3000, 300),
}
# CoNLL03 with OUR distant labels (`build-kb` packs + `distant` on the raw train text) instead of
# BOND's: same gold dev/test and schedule, so `conll03` vs `conll03_kb` compares the labels only.
SCHEDULES["conll03_kb"] = SCHEDULES["conll03"]
OWN_LABELS: Dict[str, Tuple[str, str]] = {"conll03_kb": ("conll03", "roster/conll/train_text.txt")}

# Where `python -m spacy_bond_moe convert` reads each dataset (relative to the data root).
DATA_SOURCES: Dict[str, Tuple[str, str]] = {
    "webpage": ("bond/webpage_distant", "bond"),
    "wikigold": ("bond/wikigold_distant", "bond"),
    "twitter": ("bond/twitter_distant", "bond"),
    "conll03": ("roster/conll", "roster"),  # RoSTER text files: distant train, gold valid/test
}


@dataclass(frozen=True)
class System:
    """One benchmarked system: a config plus fixed overrides."""

    name: str
    config: str  # relative to the repository root
    description: str
    n_experts: Optional[int] = None  # None: not a bond_moe_ner config (no EM/teacher overrides)
    fair: bool = True
    self_training: bool = True
    extra: Tuple[Tuple[str, str], ...] = ()  # further `spacy train` overrides (investigations)
    shared_stage_one: bool = False  # every expert trains on every document until teacher_start
    # Distillation: the teacher, from step 1 and never refreshed, is the `merge` of this system's
    # ALL_SEEDS runs of the same dataset and cap (built beside them on first use).
    teacher_from: Optional[str] = None


# `bond_case_affix`: configs/minilm_case.cfg with the full lexical features and a mixing layer.
_TOK2VEC = f"--components.{COMPONENT}.model.tok2vec"
CASE_AFFIX: Tuple[Tuple[str, str], ...] = (
    (f"{_TOK2VEC}.features.width", "64"),
    (f"{_TOK2VEC}.features.attrs", '["SHAPE","PREFIX","SUFFIX"]'),
    (f"{_TOK2VEC}.features.rows", "[1000,2500,2500]"),
    (f"{_TOK2VEC}.mixer", '{"@architectures":"spacy.MaxoutWindowEncoder.v2","width":448,'
                          '"window_size":1,"maxout_pieces":3,"depth":1}'),
)

# Stage I noise robustness (RoSTER's values).
GCE = '{"@misc":"spacy-bond-moe.gce.v1","q":0.7,"o_drop":0.0}'
O_DROP = '{"@misc":"spacy-bond-moe.cross_entropy.v1","o_drop":0.5}'
UNCERTAIN_O = '{"@misc":"spacy-bond-moe.cross_entropy.v2","o_drop":0.0,"uncertain_o":"capitalised"}'
PROPER_O = ('{"@misc":"spacy-bond-moe.cross_entropy.v2","o_drop":0.0,"uncertain_o":"proper",'
            '"max_lower_share":0.2}')
LABEL_FILTER: Tuple[Tuple[str, str], ...] = (
    (f"--components.{COMPONENT}.label_filter",
     '{"@misc":"spacy-bond-moe.confidence_filter.v1","threshold":0.7,"max_removed":0.9}'),
    ("--training.before_update.filter_every", "100"),
)
LABEL_FILTER_O: Tuple[Tuple[str, str], ...] = (
    (f"--components.{COMPONENT}.label_filter",
     '{"@misc":"spacy-bond-moe.confidence_filter.v1","threshold":0.7,"max_removed":0.9,'
     '"remove":"o"}'),
    ("--training.before_update.filter_every", "100"),
)

# A shared stage that outlasts any step cap: every expert trains on every document, no E-step.
NEVER_ROUTED = str(10**9)

# The systems. `wo_moe` (= K=1 with self-training; fairness is moot with one expert, and the E-step
# callback skips K=1) is exactly the `bond` command, so only `bond` is run: `--system wo_moe` is an
# alias for it and report.py fills Table II's "w/o MoE" row from the `bond` JSONs.
SYSTEMS: Dict[str, System] = {
    s.name: s
    for s in (
        System("spacy_ner", "configs/spacy_ner_minilm.cfg",
               "spaCy transition-based `ner`, same MiniLM encoder, distant labels"),
        System("bond", "configs/bond_moe_paper.cfg",
               "BOND re-implementation: MiniLM, K=1, self-training (= w/o MoE)", n_experts=1),
        System("bond_moe", "configs/bond_moe_paper.cfg",
               "BOND-MoE: MiniLM, K=3, fair (Sinkhorn) E-step, self-training", n_experts=3),
        System("wo_fair", "configs/bond_moe_paper.cfg",
               "BOND-MoE w/o fair assignment: K=3, argmax E-step, self-training", n_experts=3,
               fair=False),
        System("wo_self_training", "configs/bond_moe_paper.cfg",
               "BOND-MoE w/o self-training: K=3, fair, no teacher (teacher_start 0)", n_experts=3,
               self_training=False),
        System("bond_moe_cnn", "configs/cnn.cfg",
               "BOND-MoE with the HashEmbedCNN encoder: K=3, fair, self-training", n_experts=3),
        # The same comparison with the CNN encoder (minutes per run, so all four datasets fit).
        System("spacy_ner_cnn", "configs/spacy_ner_cnn.cfg",
               "spaCy transition-based `ner`, same HashEmbedCNN encoder, distant labels"),
        System("bond_cnn", "configs/cnn.cfg",
               "BOND with the HashEmbedCNN encoder: K=1, self-training (= w/o MoE)", n_experts=1),
        System("wo_fair_cnn", "configs/cnn.cfg",
               "BOND-MoE with the HashEmbedCNN encoder w/o fair assignment: K=3, argmax E-step",
               n_experts=3, fair=False),
        System("wo_self_training_cnn", "configs/cnn.cfg",
               "BOND-MoE with the HashEmbedCNN encoder w/o self-training: K=3, fair, no teacher",
               n_experts=3, self_training=False),
        System("bond_moe_head_lr3", "configs/bond_moe_paper.cfg",
               "investigation: BOND-MoE with the expert heads' learning rate x3 (each head sees ~1/K "
               "of the documents)", n_experts=3,
               extra=((f"--components.{COMPONENT}.head_lr_scale", "3.0"),)),
        System("bond_moe_scope", "configs/bond_moe_paper.cfg",
               "investigation: BOND-MoE whose E-step scores only documents with an entity in their "
               "targets (entity-free ones dealt evenly)", n_experts=3,
               extra=((f"--components.{COMPONENT}.assigner.scope", "entities"),)),
        System("bond_moe_warmup", "configs/bond_moe_paper.cfg",
               "investigation: BOND-MoE whose stage I is shared (every expert trains on every "
               "document, no E-step) until the first teacher; routing by E-step in stage II",
               n_experts=3, shared_stage_one=True),
        System("bond_moe_warmup_cnn", "configs/cnn.cfg",
               "investigation: `bond_moe_warmup` with the HashEmbedCNN encoder (shared stage I, "
               "routing by E-step in stage II)", n_experts=3, shared_stage_one=True),
        System("bond_case", "configs/minilm_case.cfg",
               "investigation: BOND (K=1) whose MiniLM vectors are concatenated with a hashed "
               "16-wide word-shape embedding", n_experts=1),
        System("bond_case_affix", "configs/minilm_case.cfg",
               "investigation: BOND (K=1) whose MiniLM vectors are concatenated with hashed "
               "SHAPE/PREFIX/SUFFIX embeddings (64 wide), mixed by one maxout window layer",
               n_experts=1, extra=CASE_AFFIX),
        System("bond_gce", "configs/bond_moe_paper.cfg",
               "investigation: BOND (K=1) with GCE (q = 0.7) on the distant labels in stage I",
               n_experts=1, extra=((f"--components.{COMPONENT}.distant_loss", GCE),)),
        System("bond_odrop", "configs/bond_moe_paper.cfg",
               "investigation: BOND (K=1) with half the distant O labels unsupervised (O-drop 0.5)",
               n_experts=1, extra=((f"--components.{COMPONENT}.distant_loss", O_DROP),)),
        System("bond_filter", "configs/bond_moe_paper.cfg",
               "investigation: BOND (K=1) with RoSTER's noisy-label removal in stage I "
               "(threshold 0.7, every 100 steps)", n_experts=1, extra=LABEL_FILTER),
        System("bond_filter_o", "configs/bond_moe_paper.cfg",
               "investigation: `bond_filter` removing distant O labels only (entity labels kept)",
               n_experts=1, extra=LABEL_FILTER_O),
        System("bond_moe_ensemble", "configs/bond_moe_paper.cfg",
               "investigation: K=2 separate MiniLM encoders, each trained on every document "
               "throughout (never routed; members differ by initialisation and dropout), their mean "
               "as teacher and at inference", n_experts=2,
               extra=((f"--components.{COMPONENT}.model.expert_mode", "separate"),
                      ("--training.before_update.shared_steps", NEVER_ROUTED))),
        System("bond_lr1e4", "configs/bond_moe_paper.cfg",
               "investigation: BOND (K=1) with a peak learning rate of 1e-4 (configs: 5e-5)",
               n_experts=1, extra=(("--training.optimizer.learn_rate.initial_rate", "0.0001"),)),
        System("bond_moe_soft", "configs/bond_moe_paper.cfg",
               "investigation: BOND-MoE with a soft M-step (each document's loss spread over the "
               "experts by its Sinkhorn-plan responsibilities)", n_experts=3,
               extra=((f"--components.{COMPONENT}.assigner.m_step", "soft"),)),
    )
}
SYSTEMS["bond_moe_warmup_buckets"] = System(
    "bond_moe_warmup_buckets", "configs/bond_moe_paper.cfg",
    "investigation: `bond_moe_warmup` with length-bucketed batches only (`fill = \"tokens\"`, the "
    "batcher's default; the word-piece table trained)", n_experts=3, shared_stage_one=True,
    extra=(("--training.batcher", '{"@batchers":"spacy-bond-moe.length_buckets.v1","size":16,'
                                  '"buffer":50,"get_length":null}'),))
SYSTEMS["minilm_fast"] = System(
    "minilm_fast", "configs/minilm_fast.cfg",
    "investigation: the default recipe trained faster (configs/minilm_fast.cfg): length-bucketed "
    "batches (`fill = \"tokens\"`) and the word-piece embedding table frozen",
    n_experts=3, shared_stage_one=True)
SYSTEMS["minilm_fast_fill_sentences"] = System(
    "minilm_fast_fill_sentences", "configs/minilm_fast.cfg",
    "investigation: `minilm_fast` with 16 sentences per bucketed batch (each step's token-mean "
    "loss weighs a batch of one-word lines as much as one of long sentences)",
    n_experts=3, shared_stage_one=True, extra=(("--training.batcher.fill", "sentences"),))
SYSTEMS["bond_uncertain_o"] = System(
    "bond_uncertain_o", "configs/bond_moe_paper.cfg",
    "investigation: BOND (K=1) whose stage I leaves distant O labels on capitalised non-stop-word "
    "tokens unsupervised (`uncertain_o = \"capitalised\"`: the KB's missed names)", n_experts=1,
    extra=((f"--components.{COMPONENT}.distant_loss", UNCERTAIN_O),))
SYSTEMS["bond_proper_o"] = System(
    "bond_proper_o", "configs/bond_moe_paper.cfg",
    "investigation: `bond_uncertain_o` limited to words the training text writes in lower case at "
    "most 20% of the time (`uncertain_o = \"proper\"`: names, not \"Monday\" or \"SOCCER\")",
    n_experts=1, extra=((f"--components.{COMPONENT}.distant_loss", PROPER_O),))
SYSTEMS["bond_moe_grouped"] = System(
    "bond_moe_grouped", "configs/minilm.cfg",
    "investigation: `bond_moe_warmup` with each training batch encoded in length groups "
    "(configs/minilm.cfg, the default since issue 18: the same batches and gradient as one call, "
    "less padding)",
    n_experts=3, shared_stage_one=True)
SYSTEMS["bond_moe_grouped_frozen"] = System(
    "bond_moe_grouped_frozen", "configs/minilm_grouped_frozen.cfg",
    "investigation: `bond_moe_grouped` with the word-piece embedding table frozen "
    "(configs/minilm_grouped_frozen.cfg: the same random batches, 11.7M parameters untrained)",
    n_experts=3, shared_stage_one=True)
SYSTEMS["bond_grouped"] = System(
    "bond_grouped", "configs/minilm.cfg",
    "investigation: the default recipe with K=1 (configs/minilm.cfg, length groups): `bond` "
    "encoded as the default is, the mixture's K=1 reference at any cap", n_experts=1)
SYSTEMS["bond_moe_case"] = System(
    "bond_moe_case", "configs/minilm_moe_case.cfg",
    "investigation: the default recipe (K=3, shared stage I, length groups) with the hashed 16-wide "
    "word-shape embedding beside MiniLM's vectors (configs/minilm_moe_case.cfg; `bond_case` is K=1)",
    n_experts=3, shared_stage_one=True)
SYSTEMS["bond_grouped_distilled"] = System(
    "bond_grouped_distilled", "configs/minilm.cfg",
    "investigation: one K=1 student (`bond_grouped`'s recipe) trained only on the soft labels of "
    "the merged seed ensemble of `bond_grouped` seeds 0-2 (teacher from step 1, never refreshed)",
    n_experts=1, teacher_from="bond_grouped")
SYSTEMS["bond_case_distilled"] = System(
    "bond_case_distilled", "configs/minilm_case.cfg",
    "investigation: one K=1 student (`bond_case`'s recipe) trained only on the pseudo-labels of "
    "the merged seed ensemble of `bond_case` seeds 0-2 (teacher from step 1, never refreshed)",
    n_experts=1, teacher_from="bond_case")
# `default`: configs/minilm.cfg (shared_steps = teacher_start, length groups) is the
# `bond_moe_grouped` command; `bond_moe_warmup` is the same recipe encoded in one call per batch.
ALIASES: Dict[str, str] = {"wo_moe": "bond", "default": "bond_moe_grouped"}
# Systems run one by one to test a hypothesis; not part of the --all suite table.
INVESTIGATIONS: Tuple[str, ...] = ("bond_moe_head_lr3", "bond_moe_scope", "bond_moe_warmup",
                                  "bond_moe_warmup_cnn", "bond_moe_soft", "bond_case",
                                  "bond_case_affix", "bond_gce", "bond_odrop", "bond_filter",
                                  "bond_filter_o", "bond_moe_ensemble", "bond_lr1e4", "minilm_fast",
                                  "bond_moe_warmup_buckets", "minilm_fast_fill_sentences",
                                  "bond_uncertain_o", "bond_proper_o", "bond_moe_grouped",
                                  "bond_moe_grouped_frozen", "bond_grouped", "bond_moe_case",
                                  "bond_grouped_distilled", "bond_case_distilled")

# --all: cheap first. Datasets by size × cap, then seeds, then systems by cost (CNN, no EM/teacher,
# K=1, K=3), so every small dataset gets all its seeds before the expensive ones start.
ALL_DATASETS: Tuple[str, ...] = ("webpage", "wikigold", "twitter", "conll03")
ALL_SEEDS: Tuple[int, ...] = (0, 1, 2)
ALL_SYSTEMS: Tuple[str, ...] = (
    "spacy_ner_cnn", "bond_cnn", "bond_moe_cnn", "wo_fair_cnn", "wo_self_training_cnn",
    "spacy_ner", "wo_self_training", "bond", "bond_moe", "wo_fair",
)
ALL_ROWS: List[Tuple[str, str, int]] = [
    (d, s, seed) for d in ALL_DATASETS for seed in ALL_SEEDS for s in ALL_SYSTEMS
]


class RunFailed(RuntimeError):
    """The training child process (or the evaluation) failed."""


@dataclass(frozen=True)
class RunSpec:
    """Everything that identifies one run and where it goes."""

    dataset: str
    system: str
    seed: int
    max_steps: int
    eval_frequency: int
    corpus_dir: Path
    run_dir: Path
    result_path: Path


def resolve_system(name: str) -> str:
    """The canonical system name (aliases such as ``wo_moe`` map to ``bond``)."""
    name = ALIASES.get(name, name)
    if name not in SYSTEMS:
        known = ", ".join(list(SYSTEMS) + list(ALIASES))
        raise ValueError(f"unknown system {name!r} (known: {known})")
    return name


def run_name(dataset: str, system: str, seed: int) -> str:
    """``<dataset>__<system>__seed<seed>``: the stem of the result JSON and of the run folder."""
    return f"{dataset}__{system}__seed{seed}"


def make_spec(dataset: str, system: str, seed: int, results: Path, runs: Path,
              corpus_root: Path, max_steps: Optional[int] = None) -> RunSpec:
    """Resolve names, the step cap and the eval frequency (never above the cap) into a RunSpec."""
    if dataset not in SCHEDULES:
        raise ValueError(f"unknown dataset {dataset!r} (known: {', '.join(SCHEDULES)})")
    system = resolve_system(system)
    schedule = SCHEDULES[dataset]
    cap = schedule.max_steps if max_steps is None else max_steps
    if cap <= 0:
        raise ValueError(f"--max-steps must be positive, got {cap}")
    name = run_name(dataset, system, seed)
    if cap != schedule.max_steps:  # never overwrite the suite's run of the same system and seed
        name += f"__{cap}steps"
    return RunSpec(dataset, system, seed, cap, min(schedule.eval_frequency, cap),
                   corpus_root / dataset, runs / name, results / f"{name}.json")


def cap_suffix(spec: RunSpec) -> str:
    """The run name's step-cap suffix: "" at the suite's cap, else "__<N>steps"."""
    return spec.run_dir.name[len(run_name(spec.dataset, spec.system, spec.seed)):]


def teacher_members(spec: RunSpec) -> List[Path]:
    """The `model-best` folders merged into a distilled system's teacher (none otherwise)."""
    member = SYSTEMS[spec.system].teacher_from
    if member is None:
        return []
    return [spec.run_dir.parent / (run_name(spec.dataset, member, seed) + cap_suffix(spec)) / "model-best"
            for seed in ALL_SEEDS]


def teacher_dir(spec: RunSpec) -> Optional[Path]:
    """Where a distilled system's merged teacher lives: beside its members' run folders."""
    member = SYSTEMS[spec.system].teacher_from
    if member is None:
        return None
    return spec.run_dir.parent / f"{spec.dataset}__{member}__ensemble{cap_suffix(spec)}"


def teacher_receipt(target: Path) -> Path:
    """The JSON beside a merged teacher naming its members and their weights' fingerprints."""
    return target.with_name(target.name + ".members.json")


def ensure_teacher(spec: RunSpec) -> Optional[Dict[str, Any]]:
    """Merge the teacher's members (`python -m spacy_bond_moe merge`) unless already merged
    from the members' current weights; returns the teacher's receipt (None: not distilled)."""
    target = teacher_dir(spec)
    if target is None:
        return None
    members = teacher_members(spec)
    member = SYSTEMS[spec.system].teacher_from
    missing = [m for m in members if not (m / "config.cfg").is_file()]
    if missing:
        cap = f" --max-steps {spec.max_steps}" if cap_suffix(spec) else ""
        raise RunFailed(f"{spec.system} distils the seeds of {member}: {rel(missing[0])} is missing "
                        f"(run `python benchmarks/run.py --dataset {spec.dataset} --system {member} "
                        f"--seed N{cap}` for seeds {list(ALL_SEEDS)} first)")
    receipt = {"members": [rel(m) for m in members],
               "members_sha256": [model_fingerprint(m) for m in members]}
    path = teacher_receipt(target)
    if target.exists():
        saved = json.loads(path.read_text(encoding="utf8")) if path.is_file() else None
        if saved != receipt:
            raise RunFailed(f"{rel(target)} was not merged from the current {member} runs "
                            f"({rel(path)} {'differs' if saved else 'is missing'}): delete it to merge again")
        return receipt
    from spacy_bond_moe.ensemble import merge_pipelines

    print(f"[bench] merging the teacher {rel(target)} from {len(members)} runs", flush=True)
    try:
        merge_pipelines(members, target)
    except ValueError as err:
        raise RunFailed(f"merging the teacher {rel(target)}: {err}") from None
    write_json_atomic(path, receipt)
    return receipt


def build_overrides(spec: RunSpec) -> Dict[str, str]:
    """The `spacy train` config overrides of a run (EM/teacher keys only for bond_moe_ner configs).

    Paths are relative to the repository root (the child's working directory) when inside it.
    """
    system, schedule = SYSTEMS[spec.system], SCHEDULES[spec.dataset]
    overrides: Dict[str, str] = {
        "--paths.train": rel(spec.corpus_dir / "train.spacy"),
        "--paths.dev": rel(spec.corpus_dir / "dev.spacy"),
        "--system.seed": str(spec.seed),
        "--training.max_steps": str(spec.max_steps),
        "--training.eval_frequency": str(spec.eval_frequency),
        "--training.logger.output_file": rel(spec.run_dir / TRAIN_LOG),
    }
    if system.n_experts is not None:
        overrides.update({
            "--training.logger.events_path": rel(spec.run_dir / EVENTS_LOG),
            f"--components.{COMPONENT}.model.n_experts": str(system.n_experts),
            "--training.before_update.estep_every": str(schedule.estep_every),
            "--training.before_update.teacher_start":
                str(schedule.teacher_start if system.self_training else 0),
            "--training.before_update.teacher_refresh": str(schedule.teacher_refresh),
        })
        # The configs' defaults are the fair (Sinkhorn) E-step and soft pseudo-labels.
        if not system.fair:
            overrides[f"--components.{COMPONENT}.assigner"] = json.dumps(ARGMAX_ASSIGNER)
        if schedule.self_training == "hard":
            overrides[f"--components.{COMPONENT}.pseudo_labeller"] = json.dumps(HARD_PSEUDO_LABELS)
        if system.shared_stage_one:
            overrides["--training.before_update.shared_steps"] = str(schedule.teacher_start)
        teacher = teacher_dir(spec)
        if teacher is not None:
            overrides.update({"--paths.teacher": rel(teacher),
                              "--training.before_update.teacher_start": "1",
                              "--training.before_update.teacher_refresh": "0"})
    overrides.update(dict(system.extra))
    return overrides


def build_command(spec: RunSpec, python: str = sys.executable) -> List[str]:
    """The full `python -m spacy train` command line of a run."""
    cmd = [python, "-m", "spacy", "train", SYSTEMS[spec.system].config, "-o", rel(spec.run_dir)]
    for key, value in build_overrides(spec).items():
        cmd += [key, value]
    return cmd


def child_env() -> Dict[str, str]:
    """Environment of the training child: offline Hugging Face, unbuffered, uncoloured output."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1", "ANSI_COLORS_DISABLED": "1"}


def data_root() -> Path:
    """Folder with bond/… and roster/…: $BOND_MOE_DATA_MIRROR, ../shared/datasets, or assets/."""
    mirror = os.environ.get("BOND_MOE_DATA_MIRROR")
    if mirror:
        return Path(mirror)
    shared = ROOT.parent / "shared" / "datasets"
    return shared if shared.is_dir() else ROOT / "assets"


def _run_or_fail(cmd: List[str], what: str) -> None:
    print(f"[bench] {what}: {shlex.join(cmd)}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise RunFailed(f"{what} failed")


def ensure_own_labels(dataset: str, corpus_dir: Path) -> None:
    """Build `dataset` from its base corpus: our distant labels on train, the base's gold dev/test.

    dev.spacy is written last, so an interrupted build is redone (ensure_corpus checks it).
    """
    base, text = OWN_LABELS[dataset]
    base_dir = corpus_dir.parent / base
    ensure_corpus(base, base_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    python = [sys.executable, "-m", "spacy_bond_moe"]
    kb = corpus_dir / "kb.jsonl"
    _run_or_fail(python + ["build-kb", str(kb)], f"building the KB packs for {dataset}")
    _run_or_fail(python + ["distant", str(data_root() / text), str(corpus_dir / "train.spacy"),
                           "--kb", str(kb), "--format", "tokens", "--no-progress"],
                 f"labelling {dataset}'s train text")
    for split in ("test", "dev"):
        if (base_dir / f"{split}.spacy").is_file():
            shutil.copyfile(base_dir / f"{split}.spacy", corpus_dir / f".{split}.spacy.tmp")
            os.replace(corpus_dir / f".{split}.spacy.tmp", corpus_dir / f"{split}.spacy")


def ensure_corpus(dataset: str, corpus_dir: Path) -> None:
    """Convert the dataset with `python -m spacy_bond_moe convert` unless train/dev.spacy exist."""
    if (corpus_dir / "train.spacy").is_file() and (corpus_dir / "dev.spacy").is_file():
        return
    if dataset in OWN_LABELS:
        ensure_own_labels(dataset, corpus_dir)
        return
    rel, fmt = DATA_SOURCES[dataset]
    src = data_root() / rel
    cmd = [sys.executable, "-m", "spacy_bond_moe", "convert", str(src), str(corpus_dir),
           "--format", fmt, "--dataset", dataset]
    print(f"[bench] converting {dataset}: {shlex.join(cmd)}", flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        raise RunFailed(f"conversion of {dataset} from {src} failed")


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    """Write JSON to a temp file in the same folder, then os.replace it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf8")
    os.replace(tmp, path)


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over every file of a saved pipeline (relative names and bytes), to tie analyses to a model."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode("utf8") + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def rel(path: Path) -> str:
    """A path relative to the repository root when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def git_info() -> Dict[str, Any]:
    """HEAD commit and whether tracked files differ from it (benchmark outputs excluded)."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else ""

    excluded = [":!benchmarks/results", ":!benchmarks/RESULTS.md", ":!benchmarks/plots"]
    # porcelain lines are "XY PATH": the status columns may be spaces, so never strip them
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    files = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "dirty": bool(files),
            "dirty_files": files}


def machine_info() -> Dict[str, Any]:
    """Cores, RAM, torch threads, CPU model, load average and niceness of this machine/process."""
    import torch

    ram_gb: Optional[float] = None
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = round(int(line.split()[1]) / 1024 ** 2, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "torch_threads": torch.get_num_threads(),  # this process; the child has the same defaults
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nice": os.nice(0),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def package_versions() -> Dict[str, Optional[str]]:
    """Versions of the packages that determine the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out: Dict[str, Optional[str]] = {}
    for name in ("spacy", "spacy-transformers", "transformers", "torch", "thinc", "spacy-bond-moe"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def train_subprocess(cmd: Sequence[str], log_path: Path) -> Tuple[int, float, float]:
    """Run `cmd`, tee stdout+stderr to the console and `log_path`.

    Returns (exit code, wall seconds, peak RSS of the child in MB, from os.wait4's rusage).
    """
    start = time.monotonic()
    with log_path.open("w", encoding="utf8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        proc = subprocess.Popen(list(cmd), cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
            log.flush()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Linux: KB)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    return proc.returncode, wall, usage.ru_maxrss / 1024.0


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """The records of a JSON-lines file ([] if it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line.strip()]


def dev_curve(train_log: Path) -> List[Dict[str, Any]]:
    """Dev scores per evaluation from spaCy's logger output_file (its scores are ×100)."""
    curve = []
    for rec in read_jsonl(train_log):
        scores = rec.get("scores", {})
        curve.append({
            "step": rec["step"],
            "epoch": rec.get("epoch"),
            "score": rec.get("score"),
            **{k: scores[k] / 100.0 for k in ("ents_p", "ents_r", "ents_f") if k in scores},
            "losses": rec.get("losses", {}),
        })
    return curve


def em_events(events_log: Path) -> List[Dict[str, Any]]:
    """E-step, teacher-refresh and label-filter events of bond_moe_events.jsonl (eval
    records dropped)."""
    kinds = ("estep", "teacher", "label_filter")
    return [{k: v for k, v in e.items() if k != "component"}
            for e in read_jsonl(events_log) if e.get("event") in kinds]


def mean_words_per_sentence(path: Path) -> Tuple[float, int]:
    """Mean tokens per doc (= sentence) of a DocBin, and the number of docs."""
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    lengths = [len(doc) for doc in DocBin().from_disk(path).get_docs(Vocab())]
    return (sum(lengths) / len(lengths) if lengths else 0.0), len(lengths)


def prf(scores: Dict[str, Any], data_path: Path) -> Dict[str, Any]:
    """P/R/F (fractions, overall + per type) from spaCy's evaluate() output."""
    per_type = {label: {"p": v.get("p"), "r": v.get("r"), "f": v.get("f")}
                for label, v in (scores.get("ents_per_type") or {}).items()}
    return {"p": scores.get("ents_p"), "r": scores.get("ents_r"), "f": scores.get("ents_f"),
            "per_type": per_type, "data_path": rel(data_path)}


def evaluate_model(model: Path, data_path: Path) -> Dict[str, Any]:
    """Score a trained pipeline on a gold DocBin with `spacy evaluate` (in this process)."""
    from spacy.cli.evaluate import evaluate

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return prf(evaluate(str(model), data_path, use_gpu=-1, silent=True), data_path)


def run_one(spec: RunSpec, force: bool = False) -> str:
    """Train, evaluate and write the result JSON of one run. Returns "skipped" or "done"."""
    if spec.result_path.exists() and not force:
        print(f"[bench] {spec.result_path} exists: skipped (--force reruns)", flush=True)
        return "skipped"
    system, schedule = SYSTEMS[spec.system], SCHEDULES[spec.dataset]
    ensure_corpus(spec.dataset, spec.corpus_dir)
    receipt = ensure_teacher(spec)
    if spec.run_dir.exists():
        shutil.rmtree(spec.run_dir)  # a stale/partial run: spaCy's logger refuses existing logs
    spec.run_dir.mkdir(parents=True)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    git, machine = git_info(), machine_info()
    cmd = build_command(spec)
    command = "HF_HUB_OFFLINE=1 " + shlex.join(["python", *cmd[1:]])
    print(f"[bench] {spec.result_path.stem}: {command}", flush=True)

    code, train_wall, peak_rss_mb = train_subprocess(cmd, spec.run_dir / STDOUT_LOG)
    if code != 0:
        raise RunFailed(f"spacy train exited with {code}; see {spec.run_dir / STDOUT_LOG}")
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    test_path, dev_path = spec.corpus_dir / "test.spacy", spec.corpus_dir / "dev.spacy"
    eval_split = "test" if test_path.is_file() else "dev"
    eval_path = test_path if eval_split == "test" else dev_path
    t0 = time.monotonic()
    dev_at_best = evaluate_model(spec.run_dir / "model-best", dev_path)
    eval_at_best = (evaluate_model(spec.run_dir / "model-best", eval_path)
                    if eval_split == "test" else dev_at_best)
    eval_at_last = evaluate_model(spec.run_dir / "model-last", eval_path)
    eval_wall = time.monotonic() - t0

    curve = dev_curve(spec.run_dir / TRAIN_LOG)
    best = max(curve, key=lambda r: (r["score"], -r["step"])) if curve else None  # spaCy's rule
    words_per_sent, n_train = mean_words_per_sentence(spec.corpus_dir / "train.spacy")
    updates = spec.max_steps + 1  # spaCy's loop updates at steps 0..max_steps
    approx_words = words_per_sent * BATCH_SENTENCES * updates
    result: Dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "dataset": spec.dataset,
        "system": spec.system,
        "system_description": system.description,
        "seed": spec.seed,
        "config": system.config,
        "overrides": build_overrides(spec),
        "command": command,
        "steps": spec.max_steps,
        "default_steps": schedule.max_steps,
        "steps_note": "max_steps cap; the same cap is used for every system of a dataset"
                      + ("" if spec.max_steps == schedule.max_steps
                         else f" (NON-DEFAULT: the suite's cap for {spec.dataset} is {schedule.max_steps})"),
        "eval_frequency": spec.eval_frequency,
        "schedule": asdict(schedule),
        "batch_sentences": BATCH_SENTENCES,
        "eval_split": eval_split,
        "eval_split_note": ("gold test split" if eval_split == "test" else
                            f"no {rel(test_path)}: scored on the dev split, which also selected "
                            "model-best (optimistic)"),
        "dev_best_step": best["step"] if best else None,
        "dev_at_best": dev_at_best,
        "eval_at_best": eval_at_best,
        "eval_at_last": eval_at_last,
        "model_best_sha256": model_fingerprint(spec.run_dir / "model-best"),
        "train_wall_seconds": round(train_wall, 2),
        "eval_wall_seconds": round(eval_wall, 2),
        # Approximate: train words processed / wall time of the whole `spacy train` process,
        # which also includes init, model loading, E-steps, teacher passes and dev evaluations.
        "approx_train_words_per_s": round(approx_words / train_wall, 1) if train_wall > 0 else None,
        "approx_train_words": round(approx_words),
        "train_sentences": n_train,
        "train_words_per_sentence": round(words_per_sent, 3),
        "updates": updates,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "git": git,
        "machine": machine,
        "versions": package_versions(),
        "timestamp": started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "paths": {
            "run_dir": rel(spec.run_dir),
            "train_log": rel(spec.run_dir / TRAIN_LOG),
            "events": rel(spec.run_dir / EVENTS_LOG) if system.n_experts is not None else None,
            "stdout": rel(spec.run_dir / STDOUT_LOG),
            "corpus": rel(spec.corpus_dir),
        },
        "curve": curve,
        "events": em_events(spec.run_dir / EVENTS_LOG),
    }
    if receipt is not None:
        result["teacher"] = {"path": rel(teacher_dir(spec)),
                             "sha256": model_fingerprint(teacher_dir(spec)), **receipt}
    write_json_atomic(spec.result_path, result)
    f = eval_at_best["f"]
    print(f"[bench] wrote {spec.result_path}: {eval_split} F1 at dev-best "
          f"{'n/a' if f is None else f'{100 * f:.2f}'}, train {train_wall:.0f}s, "
          f"peak RSS {peak_rss_mb:.0f} MB", flush=True)
    return "done"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(SCHEDULES), help="with --all: only this dataset")
    p.add_argument("--system", choices=sorted(list(SYSTEMS) + list(ALIASES)),
                   help="with --all: only this system (wo_moe = bond)")
    p.add_argument("--seed", type=int, help="with --all: only this seed")
    p.add_argument("--all", action="store_true", help="run the suite table ALL_ROWS, cheap first")
    p.add_argument("--max-steps", type=int, default=None,
                   help="override the dataset's step cap (recorded in the JSON as non-default)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench")
    p.add_argument("--corpus", type=Path, default=ROOT / "corpus",
                   help="folder of converted corpora (<corpus>/<dataset>/*.spacy)")
    p.add_argument("--force", action="store_true", help="rerun even if the result JSON exists")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if not args.all and (args.dataset is None or args.system is None or args.seed is None):
        p.error("--dataset, --system and --seed are required without --all")
    return args


def select_rows(args: argparse.Namespace) -> List[Tuple[str, str, int]]:
    """The (dataset, system, seed) rows to run: one, or ALL_ROWS filtered by the given options."""
    if not args.all:
        return [(args.dataset, resolve_system(args.system), args.seed)]
    system = resolve_system(args.system) if args.system else None
    return [row for row in ALL_ROWS
            if (args.dataset is None or row[0] == args.dataset)
            and (system is None or row[1] == system)
            and (args.seed is None or row[2] == args.seed)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: run the selected rows; exit 1 if any failed."""
    args = parse_args(argv)
    if args.system in ALIASES:
        print(f"[bench] {args.system} is the same command as {ALIASES[args.system]}: "
              f"using {ALIASES[args.system]}", flush=True)
    rows = select_rows(args)
    specs = [make_spec(d, s, seed, args.results.resolve(), args.runs.resolve(),
                       args.corpus.resolve(), args.max_steps) for d, s, seed in rows]
    failed: List[str] = []
    for i, spec in enumerate(specs, 1):
        name = spec.result_path.stem
        if args.dry_run:
            state = "exists" if spec.result_path.exists() else "todo"
            print(f"[{i}/{len(specs)}] {name} ({state}): {shlex.join(build_command(spec))}")
            continue
        print(f"[bench] [{i}/{len(specs)}] {name}", flush=True)
        try:
            run_one(spec, force=args.force)
        except Exception as err:  # noqa: BLE001 - record the failure, go on with the suite
            if not isinstance(err, RunFailed):
                traceback.print_exc()
            print(f"[bench] FAILED {name}: {err}", file=sys.stderr, flush=True)
            failed.append(name)
            if not args.all:
                break
    if failed:
        print(f"[bench] {len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
