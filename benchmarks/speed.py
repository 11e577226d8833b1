"""Speed and memory cost of the K experts: K=1 vs K=3 shared vs K=3 separate encoders.

One CHILD process per variant (so the peak RSS, from ``os.wait4``, is the variant's own) builds the
pipeline from the config, initializes it on the training corpus and measures, on batches of the
config's own batcher over seeded shuffles of the training corpus (the same batches for every
variant with the same batcher; `padded_over_words` = tokens after padding to each batch's longest
sentence / tokens, before any grouping inside the model):

- training throughput: ``--warmup`` untimed, then ``--steps`` timed ``nlp.update`` calls (dropout and
  optimizer of the config; each document routed to its expert, no E-step or teacher in between);
- one corpus E-step (``reassign_experts`` over the whole training set; K>1 only) as a share of one
  epoch of training (epoch = n_train_docs / 16 steps at the measured s/step);
- a teacher snapshot and a teacher refresh (``snapshot_teacher`` twice); both corpus passes also as
  words/s, against ``nlp.pipe`` over the same training texts (``*_over_inference`` ratios);
- inference words/s with ``nlp.pipe`` over the dev texts (``--pipe-repeats`` timed passes), and
  over ``spacy benchmark speed``'s own sample (dev texts drawn with replacement into
  ``--bench-batches`` batches, timed per batch by spaCy's ``annotate``): its mean of per-batch
  words/s and total words / total seconds, which split the CLI's gap to ``nlp.pipe`` into the
  sample's batch composition and the statistic (``bench_sample_*`` ratios).

Variants ``k1_before`` and ``k3_shared_before`` train with ``configs/bond_moe_paper.cfg`` (random
batches, the word-piece table trained: the default before issue 18) for before/after ratios;
``k1_grouped`` and ``k3_shared_grouped`` train the same random batches with ``configs/minilm.cfg``
(the default since issue 18: each batch encoded in length groups), against the same ``_before`` variants; ``*_grouped_frozen``
likewise with ``configs/minilm_grouped_frozen.cfg`` (also the word-piece table frozen).
References: ``spacy_ner`` is spaCy's own ``ner`` with the same encoder (``configs/spacy_ner_cnn.cfg``
for a CNN ``--config``, else ``configs/spacy_ner_minilm.cfg``), measured the same way (no corpus
passes); ``raw_encoder`` is the plain ``transformers`` model of ``--encoder`` alone: the measured
matmul GFLOP/s and the words/s bound it implies, forward words/s over the dev texts (length-sorted
batches of 64, ``--pipe-repeats`` passes) and forward+backward words/s on the same training batches
as the variants (no optimizer). Every variant's training and inference words/s are also given as
ratios to these two (``*_over_raw``, ``*_over_spacy_ner``).

The child saves the pipeline; the parent then runs ``python -m spacy benchmark speed`` on it (a
separate process, its own peak RSS) and parses its mean words/s and 95% CI. One JSON with every
variant, the K=3/K=1 ratios and the issue's targets is written atomically to
``benchmarks/results/speed__<corpus dir>__<config stem>.json``.

    python benchmarks/speed.py                                   # MiniLM, Webpage, the 3 variants
    python benchmarks/speed.py --steps 3 --warmup 1 --variants k1 --no-spacy-benchmark
    python benchmarks/speed.py --config configs/cnn.cfg          # the fast CNN encoder
    python benchmarks/speed.py --variants k1_before,k1,k3_shared_before,k3_shared  # issue 18
    python benchmarks/speed.py --variants raw_encoder,spacy_ner,k1,k3_shared     # side by side

Default run (3 + 50 steps, 30 benchmark batches of the pipeline's batch size) with MiniLM on an idle 2-core CPU
(~1.2 s per step of 16 sentences for K=1): about 2 + 2 + 5.5 min ≈ 10 min; k3_separate runs three
encoders (~3x the s/step and ~1/3 the inference speed of k1) and dominates. Words are spaCy
tokenizer tokens (`Corpus` re-tokenizes the text, as `spacy train` and `spacy benchmark` do).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import child_env, git_info, machine_info, package_versions, rel, write_json_atomic  # noqa: E402

COMPONENT = "bond_moe_ner"
BATCH_SENTENCES = 16  # [training.batcher] size of every config
SCHEMA_VERSION = 1
# name: (config, K, expert mode); None = the --config given. The `_before` variants are the
# training setup before issue 18 (configs/bond_moe_paper.cfg: random batches of 16, the
# word-piece table trained), for before/after ratios in one run.
VARIANTS: Dict[str, Tuple[Optional[str], int, str]] = {
    "k1": (None, 1, "shared"),
    "k3_shared": (None, 3, "shared"),
    "k3_separate": (None, 3, "separate"),
    "k1_before": ("configs/bond_moe_paper.cfg", 1, "shared"),
    "k3_shared_before": ("configs/bond_moe_paper.cfg", 3, "shared"),
    # the `_before` batches (random, table trained) encoded in length groups within each batch
    "k1_grouped": ("configs/minilm.cfg", 1, "shared"),
    "k3_shared_grouped": ("configs/minilm.cfg", 3, "shared"),
    # the same, with the word-piece embedding table frozen
    "k1_grouped_frozen": ("configs/minilm_grouped_frozen.cfg", 1, "shared"),
    "k3_shared_grouped_frozen": ("configs/minilm_grouped_frozen.cfg", 3, "shared"),
    "spacy_ner": ("spacy_ner", 0, "-"),  # K = 0: not a bond_moe_ner pipeline
    "raw_encoder": ("raw_encoder", 0, "-"),
}
SPACY_NER_CONFIGS = {"cnn": "configs/spacy_ner_cnn.cfg", "transformer": "configs/spacy_ner_minilm.cfg"}
RAW_BATCH = 64  # raw encoder forward: length-sorted batches, as the pipeline's predict groups
MATMUL_SHAPE = (2048, 384, 1536)  # (tokens, hidden, intermediate): MiniLM's largest matmul
DEFAULT_VARIANTS = ("k1", "k3_shared", "k3_separate")
TARGETS = {  # the issues' targets
    "train_wps_k3_shared_over_k1": (">=", 0.91),  # issue 18: K=3 within 1.1x the cost of K=1
    "train_wps_over_before": (">=", 1.6),
    "corpus_pass_over_inference": (">=", 0.9),
    "infer_wps_k3_shared_over_k1": (">=", 0.9),
    "estep_share_max": ("<=", 0.15),
}
REFERENCE_RATIOS = ("k1", "k3_shared", "k1_before", "k3_shared_before", "k1_grouped",
                    "k3_shared_grouped", "k1_grouped_frozen", "k3_shared_grouped_frozen")
SPED_UP = ("k1", "k3_shared", "k1_grouped", "k3_shared_grouped", "k1_grouped_frozen",
           "k3_shared_grouped_frozen")  # each against its `_before`
SPACY_BENCH_MIN_BATCHES = 30  # `spacy benchmark speed --batches` refuses fewer
MEAN_RE = re.compile(
    r"Mean:\s*([0-9.]+)\s*words/s\s*\(95% CI:\s*(-?[0-9.]+)\s*\+?(-?[0-9.]+)\)")
OUTLIERS_RE = re.compile(r"Outliers:\s*([0-9.]+)%")


# ----------------------------------------------------------------------------- child


def _n_params(model: Any) -> int:
    """Parameters of a thinc model: its own params plus those of PyTorch shims (the transformer)."""
    total = 0
    seen_shims = set()
    for node in model.walk():
        for name in node.param_names:
            if node.has_param(name):
                total += int(node.get_param(name).size)
        for shim in node.shims:
            inner = getattr(shim, "_model", None)
            if id(shim) in seen_shims or not hasattr(inner, "parameters"):
                continue
            seen_shims.add(id(shim))
            total += sum(int(p.numel()) for p in inner.parameters())
    return total


def _stats(values: Sequence[float]) -> Dict[str, float]:
    import numpy

    arr = numpy.asarray(values, dtype="float64")
    return {"mean": float(arr.mean()), "median": float(numpy.median(arr)),
            "min": float(arr.min()), "max": float(arr.max()), "std": float(arr.std())}


def fixed_batches(examples: List[Any], n_batches: int, seed: int,
                  batcher: Any) -> List[List[Any]]:
    """`n_batches` batches of the config's batcher: passes over the corpus, each reshuffled by
    one seeded RNG (the same batches for every variant with the same batcher)."""
    rng = random.Random(seed)
    batches: List[List[Any]] = []
    while len(batches) < n_batches:
        order = list(examples)
        rng.shuffle(order)
        for batch in batcher(order):
            if len(batches) == n_batches:
                break
            batches.append(batch)
    return batches


def measure_variant(config_path: Path, n_experts: int, expert_mode: str, train_path: Path,
                    dev_path: Path, *, steps: int, warmup: int, seed: int = 0,
                    pipe_repeats: int = 3, threads: Optional[int] = None,
                    model_dir: Optional[Path] = None, bench_batches: int = 0,
                    bench_batch_size: int = 0) -> Dict[str, Any]:
    """Build, initialize and time one variant in THIS process; save it to `model_dir` if given."""
    import resource

    import spacy
    import torch
    from spacy.training import Corpus
    from spacy.util import registry

    if threads:
        torch.set_num_threads(threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    overrides: Dict[str, Any] = {"paths.train": str(train_path), "paths.dev": str(dev_path),
                                 "system.seed": seed}
    if n_experts:  # a bond_moe_ner pipeline (K = 0: spaCy's ner)
        overrides[f"components.{COMPONENT}.model.n_experts"] = n_experts
        overrides[f"components.{COMPONENT}.model.expert_mode"] = expert_mode
    t0 = time.perf_counter()
    spacy.util.fix_random_seed(seed)
    config = spacy.util.load_config(config_path, overrides=overrides, interpolate=False)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    t_read = time.perf_counter()
    train_examples = list(Corpus(str(train_path))(nlp))
    corpus_read_s = time.perf_counter() - t_read
    dev_texts = [eg.reference.text for eg in Corpus(str(dev_path))(nlp)]
    # The config's optimizer, resolved from the interpolated config as `spacy train` does.
    interpolated = nlp.config.interpolate()
    resolved = registry.resolve({"optimizer": interpolated["training"]["optimizer"],
                                 "batcher": interpolated["training"]["batcher"]})
    optimizer, batcher = resolved["optimizer"], resolved["batcher"]
    nlp.initialize(lambda: train_examples, sgd=optimizer)
    build_init_s = time.perf_counter() - t0
    pipe = nlp.get_pipe(COMPONENT if n_experts else nlp.pipe_names[-1])
    dropout = float(interpolated["training"]["dropout"])

    # --- training throughput (no E-step, no teacher)
    batches = fixed_batches(train_examples, warmup + steps, seed, batcher)
    step_s: List[float] = []
    step_words: List[int] = []
    for i, batch in enumerate(batches):
        losses: Dict[str, float] = {}
        start = time.perf_counter()
        nlp.update(batch, drop=dropout, sgd=optimizer, losses=losses)
        optimizer.step_schedules()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            step_s.append(elapsed)
            step_words.append(sum(len(eg.predicted) for eg in batch))
    train_s = sum(step_s)
    s_per_step = train_s / len(step_s)
    n_train = len(train_examples)
    n_train_words = sum(len(eg.predicted) for eg in train_examples)
    padded = sum(len(b) * max(len(eg.predicted) for eg in b) for b in batches[warmup:])
    epoch_steps = n_train / BATCH_SENTENCES
    epoch_s = epoch_steps * s_per_step

    # --- E-step over the whole training corpus (K > 1 only: the schedule skips K = 1)
    estep: Dict[str, Any] = {"estep_s": None, "estep_share": None, "estep_over_epoch": None,
                             "estep_words_per_s": None}
    if n_experts > 1:
        start = time.perf_counter()
        event = pipe.reassign_experts(train_examples, nlp=nlp)
        estep_s = time.perf_counter() - start
        estep = {"estep_s": estep_s, "estep_share": estep_s / (estep_s + epoch_s),
                 "estep_words_per_s": n_train_words / estep_s,
                 "estep_over_epoch": estep_s / epoch_s, "estep_loads": event["loads"]}

    # --- teacher: first snapshot, then a refresh (bond_moe_ner only)
    snapshot_s = refresh_s = None
    if n_experts:
        start = time.perf_counter()
        pipe.snapshot_teacher(train_examples, nlp=nlp)
        snapshot_s = time.perf_counter() - start
        start = time.perf_counter()
        pipe.snapshot_teacher(train_examples, nlp=nlp)
        refresh_s = time.perf_counter() - start

    # --- in-process inference over the dev texts (one untimed pass, then `pipe_repeats`)
    list(nlp.pipe(dev_texts))
    pipe_wps: List[float] = []
    for _ in range(pipe_repeats):
        start = time.perf_counter()
        n_words = sum(len(doc) for doc in nlp.pipe(dev_texts))
        pipe_wps.append(n_words / (time.perf_counter() - start))

    # --- `spacy benchmark speed`'s own sample and statistic, in this process: dev texts drawn
    # with replacement into `bench_batches` batches (of the pipeline's batch size, as the CLI),
    # timed per batch by spaCy's own `annotate`; its mean of per-batch words/s, and total words /
    # total seconds over the same sample (what nlp.pipe over dev reports)
    bench_sample = None
    if bench_batches:
        import numpy
        from spacy.cli.benchmark_speed import annotate

        size = bench_batch_size or nlp.batch_size
        rng = random.Random(seed)
        docs = [nlp.make_doc(rng.choice(dev_texts)) for _ in range(bench_batches * size)]
        start = time.perf_counter()
        rates = annotate(nlp, docs, size)
        seconds = time.perf_counter() - start
        bench_sample = {"batches": len(rates), "batch_size": size,
                        "mean_batch_words_per_s": float(numpy.mean(rates)),
                        "total_words_per_s": sum(len(doc) for doc in docs) / seconds}

    # --- the same inference over the training texts: the corpus passes' like-for-like reference
    train_texts = [eg.reference.text for eg in train_examples]
    list(nlp.pipe(train_texts))
    start = time.perf_counter()
    pipe_train_wps = sum(len(doc) for doc in nlp.pipe(train_texts)) / (time.perf_counter() - start)

    model_size_mb = None
    if model_dir is not None:
        nlp.to_disk(model_dir)
        model_size_mb = sum(f.stat().st_size for f in Path(model_dir).rglob("*") if f.is_file()) / 2 ** 20

    return {
        "n_experts": n_experts,
        "expert_mode": expert_mode,
        "n_params": _n_params(pipe.model),
        "torch_threads": torch.get_num_threads(),
        "build_init_s": build_init_s,
        "corpus_read_s": corpus_read_s,
        "n_train_docs": n_train,
        "n_train_words": n_train_words,
        "n_dev_docs": len(dev_texts),
        "dropout": dropout,
        "train": {
            "steps": len(step_s),
            "warmup": warmup,
            "batch_sentences": BATCH_SENTENCES,
            "words": sum(step_words),
            "seconds": train_s,
            "words_per_s": sum(step_words) / train_s,
            "s_per_step": s_per_step,
            "step_s": _stats(step_s),
            "epoch_steps": epoch_steps,
            "padded_over_words": padded / sum(step_words),
            "epoch_s": epoch_s,
        },
        **estep,
        "teacher_snapshot_s": snapshot_s,
        "teacher_refresh_s": refresh_s,
        "teacher_words_per_s": None if refresh_s is None else n_train_words / refresh_s,
        "pipe_train_words_per_s": pipe_train_wps,
        "pipe_words_per_s": sum(pipe_wps) / len(pipe_wps),
        "pipe_words_per_s_runs": pipe_wps,
        "pipe_words": sum(len(nlp.make_doc(t)) for t in dev_texts),
        "bench_sample": bench_sample,
        "model_size_mb": model_size_mb,
        "child_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "loadavg_child_start": load_start,
        "loadavg_child_end": [round(x, 2) for x in os.getloadavg()],
    }


def matmul_gflops(repeats: int = 20) -> float:
    """fp32 GFLOP/s of torch's matmul at MATMUL_SHAPE (median of `repeats` after a warm-up)."""
    import statistics

    import torch

    m, k, n = MATMUL_SHAPE
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.matmul(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        seconds.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(seconds) / 1e9


def measure_raw_encoder(encoder: str, config_path: Path, train_path: Path, dev_path: Path, *,
                        steps: int, warmup: int, seed: int = 0, repeats: int = 3,
                        threads: Optional[int] = None) -> Dict[str, Any]:
    """The plain `transformers` encoder: matmul bound, forward and forward+backward words/s."""
    import resource

    import spacy
    import torch
    from spacy.training import Corpus
    from spacy.util import registry
    from transformers import AutoModel, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    load_start = [round(x, 2) for x in os.getloadavg()]
    tokenizer, model = AutoTokenizer.from_pretrained(encoder), AutoModel.from_pretrained(encoder)
    nlp = spacy.blank("en")
    train_examples = list(Corpus(str(train_path))(nlp))
    dev_texts = [eg.reference.text for eg in Corpus(str(dev_path))(nlp)]
    dev_words = sum(len(nlp.make_doc(t)) for t in dev_texts)
    config = spacy.util.load_config(config_path, interpolate=True)
    batcher = registry.resolve({"b": config["training"]["batcher"]})["b"]
    # FLOPs: 2 per weight of every Linear layer per word-piece (attention scores are extra)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    pieces = sum(len(ids) for ids in tokenizer(dev_texts, truncation=True)["input_ids"])
    gflops = matmul_gflops()
    flop_per_word = 2 * linear * pieces / dev_words
    model.eval()
    ordered = sorted(dev_texts, key=len)
    inputs = [tokenizer(ordered[i: i + RAW_BATCH], padding=True, truncation=True, return_tensors="pt")
              for i in range(0, len(ordered), RAW_BATCH)]
    forward: List[float] = []
    for rep in range(repeats + 1):  # the first pass is a warm-up
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in inputs:
                model(**batch)
        if rep:
            forward.append(dev_words / (time.perf_counter() - start))
    model.train()
    step_s: List[float] = []
    step_words: List[int] = []
    batches = fixed_batches(train_examples, warmup + steps, seed, batcher)
    for i, batch in enumerate(batches):
        encoded = tokenizer([eg.reference.text for eg in batch], padding=True, truncation=True,
                            return_tensors="pt")
        start = time.perf_counter()
        model(**encoded).last_hidden_state.sum().backward()
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            step_s.append(time.perf_counter() - start)
            step_words.append(sum(len(eg.predicted) for eg in batch))
    return {
        "encoder": encoder,
        "torch_threads": torch.get_num_threads(),
        "n_params": sum(p.numel() for p in model.parameters()),
        "linear_weights": linear,
        "matmul_shape": list(MATMUL_SHAPE),
        "matmul_gflops": gflops,
        "wordpieces_per_word": pieces / dev_words,
        "mflop_per_word_forward": flop_per_word / 1e6,
        "bound_forward_words_per_s": gflops * 1e9 / flop_per_word,
        "bound_train_words_per_s": gflops * 1e9 / (3 * flop_per_word),  # backward ~ 2x forward
        "forward_words_per_s": _stats(forward),
        "pipe_words_per_s": sum(forward) / len(forward),
        "pipe_words_per_s_runs": forward,
        "forward_batch": RAW_BATCH,
        "train": {"steps": len(step_s), "warmup": warmup, "batch_sentences": BATCH_SENTENCES,
                  "words": sum(step_words), "seconds": sum(step_s),
                  "words_per_s": sum(step_words) / sum(step_s),
                  "s_per_step": sum(step_s) / len(step_s), "step_s": _stats(step_s),
                  "padded_over_words": sum(len(b) * max(len(eg.predicted) for eg in b)
                                           for b in batches[warmup:]) / sum(step_words),
                  "what": "forward + backward of the summed last hidden state; no optimizer"},
        "child_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "loadavg_child_start": load_start,
        "loadavg_child_end": [round(x, 2) for x in os.getloadavg()],
    }


def variant_config(name: str, config: Path) -> Path:
    """The config a variant trains: its own, spaCy's ner for `--config`'s encoder, or `--config`."""
    own = VARIANTS[name][0]
    if own == "spacy_ner":
        text = config.read_text(encoding="utf8")
        kind = "transformer" if "spacy-transformers." in text else "cnn"
        return ROOT / SPACY_NER_CONFIGS[kind]
    return ROOT / own if own and own != "raw_encoder" else config


# ----------------------------------------------------------------------------- parent


def parse_spacy_benchmark(output: str) -> Dict[str, Optional[float]]:
    """Mean words/s, its 95% CI (absolute bounds) and the outlier share of `spacy benchmark speed`."""
    match = MEAN_RE.search(output)
    if match is None:
        raise ValueError("no 'Mean: ... words/s (95% CI: ...)' line in the spacy benchmark output")
    mean, low, high = (float(x) for x in match.groups())
    outliers = OUTLIERS_RE.search(output)
    return {"words_per_s": mean, "ci95_low": mean + low, "ci95_high": mean + high,
            "outliers_pct": float(outliers.group(1)) if outliers else None}


def run_process(cmd: List[str], env: Dict[str, str], log_path: Path) -> Tuple[int, float, float, str]:
    """Run `cmd` with output to `log_path`. Returns (exit code, wall s, peak RSS MB, output)."""
    start = time.monotonic()
    with log_path.open("w", encoding="utf8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    output = log_path.read_text(encoding="utf8", errors="replace")
    return proc.returncode, time.monotonic() - start, usage.ru_maxrss / 1024.0, output


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def _get(results: Dict[str, Any], variant: str, *path: str) -> Optional[float]:
    value: Any = results.get(variant)
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, (int, float)) else None


def compute_ratios(results: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """Ratios of training and inference words/s: K=3 / K=1, to the references, corpus passes
    and `spacy benchmark speed` to nlp.pipe (None where a variant is missing)."""
    out: Dict[str, Optional[float]] = {}
    for k3 in ("k3_shared", "k3_separate"):
        out[f"train_wps_{k3}_over_k1"] = ratio(_get(results, k3, "train", "words_per_s"),
                                               _get(results, "k1", "train", "words_per_s"))
        out[f"infer_wps_{k3}_over_k1"] = ratio(_get(results, k3, "spacy_benchmark", "words_per_s"),
                                               _get(results, "k1", "spacy_benchmark", "words_per_s"))
        out[f"pipe_wps_{k3}_over_k1"] = ratio(_get(results, k3, "pipe_words_per_s"),
                                              _get(results, "k1", "pipe_words_per_s"))
        out[f"peak_rss_{k3}_over_k1"] = ratio(_get(results, k3, "peak_rss_mb"),
                                              _get(results, "k1", "peak_rss_mb"))
    for variant in SPED_UP:
        out[f"train_wps_{variant}_over_before"] = ratio(
            _get(results, variant, "train", "words_per_s"),
            _get(results, f"{variant.split('_grouped')[0]}_before", "train", "words_per_s"))
    for variant in ("k3_shared", "k3_separate"):
        out[f"estep_wps_{variant}_over_inference"] = ratio(
            _get(results, variant, "estep_words_per_s"), _get(results, variant, "pipe_train_words_per_s"))
    for variant in ("k1", "k3_shared", "k3_separate"):
        out[f"teacher_wps_{variant}_over_inference"] = ratio(
            _get(results, variant, "teacher_words_per_s"),
            _get(results, variant, "pipe_train_words_per_s"))
    for variant in REFERENCE_RATIOS:
        for ref in ("raw_encoder", "spacy_ner"):
            if variant in results and ref in results:
                out[f"train_wps_{variant}_over_{ref}"] = ratio(
                    _get(results, variant, "train", "words_per_s"),
                    _get(results, ref, "train", "words_per_s"))
                out[f"pipe_wps_{variant}_over_{ref}"] = ratio(
                    _get(results, variant, "pipe_words_per_s"), _get(results, ref, "pipe_words_per_s"))
    for variant in results:  # `spacy benchmark speed` against nlp.pipe, both over the dev split
        if _get(results, variant, "spacy_benchmark", "words_per_s") is not None:
            out[f"spacy_benchmark_over_pipe_{variant}"] = ratio(
                _get(results, variant, "spacy_benchmark", "words_per_s"),
                _get(results, variant, "pipe_words_per_s"))
        # the gap decomposed: the CLI against its statistic in-process (same measurement),
        # the benchmark's sample against dev (batch composition), its statistic against
        # total/total (mean of per-batch rates >= the overall rate)
        if _get(results, variant, "bench_sample", "mean_batch_words_per_s") is not None:
            sample = results[variant]["bench_sample"]
            out[f"bench_sample_mean_over_spacy_benchmark_{variant}"] = ratio(
                sample["mean_batch_words_per_s"], _get(results, variant, "spacy_benchmark", "words_per_s"))
            out[f"bench_sample_total_over_pipe_{variant}"] = ratio(
                sample["total_words_per_s"], _get(results, variant, "pipe_words_per_s"))
            out[f"bench_sample_mean_over_total_{variant}"] = ratio(
                sample["mean_batch_words_per_s"], sample["total_words_per_s"])
    if "raw_encoder" in results:
        out["raw_forward_over_bound"] = ratio(_get(results, "raw_encoder", "pipe_words_per_s"),
                                              _get(results, "raw_encoder", "bound_forward_words_per_s"))
        out["raw_train_over_bound"] = ratio(_get(results, "raw_encoder", "train", "words_per_s"),
                                            _get(results, "raw_encoder", "bound_train_words_per_s"))
    return out


def check_targets(results: Dict[str, Any], ratios: Dict[str, Optional[float]]) -> Dict[str, Any]:
    """The issue's targets: value, threshold and whether it is met (None = not measured)."""
    def check(value: Optional[float], op: str, limit: float) -> Dict[str, Any]:
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        return {"value": value, "target": f"{op} {limit}", "met": ok}

    op, limit = TARGETS["train_wps_k3_shared_over_k1"]
    out = {"train_wps_k3_shared_over_k1": check(ratios["train_wps_k3_shared_over_k1"], op, limit)}
    op, limit = TARGETS["infer_wps_k3_shared_over_k1"]
    infer = ratios["infer_wps_k3_shared_over_k1"]
    out["infer_wps_k3_shared_over_k1"] = check(
        infer if infer is not None else ratios["pipe_wps_k3_shared_over_k1"], op, limit)
    out["infer_wps_k3_shared_over_k1"]["source"] = (
        "spacy benchmark speed" if infer is not None else "nlp.pipe")
    op, limit = TARGETS["train_wps_over_before"]
    for variant in SPED_UP:
        key = f"train_wps_{variant}_over_before"
        out[key] = check(ratios.get(key), op, limit)
    op, limit = TARGETS["corpus_pass_over_inference"]
    for key in ("estep_wps_k3_shared_over_inference", "teacher_wps_k3_shared_over_inference",
                "teacher_wps_k1_over_inference"):
        out[key] = check(ratios.get(key), op, limit)
    op, limit = TARGETS["estep_share_max"]
    for variant in ("k3_shared", "k3_separate"):
        out[f"estep_share_{variant}"] = check(_get(results, variant, "estep_share"), op, limit)
    return out


def run_variant(name: str, args: argparse.Namespace, work: Path) -> Dict[str, Any]:
    """Measure one variant in a child process, then `spacy benchmark speed` its saved pipeline."""
    config, n_experts, mode = VARIANTS[name]
    model_dir, child_json = work / f"model_{name}", work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name,
           "--child-json", str(child_json), "--child-model-dir", str(model_dir),
           "--config", str(args.config), "--train", str(args.train), "--dev", str(args.dev),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--pipe-repeats", str(args.pipe_repeats), "--encoder", args.encoder,
           "--bench-batches", str(args.bench_batches), "--bench-batch-size", str(args.bench_batch_size)]
    if args.no_spacy_benchmark:
        cmd.append("--no-spacy-benchmark")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = child_env()
    print(f"[speed] {name}: child process (n_experts={n_experts}, expert_mode={mode})", flush=True)
    code, wall, rss, output = run_process(cmd, env, work / f"{name}.log")
    if code != 0 or not child_json.is_file():
        tail = "\n".join(output.splitlines()[-20:])
        print(f"[speed] {name} FAILED (exit {code}):\n{tail}", file=sys.stderr, flush=True)
        return {"n_experts": n_experts, "expert_mode": mode, "error": f"exit {code}",
                "output_tail": tail}
    result = json.loads(child_json.read_text(encoding="utf8"))
    result["peak_rss_mb"] = rss
    result["child_wall_s"] = wall
    result["config"] = rel(variant_config(name, args.config))
    print(f"[speed] {name}: {result['train']['words_per_s']:.0f} train words/s, "
          f"{result['train']['s_per_step']:.3f} s/step, peak RSS {rss:.0f} MB ({wall:.0f}s)",
          flush=True)
    if args.no_spacy_benchmark or name == "raw_encoder":
        result["spacy_benchmark"] = None
    else:
        bench = [sys.executable, "-m", "spacy", "benchmark", "speed", str(model_dir), str(args.dev),
                 "--batches", str(args.bench_batches), "--warmup", str(args.bench_warmup)]
        if args.bench_batch_size:
            bench += ["--batch-size", str(args.bench_batch_size)]
        if args.threads:
            env = {**env, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        code, wall, rss, output = run_process(bench, env, work / f"{name}.bench.log")
        bench_result: Dict[str, Any] = {
            "command": shlex.join(["python", *bench[1:3], *bench[3:5], "MODEL_DIR", *bench[6:]]),
            "batches": args.bench_batches, "batch_size": args.bench_batch_size or "nlp.batch_size",
            "warmup_epochs": args.bench_warmup, "wall_s": wall, "peak_rss_mb": rss}
        try:
            if code != 0:
                raise ValueError(f"exit {code}")
            bench_result.update(parse_spacy_benchmark(output))
            print(f"[speed] {name}: spacy benchmark speed {bench_result['words_per_s']:.0f} words/s "
                  f"({wall:.0f}s)", flush=True)
        except ValueError as err:
            tail = "\n".join(output.splitlines()[-20:])
            print(f"[speed] {name}: spacy benchmark speed FAILED ({err}):\n{tail}",
                  file=sys.stderr, flush=True)
            bench_result.update({"words_per_s": None, "error": str(err), "output_tail": tail})
        result["spacy_benchmark"] = bench_result
    shutil.rmtree(model_dir, ignore_errors=True)
    return result


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(data: Dict[str, Any]) -> None:
    """A compact table of the variants, then the ratios and targets."""
    header = (f"{'variant':<12} {'train w/s':>9} {'s/step':>7} {'E-step s':>8} {'share':>6} "
              f"{'teach s':>7} {'refr s':>7} {'bench w/s':>9} {'pipe w/s':>8} {'RSS MB':>7} "
              f"{'params M':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for name, res in data["variants"].items():
        if "error" in res:
            print(f"{name:<12} FAILED: {res['error']}")
            continue
        bench = res.get("spacy_benchmark") or {}
        print(f"{name:<12} {res['train']['words_per_s']:>9.0f} {res['train']['s_per_step']:>7.3f} "
              f"{_fmt(res.get('estep_s'), '8.2f'):>8} {_fmt(res.get('estep_share'), '6.1%'):>6} "
              f"{_fmt(res.get('teacher_snapshot_s'), '7.2f'):>7} "
              f"{_fmt(res.get('teacher_refresh_s'), '7.2f'):>7} "
              f"{_fmt(bench.get('words_per_s'), '9.0f'):>9} {res['pipe_words_per_s']:>8.0f} "
              f"{_fmt(res.get('peak_rss_mb'), '7.0f'):>7} {res['n_params'] / 1e6:>8.2f}")
    print()
    for key, value in data["ratios"].items():
        print(f"  {key:<32} {_fmt(value, '.3f')}")
    for key, check in data["targets"].items():
        state = {True: "met", False: "NOT met", None: "n/a"}[check["met"]]
        print(f"  target {key:<30} {_fmt(check['value'], '.3f')} ({check['target']}): {state}")


def default_out(config: Path, train: Path) -> Path:
    return ROOT / "benchmarks" / "results" / f"speed__{train.resolve().parent.name}__{config.stem}.json"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "minilm.cfg")
    p.add_argument("--train", type=Path, default=ROOT / "corpus" / "webpage" / "train.spacy")
    p.add_argument("--dev", type=Path, default=ROOT / "corpus" / "webpage" / "dev.spacy")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=50, help="timed training steps (16 sentences each)")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps before them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pipe-repeats", type=int, default=3, help="timed nlp.pipe passes over dev")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--bench-batches", type=int, default=SPACY_BENCH_MIN_BATCHES,
                   help=f"spacy benchmark speed --batches (>= {SPACY_BENCH_MIN_BATCHES})")
    p.add_argument("--bench-batch-size", type=int, default=0,
                   help="spacy benchmark speed --batch-size (0: the pipeline's nlp.batch_size, as "
                        "nlp.pipe uses)")
    p.add_argument("--bench-warmup", type=int, default=1,
                   help="spacy benchmark speed --warmup (epochs over dev)")
    p.add_argument("--no-spacy-benchmark", action="store_true",
                   help="skip `spacy benchmark speed` (inference only from nlp.pipe)")
    p.add_argument("--out", type=Path, default=None,
                   help="result JSON (default benchmarks/results/speed__<corpus>__<config>.json)")
    p.add_argument("--encoder", default=None,
                   help="raw_encoder: a transformers model id or directory (default: the MiniLM)")
    p.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-model-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown or not args.variant_list:
        p.error(f"unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    if args.steps < 1 or args.warmup < 0 or args.pipe_repeats < 1:
        p.error("--steps and --pipe-repeats must be >= 1, --warmup >= 0")
    if args.bench_batches < SPACY_BENCH_MIN_BATCHES:
        p.error(f"--bench-batches must be >= {SPACY_BENCH_MIN_BATCHES} (spacy benchmark speed's minimum)")
    for path in (args.config, args.train, args.dev):
        if not path.is_file():
            p.error(f"{path} does not exist")
    args.config, args.train, args.dev = (x.resolve() for x in (args.config, args.train, args.dev))
    if args.encoder is None:
        from spacy_bond_moe.util import transformer_name_v1

        args.encoder = transformer_name_v1()
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.child == "raw_encoder":
        result = measure_raw_encoder(args.encoder, args.config, args.train, args.dev,
                                     steps=args.steps, warmup=args.warmup, seed=args.seed,
                                     repeats=args.pipe_repeats, threads=args.threads or None)
        write_json_atomic(args.child_json, result)
        return 0
    if args.child:
        _, n_experts, mode = VARIANTS[args.child]
        result = measure_variant(variant_config(args.child, args.config), n_experts, mode,
                                 args.train, args.dev, steps=args.steps, warmup=args.warmup,
                                 seed=args.seed, pipe_repeats=args.pipe_repeats,
                                 threads=args.threads or None, model_dir=args.child_model_dir,
                                 bench_batches=0 if args.no_spacy_benchmark else args.bench_batches,
                                 bench_batch_size=args.bench_batch_size)
        write_json_atomic(args.child_json, result)
        return 0

    out = args.out or default_out(args.config, args.train)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    machine = machine_info()
    if max(machine["loadavg_at_start"]) > 0.5 * (machine["cores"] or 1):
        print(f"[speed] WARNING: load average {machine['loadavg_at_start']} on {machine['cores']} "
              "cores: other jobs are running, the figures will be slower and noisier", flush=True)
    command = "HF_HUB_OFFLINE=1 " + shlex.join(
        ["python", rel(Path(__file__)), *(sys.argv[1:] if argv is None else argv)])
    t0 = time.monotonic()
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bond_moe_speed_") as tmp:
        for name in args.variant_list:
            results[name] = run_variant(name, args, Path(tmp))
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    ratios = compute_ratios(results)
    data = {
        "schema": SCHEMA_VERSION,
        "benchmark": "speed",
        "config": rel(args.config),
        "train": rel(args.train),
        "dev": rel(args.dev),
        "command": command,
        "settings": {"steps": args.steps, "warmup": args.warmup, "seed": args.seed,
                     "batch_sentences": BATCH_SENTENCES, "pipe_repeats": args.pipe_repeats,
                     "threads": args.threads or "torch default",
                     "spacy_benchmark": None if args.no_spacy_benchmark else {
                         "batches": args.bench_batches,
                         "batch_size": args.bench_batch_size or "nlp.batch_size",
                         "warmup_epochs": args.bench_warmup}},
        "notes": {
            "train": "words/s = tokens of the timed batches / seconds of the timed nlp.update calls "
                     "(the config's dropout and optimizer; routing to experts included; no E-step/teacher)",
            "estep_share": "estep_s / (estep_s + epoch_s), epoch_s = n_train_docs / 16 x mean s/step; "
                           "one reassign_experts over the pre-read training corpus (batch 64); "
                           "corpus_read_s is the extra cost of re-reading it from disk",
            "peak_rss_mb": "os.wait4 ru_maxrss of the variant's child (training + E-step + teacher + "
                           "nlp.pipe); spacy_benchmark.peak_rss_mb is the benchmark process's own",
            "spacy_benchmark": "python -m spacy benchmark speed on the saved pipeline: mean of per-batch "
                               "words/s over dev docs drawn at random, 95% bootstrap CI",
        },
        "variants": results,
        "ratios": ratios,
        "targets": check_targets(results, ratios),
        "wall_s": round(time.monotonic() - t0, 1),
        "machine": machine,
        "git": git_info(),
        "versions": package_versions(),
        "timestamp": started,
    }
    write_json_atomic(out, data)
    print_table(data)
    print(f"\n[speed] wrote {rel(out)} ({data['wall_s']:.0f}s)", flush=True)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
