"""Build ``benchmarks/RESULTS.md`` and ``benchmarks/plots/*.png`` from the run JSONs.

Every number of our systems comes from a JSON written by ``benchmarks/run.py`` (listed at the
bottom of the report); the "reported" rows are the published numbers quoted in
``../shared/design/algorithm.md`` §4. Never edit RESULTS.md by hand: rerun

    python benchmarks/report.py [--results benchmarks/results] [--out benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOT_RUN = "not run"

# Column order of the paper's tables (OntoNotes is not benchmarked: no train file here).
DATASETS: Tuple[str, ...] = ("conll03", "twitter", "webpage", "wikigold")
TITLES: Dict[str, str] = {"conll03": "CoNLL03", "twitter": "Twitter", "webpage": "Webpage",
                          "wikigold": "Wikigold"}

# Table I rows (our systems): system name in the JSONs -> row label.
TABLE1: Tuple[Tuple[str, str], ...] = (
    ("spacy_ner", "spaCy `ner` (MiniLM, distant labels)"),
    ("bond", "BOND (MiniLM, K=1, self-training)"),
    ("bond_moe", "BOND-MoE (MiniLM, K=3, fair, self-training)"),
    ("bond_moe_cnn", "BOND-MoE (CNN, K=3, fair, self-training)"),
)
# Table II rows: (label, system whose JSONs fill it). w/o MoE = K=1 + self-training = `bond`.
TABLE2: Tuple[Tuple[str, str], ...] = (
    ("All stages (`bond_moe`)", "bond_moe"),
    ("w/o MoE (= `bond` runs, K=1)", "bond"),
    ("w/o fair (`wo_fair`)", "wo_fair"),
    ("w/o self-training (`wo_self_training`)", "wo_self_training"),
)
# Published test F1 (RoBERTa-base, full schedules, best-test-F1 selection), from algorithm.md §4.
REPORTED_TABLE1: Tuple[Tuple[str, Dict[str, float]], ...] = (
    ("BOND stage I — BOND README (reported)",
     {"conll03": 75.61, "twitter": 46.61, "webpage": 59.11, "wikigold": 52.15}),
    ("BOND — BOND README (reported)",
     {"conll03": 81.48, "twitter": 48.01, "webpage": 65.74, "wikigold": 60.07}),
    ("BOND — BOND-MoE paper Table I (reported)",
     {"conll03": 77.12, "twitter": 48.07, "webpage": 63.69, "wikigold": 55.76}),
    ("BOND-MoE \"Ours\" — paper Table I (reported)",
     {"conll03": 79.31, "twitter": 47.76, "webpage": 64.11, "wikigold": 56.59}),
)
REPORTED_TABLE2: Dict[str, Dict[str, float]] = {
    "bond_moe": {"conll03": 79.43, "twitter": 47.54, "webpage": 65.02, "wikigold": 56.27},
    "bond": {"conll03": 78.45, "twitter": 47.87, "webpage": 63.23, "wikigold": 54.90},
    "wo_fair": {"conll03": 78.67, "twitter": 47.36, "webpage": 62.89, "wikigold": 55.30},
    "wo_self_training": {"conll03": 74.21, "twitter": 46.25, "webpage": 63.64, "wikigold": 57.24},
}
# The CNN-encoder counterparts of Tables I/II: (label, system).
TABLE_CNN: Tuple[Tuple[str, str], ...] = (
    ("spaCy `ner` (CNN)", "spacy_ner_cnn"),
    ("BOND = w/o MoE (CNN, K=1)", "bond_cnn"),
    ("BOND-MoE all stages (CNN, K=3)", "bond_moe_cnn"),
    ("w/o fair (CNN)", "wo_fair_cnn"),
    ("w/o self-training (CNN)", "wo_self_training_cnn"),
)
# The project's targets, per encoder: (encoder, full BOND-MoE, spaCy `ner` baseline,
# (component, system without it) pairs).
TARGETS: Tuple[Tuple[str, str, str, Tuple[Tuple[str, str], ...]], ...] = (
    ("MiniLM", "bond_moe", "spacy_ner",
     (("MoE", "bond"), ("fair assignment", "wo_fair"), ("self-training", "wo_self_training"))),
    ("CNN", "bond_moe_cnn", "spacy_ner_cnn",
     (("MoE", "bond_cnn"), ("fair assignment", "wo_fair_cnn"),
      ("self-training", "wo_self_training_cnn"))),
)
# Investigation systems checked beside the targets (not counted for them): K=3 with a shared stage I.
SHARED_STAGE_I: Dict[str, str] = {"MiniLM": "bond_moe_warmup", "CNN": "bond_moe_warmup_cnn"}
NER_MARGIN = 10.0  # target: BOND-MoE >= spaCy `ner` + 10 F1 on every dataset
COMPONENT_DATASETS = 3  # target: each component gains on at least 3 of the 4 datasets
SYSTEM_ORDER: Tuple[str, ...] = (
    "spacy_ner", "bond", "bond_moe", "wo_fair", "wo_self_training",
    "spacy_ner_cnn", "bond_cnn", "bond_moe_cnn", "wo_fair_cnn", "wo_self_training_cnn",
)

Run = Dict[str, Any]


# ----------------------------------------------------------------------------- loading


def load_runs(results: Path) -> List[Run]:
    """Every training-run JSON (``<dataset>__<system>__seed<n>.json``, or
    ``...__seed<n>__<cap>steps.json`` at a non-default cap) of the results folder, with ``_file``
    set to its name."""
    runs = []
    for path in sorted(results.glob("*__*__seed*.json")):
        if not re.fullmatch(r"[a-z0-9_]+__[a-z0-9_]+__seed\d+(__\d+steps)?\.json", path.name):
            continue  # e.g. experts__<run>__<split>.json
        data = json.loads(path.read_text(encoding="utf8"))
        data["_file"] = path.name
        data["_path"] = path
        runs.append(data)
    return runs


def load_extra(results: Path, name: str) -> Optional[Dict[str, Any]]:
    """A non-run result (label quality, KB scale, speed), or None if it was not measured."""
    path = results / name
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf8"))
    data["_file"] = path.name
    return data


def speed_section(speed: Optional[Dict[str, Any]], profile: Optional[Dict[str, Any]],
                  profiles: Sequence[Dict[str, Any]] = ()) -> List[str]:
    """The dedicated K-experts speed/memory measurement (benchmarks/speed.py) and the A/B profile."""
    lines = ["## Speed and memory of the K experts (dedicated measurement)", ""]
    if speed is None:
        return lines + [NOT_RUN, ""]
    lines += [f"`{speed['command']}` → `{speed['_file']}` (commit {(speed.get('git') or {}).get('commit', '?')[:10]}): "
              "one child process per variant on the same machine, batches of 16 sentences from each "
              "config's batcher over the same seeded shuffles, no E-step/teacher during the timed steps; "
              "inference = `spacy benchmark speed` on the dev split (batch size "
              f"{((speed.get('settings') or {}).get('spacy_benchmark') or {}).get('batch_size', '?')}) "
              "and in-process `nlp.pipe` (the pipeline's batch size); "
              "`_before` = configs/bond_moe_paper.cfg (random batches, word-piece table trained); "
              "padding = tokens after padding each batch to its longest / tokens (the `_grouped` variants "
              "then encode each batch in length groups); corpus passes in "
              "words/s over the training set, next to `nlp.pipe` over the same texts.", ""]
    rows = []
    for name, v in speed["variants"].items():
        if "error" in v:  # a variant whose child process failed (speed.py records why)
            rows.append([f"`{name}`", f"FAILED: {v['error']}"] + ["-"] * 15)
            continue
        bench = v.get("spacy_benchmark") or {}
        rows.append([f"`{name}`", v.get("config") or speed.get("config", "-"), fmt_num(v["train"].get("padded_over_words"), 2),
                     fmt_num(v["train"]["words_per_s"], 0), fmt_num(v["train"]["s_per_step"], 3),
                     fmt_num(v["train"]["step_s"]["std"], 3),
                     fmt_num(v.get("estep_s"), 2),
                     "-" if v.get("estep_share") is None else f"{100 * v['estep_share']:.1f}%",
                     fmt_num(v.get("teacher_snapshot_s"), 2), fmt_num(v.get("teacher_refresh_s"), 2),
                     fmt_num(v.get("estep_words_per_s"), 0), fmt_num(v.get("teacher_words_per_s"), 0),
                     fmt_num(v.get("pipe_train_words_per_s"), 0),
                     fmt_num(bench.get("words_per_s"), 0), fmt_num(v.get("pipe_words_per_s"), 0),
                     fmt_num(v.get("peak_rss_mb"), 0), fmt_num(v["n_params"] / 1e6, 1)])
    lines += table(["variant", "config", "padding", "train words/s", "s/step", "std s/step", "E-step s",
                    "E-step share", "teacher snapshot s", "refresh s", "E-step words/s",
                    "teacher words/s", "nlp.pipe words/s (train texts)", "infer words/s (spacy benchmark)",
                    "nlp.pipe words/s", "peak RSS MB", "params M"], rows) + [""]
    raw = speed["variants"].get("raw_encoder")
    if raw is not None and "error" not in raw:
        lines += [f"Reference `raw_encoder` (`{raw['encoder']}` alone, {raw['torch_threads']} torch "
                  f"threads): matmul {raw['matmul_gflops']:.1f} GFLOP/s at {tuple(raw['matmul_shape'])}; "
                  f"{raw['wordpieces_per_word']:.2f} word-pieces per word (specials included) × 2 FLOP "
                  f"per Linear weight = {raw['mflop_per_word_forward']:.1f} MFLOP per word forward, so "
                  f"the matmul bound is {raw['bound_forward_words_per_s']:.0f} words/s forward and "
                  f"{raw['bound_train_words_per_s']:.0f} training (backward ≈ 2× forward). Measured: "
                  f"forward {raw['forward_words_per_s']['median']:.0f} words/s (median of "
                  f"{len(raw['pipe_words_per_s_runs'])}, {raw['forward_words_per_s']['min']:.0f}–"
                  f"{raw['forward_words_per_s']['max']:.0f}; length-sorted batches of "
                  f"{raw['forward_batch']}), forward+backward {raw['train']['words_per_s']:.0f} words/s "
                  "on the variants' training batches (no optimizer).", ""]
    references = [(k, v) for k, v in (speed.get("ratios") or {}).items()
                  if k.endswith(("_over_raw_encoder", "_over_spacy_ner", "_over_bound"))
                  or k.startswith(("spacy_benchmark_over_pipe_", "bench_sample_"))]
    if references:
        lines += table(["ratio to a reference", "value"],
                       [[f"`{k}`", fmt_num(v, 3)] for k, v in references]) + [""]
    verdicts = {True: "met", False: "**not met**", None: "not measured"}
    rows = [[f"`{name}`", t["target"], fmt_num(t["value"], 3), verdicts[t["met"]]]
            for name, t in speed["targets"].items()]
    lines += table(["ratio / share", "target", "measured", ""], rows) + [""]
    if profile is not None:
        top = ", ".join(f"{r['function']} +{r['seconds']:.3f}s" for r in profile["top_own_time_growth_s_per_step"][:3])
        lines += [f"A/B profile (`{profile['command']}`, both pipelines in one process, updates "
                  f"alternated on the same batches, cProfile): s/step K=1 {profile['s_per_step']['k1']:.3f}, "
                  f"K=3 shared {profile['s_per_step']['k3_shared']:.3f} → training throughput ratio "
                  f"K=3/K=1 = **{profile['ratio_k1_over_k3']:.3f}** (load average "
                  f"{profile['loadavg'][0]}→{profile['loadavg'][1]}; the cProfile overhead is in both). "
                  f"Largest own-time growths per step: {top}.", ""]
    for prof in profiles:
        lines += profile_lines(prof)
    return lines


def profile_lines(prof: Dict[str, Any]) -> List[str]:
    """One `benchmarks/profile_training.py` A/B: s/step and own time per step by category."""
    a, b = prof["variants"]
    cats = prof["own_s_per_step_by_category"]
    lines = [f"Where a training step's time goes (`{prof['command']}` → `{prof['_file']}`; both "
             f"pipelines in one process, updates alternated on the same batches, cProfile, load average "
             f"{prof['loadavg'][0]}→{prof['loadavg'][1]}): s/step `{a}` {prof['s_per_step'][a]:.3f}, "
             f"`{b}` {prof['s_per_step'][b]:.3f} → throughput `{b}`/`{a}` = "
             f"**{prof['throughput_b_over_a']:.3f}**. Own time per step (tottime; share of the step):", ""]
    rows = [[name] + [f"{cats[v][name]:.3f} s ({100 * cats[v][name] / max(sum(cats[v].values()), 1e-9):.0f}%)"
                      for v in (a, b)] for name in cats[a]]
    return lines + table(["category", f"`{a}`", f"`{b}`"], rows) + [""]


def short_commit(data: Dict[str, Any]) -> str:
    """The first 10 characters of the commit a benchmark JSON records ("?" if none)."""
    return ((data.get("git") or {}).get("commit") or "?")[:10]


def inference_section(data: Optional[Dict[str, Any]]) -> List[str]:
    """Inference words/s side by side (benchmarks/inference_speed.py)."""
    lines = ["## Inference speed side by side", ""]
    if data is None:
        return lines + [NOT_RUN, ""]
    load = data["machine"]
    commit = short_commit(data)
    lines += [f"`{data['command']}` → `{data['_file']}` (commit {commit}): {data['n_docs']} docs / "
              f"{data['n_words']} words of `{data['data']}`, median of {data['repeats']} timed passes "
              f"after a warm-up, one process, load average {load.get('loadavg_at_start')} → "
              f"{load.get('loadavg_at_end')}.", ""]
    rows = [[f"`{name}`", str(row["batch_size"]), fmt_num(row["words_per_s"]["median"], 0),
             fmt_num(row["words_per_s"]["min"], 0), fmt_num(row["words_per_s"]["max"], 0)]
            for name, row in data["rows"].items()]
    lines += table(["pipeline", "batch size", "words/s (median)", "min", "max"], rows) + [""]
    rows = [[name, fmt_num(value, 3)] for name, value in data["ratios"].items()]
    return lines + table(["ratio of medians", "value"], rows) + [""]


def onnx_section(data: Optional[Dict[str, Any]]) -> List[str]:
    """The raw encoder in PyTorch and ONNX Runtime, fp32 and int8 (benchmarks/onnx_check.py)."""
    lines = ["## A faster CPU inference engine? (raw encoder)", ""]
    if data is None:
        return lines + [NOT_RUN, ""]
    load = data["machine"]
    commit = short_commit(data)
    lines += [f"`{data['command']}` → `{data['_file']}` (commit {commit}, onnxruntime "
              f"{data['versions'].get('onnxruntime')}): MiniLM-L6 alone on {data['n_docs']} docs / "
              f"{data['n_words']} words of `{data['data']}`, length-sorted batches of "
              f"{data['batch_size']}, median of {data['repeats']} passes after a warm-up, load average "
              f"{load.get('loadavg_at_start')} → {load.get('loadavg_at_end')}. A path ships only at >= "
              f"{data['ship_if_ratio_at_least']}x.", ""]
    rows = [[f"`{name}`", fmt_num(row["words_per_s"]["median"], 0), fmt_num(row["words_per_s"]["min"], 0),
             fmt_num(row["words_per_s"]["max"], 0), f"{row['ratio_to_torch_fp32']:.2f}x",
             f"{row['max_abs_deviation_from_torch_fp32']:.1e}"]
            for name, row in data["rows"].items()]
    return lines + table(["engine", "words/s (median)", "min", "max", "vs torch fp32",
                          "max abs deviation"], rows) + [""]


def int8_section(data: Optional[Dict[str, Any]]) -> List[str]:
    """Trained pipelines with `inference = "int8"` against fp32 (benchmarks/int8_check.py)."""
    lines = ["## int8 inference in the pipeline (`bond_moe_ner` `inference = \"int8\"`)", ""]
    if data is None:
        return lines + [NOT_RUN, ""]
    load = data["machine"]
    commit = short_commit(data)
    verdict = "**ships**" if data["ships"] else "**does not ship**"
    lines += [f"`{data['command']}` → `{data['_file']}` (commit {commit}): each pipeline loaded as "
              f"saved (fp32) and with `inference = \"int8\"`; F1 by spaCy's scorer on the split's "
              f"re-tokenised text, `nlp.pipe` words/s the median of {data['repeats']} passes after a "
              f"warm-up, load average {load.get('loadavg_at_start')} → {load.get('loadavg_at_end')}. "
              f"Rule: ship at >= {data['ship_if_speedup_at_least']}x and <= "
              f"{data['ship_if_f1_loss_at_most']} F1 points lost on every pair: {verdict}.", ""]
    rows = [[f"`{r['model']}`", f"`{r['data']}`", fmt_num(r["fp32"]["f1"]), fmt_num(r["int8"]["f1"]),
             fmt_num(r["f1_loss"]), fmt_num(r["fp32"]["words_per_s"]["median"], 0),
             fmt_num(r["int8"]["words_per_s"]["median"], 0), f"{r['speedup']:.2f}x"]
            for r in data["rows"]]
    return lines + table(["pipeline", "data", "F1 fp32", "F1 int8", "F1 lost", "words/s fp32",
                          "words/s int8", "speedup"], rows) + [""]


def seqeval_section(data: Optional[Dict[str, Any]]) -> List[str]:
    """spaCy's scorer against seqeval on the same predictions (benchmarks/seqeval_check.py)."""
    lines = ["## Independent scorer check (seqeval)", ""]
    if data is None:
        return lines + [NOT_RUN, ""]
    lines += [f"`{data['command']}` → `{data['_file']}`: each pipeline tags the gold split's own "
              "tokens; spaCy's `ner_scorer` and seqeval's default (conlleval-compatible) mode score "
              f"the same predictions. Largest |F1 difference|: {data['max_abs_f1_difference']:.4f} "
              "points. (The tables above score spaCy's re-tokenisation of the text against the gold "
              "tokens, as `spacy evaluate` does, so their F1 can differ slightly from these.)", ""]
    rows = [[f"`{r['model']}`", f"`{r['data']}`", str(r["gold_entities"]),
             str(r["predicted_entities"]),
             "/".join(fmt_num(r["spacy"][k]) for k in "prf"),
             "/".join(fmt_num(r["seqeval_default"][k]) for k in "prf"), f"{r['f1_difference']:.4f}"]
            for r in data["rows"]]
    return lines + table(["pipeline", "data", "gold ents", "predicted ents", "spaCy P/R/F1",
                          "seqeval P/R/F1", "F1 difference"], rows) + [""]


def uncertain_o_section(data: Optional[Dict[str, Any]], runs: List[Run]) -> List[str]:
    """Which distant O labels each `uncertain_o` mode unsupervises (benchmarks/uncertain_o_coverage.py),
    and the own-label runs with and without it."""
    lines = ["## Missed names left unsupervised (`uncertain_o`), CoNLL03", ""]
    if data is None:
        return lines + [NOT_RUN, ""]
    lines += [f"`{data['command']}` → `{data['_file']}` (commit {short_commit(data)}): of the train tokens "
              "whose distant label is O, the gold entity tokens (missed by the labels) and the true O "
              "tokens that each mode of the distant loss leaves unsupervised in stage I (the package's "
              "own `DistantLoss.supervised`; gold train labels used for this count only).", ""]
    rows = []
    for labels, r in data["labels"].items():
        for mode in ("capitalised", "proper"):
            m = r[mode]
            rows.append([f"`{labels}`", f"`{mode}`", f"{r['missed_entity_tokens']:,} of {r['distant_o_tokens']:,}",
                         fmt_num(100 * m["missed_unsupervised_share"]), fmt_num(100 * m["true_o_unsupervised_share"]),
                         fmt_num(100 * m["entity_share_of_unsupervised"])])
    lines += table(["labels", "mode", "missed entity tokens among distant O", "missed unsupervised %",
                    "true O unsupervised %", "entities among the unsupervised %"], rows) + [""]
    rows = []
    for system in ("bond", "bond_uncertain_o", "bond_proper_o"):
        for r in sorted((r for r in runs if r["dataset"] == "conll03_kb" and r["system"] == system),
                        key=lambda r: r["seed"]):
            best = r["eval_at_best"]
            per_type = ", ".join(f"{t} {fmt_num(100 * best['per_type'][t]['p'])}/{fmt_num(100 * best['per_type'][t]['r'])}"
                                 for t in sorted(best["per_type"]))
            rows.append([f"`{system}`", str(r["seed"]), fmt_num(100 * r["dev_at_best"]["f"]), str(r["dev_best_step"]),
                         "/".join(fmt_num(100 * best[k]) for k in "prf"), per_type])
    if rows:
        lines += ["K=1 BOND on our own KB labels (`conll03_kb`), with the distant O labels all supervised "
                  "(`bond`) or not where a mode says so; test P/R/F1 at the dev-best step:", ""]
        lines += table(["system", "seed", "dev F1", "dev-best step", "test P/R/F1", "test P/R per type"], rows) + [""]
    return lines


def kb_loop_section(data: Optional[Dict[str, Any]]) -> List[str]:
    """The label -> train -> suggest-kb -> relabel -> train loop once on CoNLL03
    (benchmarks/kb_loop.py): label quality and model F1 before and after the suggestions."""
    lines = ["## The KB loop once on CoNLL03 (`suggest-kb`)", ""]
    if data is None:
        return lines + [NOT_RUN, ""]
    sug = data["suggestions"]
    lines += [f"`{data['command'].strip()}` → `{data['_file']}` (commit {short_commit(data)}): the offline KB "
              f"packs label CoNLL03's train text; `{data['system']}` (seed {data['seed']}) trains on it "
              f"(gold dev selects, gold test scores); `suggest-kb` with that model proposes additions, of "
              f"which the top {data['top']} are accepted unread ({sug['n']} passed the default filters: "
              f"{', '.join(f'{k} {v}' for k, v in sug['by_label'].items())}); the packs plus the "
              "suggestions label the text again and the same system trains again. Gold train labels "
              "only score the label sets, and afterwards count how many accepted suggestions are a gold "
              f"entity of that type somewhere in train: {sug['gold_entity_of_that_type_somewhere']} of "
              f"{sug['n']}. One seed: differences of about 1 F1 are within seed noise.", ""]
    rows = []
    for name, r in data["rounds"].items():
        q = r["label_quality_vs_gold_train"]
        rows.append([name.replace("_", " "), "/".join(fmt_num(100 * q[k]) for k in "prf"), str(q["pred"]),
                     fmt_num(100 * r["dev_f1_at_best"], 2), fmt_num(100 * r["test_f1_at_dev_best"], 2)])
    lines += table(["KB", "labels vs gold train P/R/F1", "labelled entities", "model dev F1 (best)",
                    "model test F1 at dev-best"], rows) + [""]
    lines += ["First suggestions (text, label, count, mean confidence): "
              + "; ".join(f"{t} {lab} {c} {conf:.2f}" for t, lab, c, conf in sug["first_20"]) + ".", ""]
    return lines


def growth_of(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """'task engine a → b → c MB' of the largest process, per (task, engine) with 2+ input sizes."""
    by_key: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["task"], row["engine"]), []).append(row)
    return [f"{task} {engine} " + " → ".join(f"{r['peak_rss_process_mb']:.0f}" for r in group) + " MB"
            for (task, engine), group in by_key.items() if len(group) > 1]


def bounded_allocator_lines(data: Optional[Dict[str, Any]]) -> List[str]:
    """MiniLM annotate rows rerun after the shard workers fixed glibc's malloc thresholds."""
    if data is None:
        return []
    # Rows added by `scale.py --append` name their commit; the others the file's (written after the run).
    rows = [[f"{r['lines']:,}", r["engine"], fmt_num(r["wall_s"], 1), fmt_num(r["docs_per_s"], 0),
             fmt_num(r["peak_rss_process_mb"], 0), str(r["max_processes"]),
             short_commit({"git": r}) if r.get("commit") else short_commit(data)]
            for r in data["rows"]]
    return [f"**Allocator thresholds fixed** (`{data['command']}` → `{data['_file']}`): the shard workers now set glibc's mmap threshold to 1 MiB and its trim "
            "threshold to 64 MiB. With glibc's adaptive threshold, freeing one large tensor raises the "
            "threshold, later tensors come from the heap, and the heap fragments: one MiniLM process grew "
            "shard after shard (above). Its speed cost is not measured: the docs/s below come from "
            "another run than the rows before the fix, so they do not measure it.", ""] \
        + table(["lines", "engine", "wall s", "docs/s", "largest process MB", "processes", "commit"], rows) + [""] \
        + ["Largest process at 2,000 → 20,000 → 40,000 lines: " + "; ".join(growth_of(data["rows"])) + ".", ""]


def corpus_scale_section(data: Optional[Dict[str, Any]], bounded: Optional[Dict[str, Any]] = None) -> List[str]:
    """Sharded distant/annotate throughput and memory per engine (benchmarks/scale.py), and
    the extrapolation to N workers and 10^8 documents from the measured costs."""
    lines = ["## Corpus scale: sharded `distant` and `annotate` per engine", ""]
    if data is None:
        return lines + [NOT_RUN, ""]
    load = data["machine"]
    lines += [f"`{data['command']}` → `{data['_file']}` (commit {short_commit(data)}): the CoNLL03 train "
              f"text repeated to N lines (distinct doc ids), KB = the offline packs ({data['kb']['patterns']:,} "
              f"patterns), shard sizes {data['shard_size']}. Each row is one fresh run of the command "
              "(engine start, KB or pipeline load per worker included in the wall time); docs/s = docs / "
              "wall; busy docs/s per worker = docs over the summed shard times (distant: both passes, name "
              "learning and labelling); peak RSS sampled every 0.1 s over the whole process tree (summed: "
              "an upper bound, shared pages count once per process) and of its largest process. "
              f"The machine had nothing else running (load average {load.get('loadavg_at_start')} → "
              f"{load.get('loadavg_at_end')}).", ""]
    rows = [[r["task"], f"{r['lines']:,}", r["engine"], fmt_num(r["wall_s"], 1), fmt_num(r["docs_per_s"], 0),
             fmt_num(r["per_worker_docs_per_s"], 0), fmt_num(r["setup_s"], 1), fmt_num(r["peak_rss_tree_mb"], 0),
             fmt_num(r["peak_rss_process_mb"], 0), str(r["max_processes"]),
             f"{r.get('workers_seen', '?')} of {r['workers']}"] for r in data["rows"]]
    lines += table(["task", "lines", "engine", "wall s", "docs/s", "busy docs/s per worker",
                    "setup s per worker", "peak RSS tree MB", "largest process MB", "processes",
                    "workers that ran shards (all passes)"], rows) + [""]
    idle = [f"{r['task']} {r['lines']:,} {r['engine']}" for r in data["rows"]
            if r.get("workers_seen", r["workers"]) < r["workers"]]
    if idle:
        lines += ["Rows where fewer workers ran shards than were started (the engine gave one worker "
                  "every shard; their docs/s is not a 2-worker figure): " + "; ".join(idle) + ".", ""]
    growth = growth_of(data["rows"])
    if growth:
        lines += ["Largest process at the small → the large input (a worker holds one shard at a "
                  "time; growth beyond a few % is a leak or allocator caching to explain): "
                  + "; ".join(growth) + ".", ""]
    lines += bounded_allocator_lines(bounded)
    lines += ["### Scaling on paper", "",
              "From the large-input rows with 2 workers (one core each): T(N) ≈ start + setup + D / (N · r), "
              "r = busy docs/s per worker, start = wall − busy/2 − setup (process start, engine start, "
              "planning, manifest). Assumptions: workers do not share cores; the shared file system "
              "sustains N · r · (output bytes per doc); the input is many files or one file the driver "
              "can plan (it reads every byte once: plan time below); workers are homogeneous. For "
              "D = 10⁸ documents of CoNLL03 sentence length:", ""]
    rows = []
    largest: Dict[str, int] = {}
    for row in data["rows"]:
        largest[row["task"]] = max(largest.get(row["task"], 0), row["lines"])
    for row in data["rows"]:
        if row["workers"] != 2 or row["engine"] == "local2" or row["lines"] != largest[row["task"]]:
            continue
        rate = row["per_worker_docs_per_s"] / (2 if row["task"] == "distant" else 1)  # docs through both passes
        start = row["wall_s"] - row["busy_s"] / 2 - row["setup_s"]
        out_per_doc = row["output_mb"] * 2**20 / row["docs"]
        plan_per_doc = row["plan_s"] / row["docs"]
        hours = 1e8 / rate / 3600
        rows.append([row["task"], row["engine"], fmt_num(rate, 0), fmt_num(row["setup_s"], 1), fmt_num(start, 1),
                     fmt_num(hours, 0), fmt_num(hours / 64, 1), fmt_num(hours * 3600 / 1024 / 60, 0),
                     fmt_num(64 * rate * out_per_doc / 2**20, 1), fmt_num(out_per_doc * 1e8 / 2**30, 0),
                     fmt_num(plan_per_doc * 1e8, 0), fmt_num(row["peak_rss_process_mb"], 0)])
    lines += table(["task", "engine", "docs/s per worker (r)", "setup s per worker", "start s",
                    "10⁸ docs: worker-hours", "wall h at N=64", "wall min at N=1024",
                    "writes MB/s at N=64", "output GiB", "driver planning s", "RAM per worker MB"], rows) + [""]
    lines += ["Where a 10⁸-document run would bottleneck: (1) **per-worker memory and setup** — every "
              "worker holds the whole KB (the labeller's PhraseMatcher) or the whole pipeline, so RAM per "
              "worker grows with the KB, not with the corpus (benchmarks/kb_scale.py: 1M names → 1.7 GB), "
              "and the setup is paid once per worker, which is negligible against hours of work; (2) "
              "**output writes** stay modest per worker but add up at N workers on one file system; "
              "(3) **the driver's planning pass** reads every input byte once (SHA-256 and line offsets) "
              "before any shard runs: for one 10⁸-line file it is the serial part — split the corpus into "
              "many files, or plan once and resume (planning is repeated on every rerun); (4) **the "
              "manifest** holds one receipt per shard: at 10,000 docs per shard, 10⁴ receipts (a few MB), "
              "fine; at much smaller shards it grows. The start (column above: process, engine and "
              "worker start, including importing spaCy and torch in each worker: spacy_bond_moe imports "
              "torch even for labelling, ~290 MB and ~3.6 s per process) is a fixed cost. Measured "
              "here, not assumed: with 2 workers each worker runs at 80–90% of a lone worker's rate "
              "(CNN 403–454 vs 509 docs/s; the two cores share caches and memory bandwidth), so the "
              "per-worker rate r above is the 2-worker one. MiniLM `local1` runs torch with 2 threads in "
              "one process, so its per-worker rate is a 2-core rate. Not measured here: more than 2 "
              "workers, a real multi-node cluster (Dask scheduler / Ray head on another machine), GPUs.", ""]
    return lines


def reliability_section(kills: Sequence[Dict[str, Any]], resume: Optional[Dict[str, Any]]) -> List[str]:
    """Kill-safety of checkpoints (kill_safety.py) and a resumed real run (resume_check.py)."""
    lines = ["## Reliability: killed runs and resumed runs", ""]
    if not kills:
        lines += ["Kill safety: " + NOT_RUN, ""]
    names = {"spacy": "`spacy train` (spaCy's loop)", "ours": "`python -m spacy_bond_moe train`"}
    for kill in kills:
        lines += [f"`python benchmarks/kill_safety.py --encoder {kill['encoder']}` → `{kill['_file']}`: "
                  f"{kill['setup']} (HORIZON {kill['horizon_s']} s, seed {kill['seed']}).", ""]
        rows = [[names.get(r["runner"], r["runner"]), str(r["trials"]), str(r["killed"]),
                 str(r["model_best_failed"]),
                 "; ".join(sorted({f["error"] for f in r["failures"]}))[:200] or "-"] for r in kill["runs"]]
        lines += table(["training entry point", "trials", "killed", "model-best failed to load",
                        "errors"], rows) + [""]
    if resume is None:
        return lines + ["Resumed run: " + NOT_RUN, ""]
    first, second = resume["calls"]["interrupted"]
    lines += [f"`python benchmarks/resume_check.py` → `{resume['_file']}`: {resume['dataset']} "
              f"`{resume['system']}` seed {resume['seed']}, `{resume['command']}`; the interrupted run "
              f"was SIGKILLed {first['seconds']:.0f} s in (state saved at step "
              f"{first['killed_with_state_at_step']}) and rerun with `--resume` "
              f"({second['seconds']:.0f} s); uninterrupted {resume['calls']['uninterrupted'][0]['seconds']:.0f} s. "
              f"Dev scores identical at every evaluation: **{'yes' if resume['identical'] else 'NO'}**.", ""]
    spacy_curve = {row["step"]: row["f"] for row in resume.get("suite_spacy_train_curve") or []}
    rows = [[str(a["step"]), fmt_num(100 * a["f"]), fmt_num(100 * b["f"]), f"{a['loss']:.3f}",
             f"{b['loss']:.3f}",
             fmt_num(100 * spacy_curve[a["step"]]) if a["step"] in spacy_curve else "-"]
            for a, b in zip(resume["curves"]["uninterrupted"], resume["curves"]["interrupted"])]
    return lines + table(["step", "dev F1 uninterrupted", "dev F1 killed + resumed",
                          "loss uninterrupted", "loss resumed", "dev F1 of the suite's `spacy train` run"],
                         rows) + [""]


class Analysis(NamedTuple):
    """One `experts__<run>__<split>.json`, the run JSON it belongs to, and whether it is stale."""
    path: Path
    data: Dict[str, Any]
    run: Optional[Run]
    stale: bool


def load_analyses(results: Path, runs: Sequence[Run]) -> List[Analysis]:
    """Read the expert-agreement JSONs once and pair each with its run. Stale = both files carry a
    model fingerprint and they differ: `model-best` was retrained (`run.py --force`) after
    `expert_agreement.py` read it. Older files without one are not checked."""
    by_name = {r["_file"][: -len(".json")]: r for r in runs}
    analyses = []
    for path in sorted(results.glob("experts__*.json")):
        data = json.loads(path.read_text(encoding="utf8"))
        match = re.fullmatch(r"experts__(.+)__[a-z]+\.json", path.name)
        run = by_name.get(match.group(1)) if match else None
        ours, theirs = data.get("model_sha256"), (run or {}).get("model_best_sha256")
        analyses.append(Analysis(path, data, run, bool(ours and theirs and ours != theirs)))
    return analyses


def experts_section(analyses: Sequence[Analysis]) -> List[str]:
    """Per-expert F1 and agreement of trained pipelines (benchmarks/expert_agreement.py)."""
    lines = ["## Do the experts differ? (`benchmarks/expert_agreement.py`)", "",
             "Each expert decoded alone vs the mixture (entity F1 %), and per pair of experts the share "
             "of tokens with the same argmax tag / the mean total-variation distance of their token "
             "distributions. Leaky oracle = the paper code's evaluation (algorithm.md §5.4): per "
             "sentence the expert that best fits the GOLD tags is decoded; it reads the evaluation "
             "labels, so it only measures how much that protocol inflates a mixture. Last column (with `--train`): one fair E-step on the distant train labels "
             "with the trained experts, documents per expert (entity-free ones).", ""]
    rows = []
    for path, data, _, is_stale in analyses:
        scores = data["entity_scores"]
        experts = " / ".join(fmt_num(100 * scores[f"expert_{i}"]["f"]) for i in range(data["n_experts"]))
        pairs = ", ".join(f"{k}: {v['argmax_agreement']:.2f} / {v['mean_tv_distance']:.2f}"
                          for k, v in data["pairs"].items())
        view = data.get("estep_view")
        loads = (" / ".join(f"{e['docs']} ({e['entity_free']})" for e in view["per_expert"])
                 if view else NOT_RUN)
        oracle = scores.get("leaky_oracle")
        stale = " (**stale**: model-best retrained since; rerun expert_agreement.py)" if is_stale else ""
        rows.append([f"`{path.name}`{stale}", experts, fmt_num(100 * scores["mixture"]["f"]),
                     fmt_num(100 * oracle["f"]) if oracle else NOT_RUN, pairs, loads])
    header = ["analysis", "experts alone (F1)", "mixture (F1)", "leaky oracle (F1; reads gold, NOT valid)",
              "agreement / TV per pair", "E-step docs (entity-free) per expert"]
    return lines + table(header, rows or [[NOT_RUN] * 6]) + [""]


def subset_gains(subsets: Dict[str, Dict[str, float]], size: int) -> List[float]:
    """Per sub-ensemble of `size` members: its F1 minus the mean F1 of those members alone."""
    return [v["f"] - sum(subsets[m]["f"] for m in k.split("+")) / size
            for k, v in subsets.items() if len(k.split("+")) == size]


def distilled_students(runs: Sequence[Run], members: Sequence[str], split: str) -> List[float]:
    """F1 (%) on `split` of the runs distilled from exactly these members' merge."""
    key = "dev_at_best" if split == "dev" else "eval_at_best"
    return [v for r in runs if (r.get("teacher") or {}).get("members") == list(members)
            and (split == "dev" or r.get("eval_split") == split)
            for v in [metric(r, key)] if v is not None]


def ensembles_section(results: Optional[Path], runs: Sequence[Run] = ()) -> List[str]:
    """Seed ensembles of trained pipelines (benchmarks/seed_ensemble.py; `merge` builds them)
    and the K=1 students distilled from them (run.py's `*_distilled` systems)."""
    lines = ["## Seed ensembles: members trained on all documents, differing by seed "
             "(`benchmarks/seed_ensemble.py`)", "",
             "Each member is one run of the table above (its dev-best `model-best`); the ensemble "
             "averages the members' token mixtures and decodes the average (what `python -m "
             "spacy_bond_moe merge` builds from K=1 members, at K times the encoder's cost). Members "
             "alone reproduce their runs' F1. Gain = ensemble F1 minus the mean of its own members "
             "alone; for pairs, mean [min, max] over the pairs. Agreement: tokens on which two members' "
             "mixtures pick the same tag (mean over pairs). Distilled: one K=1 student of the same "
             "recipe and cap trained only on the merged ensemble's pseudo-labels (teacher from step "
             "1, never refreshed; `benchmarks/run.py --system <members>_distilled`), F1 over its "
             "seeds — the ensemble's gain at one encoder's inference cost, if it keeps it.", ""]
    rows = []
    for path in sorted(results.glob("ensemble__*.json")) if results is not None else []:
        data = json.loads(path.read_text(encoding="utf8"))
        subsets, n = data["subsets"], len(data["members"])
        singles = " / ".join(fmt_num(subsets[str(i)]["f"]) for i in range(n))
        pairs = subset_gains(subsets, 2) if n > 2 else []
        pair_text = (f"{sum(pairs) / len(pairs):+.1f} [{min(pairs):+.1f}, {max(pairs):+.1f}]"
                     if pairs else "–")
        agreement = list(data["agreement"].values())
        rows.append([f"`{data['name']}`", Path(data["data"]).stem, singles,
                     f"{data['members_mean_f']:.1f} ± {data['members_std_f']:.1f}", pair_text,
                     fmt_num(data["ensemble_f"]), f"{data['ensemble_f'] - data['members_mean_f']:+.1f}",
                     f"{sum(agreement) / len(agreement):.3f}",
                     mean_std(distilled_students(runs, [m["model"] for m in data["members"]],
                                                 Path(data["data"]).stem))])
    header = ["members (runs)", "split", "members alone (F1)", "mean ± std", "pair ensembles: gain",
              "all members (F1)", "gain", "agreement", "distilled K=1 student (F1)"]
    return lines + table(header, rows or [[NOT_RUN] * 9]) + [""]


def tokenization_section(tokens: Optional[Dict[str, Any]], analyses: Sequence[Analysis]) -> List[str]:
    """spaCy's re-tokenisation of the corpora (benchmarks/tokenization.py) and what it does to the scores."""
    lines = ["## Tokenisation: spaCy's tokens vs the datasets' own", "",
             "Training and evaluation read the DocBins with `gold_preproc = false`: each document is "
             "re-tokenised by spaCy's English tokenizer and the labels are aligned to the new tokens; "
             "`spacy evaluate` maps each predicted entity back to the dataset's tokens before matching "
             "(spaCy's `get_ner_prf`).", ""]
    if tokens is None:
        return lines + [NOT_RUN, ""]
    lines += [f"`{tokens['command']}` → `{tokens['_file']}`:", ""]
    rows = [[r["dataset"], r["split"], f"{r['docs']:,}", f"{r['docs_retokenized']:,}",
             f"{r['tokens']:,} → {r['spacy_tokens']:,}", f"{r['entities']:,}", str(r["entities_off_boundaries"]),
             str(r["spacy_tokens_label_missing"])] for r in tokens["splits"]]
    lines += table(["dataset", "split", "docs", "docs re-tokenised", "tokens: dataset → spaCy", "entities",
                    "entities off spaCy token boundaries", "spaCy tokens with a missing label"], rows) + [""]
    rows = []
    for path, data, run, stale in analyses:
        if run is None or stale or not path.name.endswith(f"__{run.get('eval_split')}.json"):
            continue
        mixture = data["entity_scores"]["mixture"]["f"]
        ours = metric(run, "eval_at_best")
        rows.append([f"`{run['_file']}`", run["eval_split"], fmt_num(ours), fmt_num(100 * mixture),
                     "-" if ours is None else f"{100 * mixture - ours:+.1f}"])
    if rows:
        lines += ["The same `model-best` scored both ways: `spacy evaluate` on spaCy's tokens (the tables "
                  "above) and `benchmarks/expert_agreement.py`'s mixture on the dataset's tokens "
                  "(same decoder, strict span match).", ""]
        lines += table(["run", "split", "F1 spaCy tokens (tables)", "F1 dataset tokens", "difference"], rows) + [""]
    return lines


def labels_section(runs: Sequence[Run], quality: Optional[Dict[str, Any]],
                   scale: Optional[Dict[str, Any]],
                   test_quality: Optional[Dict[str, Any]] = None) -> List[str]:
    """Our distant labels on CoNLL03: label quality, the 1M-name KB check, and training on them."""
    lines = ["## CoNLL03: our distant labels (offline KB packs + rules) vs BOND's", ""]
    if quality is None:
        return lines + [NOT_RUN, ""]
    lines += [f"Entity-level scores of the training labels against the gold train labels "
              f"({quality['n_sentences']} sentences; gold used for this measurement only), from "
              f"`{quality['_file']}` (`{quality['command']}`, commit {quality.get('git_commit', '?')[:10]}).", ""]
    types = ("PER", "ORG", "LOC", "MISC")

    def row(name: str, r: Dict[str, Any]) -> List[str]:
        return [name] + [fmt_num(100 * r[k]) for k in ("p", "r", "f")] + [
            fmt_num(100 * (r["per_type"].get(t) or {}).get("f", 0.0)) for t in types]

    rows = [row("**ours** (all packs, all rules, name propagation)", quality["ours"]),
            row("BOND's distant labels", quality["bond"])]
    rows += [row(f"ours, {name}", r) for name, r in quality.get("ablations", {}).items()]
    lines += table(["labels", "P", "R", "F1"] + [f"{t} F1" for t in types], rows) + [""]
    if scale is not None:
        lines += [f"Scale: a KB of {scale['n_synthetic_names']:,} synthetic person names "
                  f"({scale['kb_file_mb']} MB TSV) + the packs ({scale['kb_phrases_loaded']:,} phrases) "
                  f"labels the {scale['n_docs']:,} CoNLL03 train sentences in "
                  f"{scale['labeller_wall_seconds']:.0f} s, peak RSS {scale['labeller_peak_rss_mb']:.0f} MB "
                  f"(`{scale['command']}`; load average at the end {scale['loadavg_at_end'][0]}).", ""]
    pairs = [(r, o) for r in runs if r["dataset"] == "conll03"
             for o in runs if o["dataset"] == "conll03_kb" and o["system"] == r["system"]
             and o["seed"] == r["seed"] and o["steps"] == r["steps"]]
    lines += ["Training on each label set (same system, seed and step cap; gold dev selects the "
              "checkpoint; gold test F1 %):", ""]
    rows = [[f"`{r['system']}`", str(r["seed"]), str(r["steps"]), fmt_num(metric(r, "eval_at_best")),
             fmt_num(metric(o, "eval_at_best")), fmt_num(metric(r, "eval_at_last")),
             fmt_num(metric(o, "eval_at_last"))] for r, o in pairs]
    lines += table(["system", "seed", "steps", "BOND labels (dev-best)", "our labels (dev-best)",
                    "BOND labels (last)", "our labels (last)"], rows or [[NOT_RUN] * 7]) + [""]
    if test_quality is not None:
        o = test_quality["ours"]
        lines += [f"For reference, our labeller applied directly to the gold **test** text "
                  f"(`{test_quality['command']}`): P {100 * o['p']:.1f} R {100 * o['r']:.1f} "
                  f"F1 {100 * o['f']:.1f}.", ""]
        own = sorted((r for r in runs if r["dataset"] == "conll03_kb"),
                     key=lambda r: (system_rank(r["system"]), r["seed"]))
        if own:
            margins = ", ".join(f"`{r['system']}` seed {r['seed']}: "
                                f"{metric(r, 'eval_at_best') - 100 * o['f']:+.1f}" for r in own)
            lines += [f"Model trained on our labels minus that labeller (test F1 points; target "
                      f"≥ +5): {margins}.", ""]
    return lines


def system_rank(system: str) -> Tuple[int, str]:
    """Position of a system in the report's order (unknown systems last, by name)."""
    return (SYSTEM_ORDER.index(system) if system in SYSTEM_ORDER else len(SYSTEM_ORDER), system)


def select_cap(runs: Sequence[Run]) -> Optional[int]:
    """The step cap reported for one dataset: the suite's default cap if any run used it, else the
    most common cap (ties: the larger)."""
    if not runs:
        return None
    default = [r["steps"] for r in runs if r["steps"] == r.get("default_steps")]
    if default:
        return default[0]
    counts = Counter(r["steps"] for r in runs)
    return max(counts, key=lambda cap: (counts[cap], cap))


def split_by_cap(runs: Sequence[Run]) -> Tuple[Dict[str, List[Run]], List[Run], Dict[str, int]]:
    """Runs per dataset at the selected cap, the other runs, and the selected cap per dataset."""
    per_dataset: Dict[str, List[Run]] = defaultdict(list)
    for run in runs:
        per_dataset[run["dataset"]].append(run)
    main: Dict[str, List[Run]] = {}
    other: List[Run] = []
    caps: Dict[str, int] = {}
    for dataset, group in per_dataset.items():
        cap = select_cap(group)
        assert cap is not None
        caps[dataset] = cap
        main[dataset] = [r for r in group if r["steps"] == cap]
        other += [r for r in group if r["steps"] != cap]
    return main, other, caps


# ----------------------------------------------------------------------------- formatting


def pct(value: Optional[float]) -> Optional[float]:
    """A fraction as a percentage (None stays None)."""
    return None if value is None else 100.0 * value


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std (n=k)`` (sample std; no ± for a single value); NOT_RUN when empty."""
    if not values:
        return NOT_RUN
    if len(values) == 1:
        return f"{values[0]:.1f} (n=1)"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (n={len(values)})"


def metric(run: Run, key: str, field: str = "f", label: Optional[str] = None) -> Optional[float]:
    """A percentage from run[key] (``eval_at_best`` etc.), overall or for one entity type."""
    block = run.get(key) or {}
    if label is not None:
        block = (block.get("per_type") or {}).get(label) or {}
    return pct(block.get(field))


def cell(runs: Iterable[Run], system: str, key: str = "eval_at_best", field: str = "f",
         label: Optional[str] = None) -> str:
    """The mean ± std cell of one system over its seeds."""
    values = [v for r in runs if r["system"] == system
              for v in [metric(r, key, field, label)] if v is not None]
    return mean_std(values)


def f1_stats(runs: Iterable[Run], system: str) -> Tuple[Optional[float], Optional[float], int]:
    """Mean and sample std (None below 2 seeds) of a system's dev-best F1 (%), and its seeds."""
    values = [v for r in runs if r["system"] == system for v in [metric(r, "eval_at_best")] if v is not None]
    mean = statistics.mean(values) if values else None
    return mean, (statistics.stdev(values) if len(values) > 1 else None), len(values)


def difference(runs: Sequence[Run], system: str, other: str, margin: float
               ) -> Tuple[Optional[float], bool, str]:
    """Mean F1 of `system` minus that of `other`; whether it clears `margin` by more than the seed
    noise (the larger sample std, so 2+ seeds on both sides); and its cell text."""
    a, std_a, n_a = f1_stats(runs, system)
    b, std_b, n_b = f1_stats(runs, other)
    if a is None or b is None:
        return None, False, NOT_RUN
    noise = None if std_a is None or std_b is None else max(std_a, std_b)
    clear = noise is not None and abs(a - b - margin) > noise
    return a - b, clear, f"{a - b:+.1f} (n {n_a}/{n_b}, noise {fmt_num(noise)})"


def targets_section(main: Dict[str, List[Run]]) -> List[str]:
    """The project's targets checked per encoder from the mean F1s above. A dataset counts for a
    target on the sign of the difference; it counts *beyond noise* only when the difference is
    further from the threshold than the larger seed std of the two systems."""
    lines = ["## Targets (computed from the tables above)", "",
             "Cells: mean dev-best F1 of BOND-MoE minus the other system (% points), seeds of each "
             "side, and the noise bar = the larger sample std of the two (n/a: a side has 1 seed). "
             f"Targets: BOND-MoE ≥ spaCy `ner` + {NER_MARGIN:.0f} on every dataset (same encoder); "
             f"each component of the method gains (difference > 0) on at least {COMPONENT_DATASETS} "
             "of the 4 datasets. A target is **met** only when enough datasets pass beyond the noise "
             "bar; passing on the sign alone is reported as such. Rows marked *investigation* put the "
             "shared-stage-I K=3 system (Investigations, below) in BOND-MoE's place; they do not count "
             "for the targets.", ""]
    rows = []
    for encoder, full, ner, ablations in TARGETS:
        checks = [(full, f"BOND-MoE − spaCy `ner` (≥ +{NER_MARGIN:.0f})", ner, NER_MARGIN, len(DATASETS))]
        checks += [(full, f"gain of {name}: BOND-MoE − w/o {name}", without, 0.0, COMPONENT_DATASETS)
                   for name, without in ablations]
        shared = SHARED_STAGE_I[encoder]
        checks += [(shared, f"*investigation, not counted*: `{shared}` (shared stage I) − {label}", other,
                    margin, None) for label, other, margin in
                   ((f"spaCy `ner` (≥ +{NER_MARGIN:.0f})", ner, NER_MARGIN), ("w/o MoE", dict(ablations)["MoE"], 0.0))]
        for system, label, other, margin, needed in checks:
            diffs = [difference(main.get(d, []), system, other, margin) for d in DATASETS]
            passed = [clear for value, clear, _ in diffs
                      if value is not None and (value >= margin if margin else value > 0)]
            measured = sum(value is not None for value, _, _ in diffs)
            open_ = len(DATASETS) - measured
            verdict = (f"{len(passed)} of {measured} measured pass ({sum(passed)} beyond noise)"
                       + (f", {open_} not run" if open_ else ""))
            if needed is not None:
                verdict += f"; target {needed} of {len(DATASETS)}: {target_state(passed, open_, needed)}"
            rows.append([encoder, label] + [text for _, _, text in diffs] + [verdict])
    return lines + table(["encoder", "check"] + [TITLES[d] for d in DATASETS] + ["datasets"], rows) + [""]


def target_state(passed: Sequence[bool], open_: int, needed: int) -> str:
    """Verdict of a target from the datasets that pass (True: beyond noise) and those not run."""
    if sum(passed) >= needed:
        return "**met**"
    if len(passed) + open_ < needed:
        return "not met"
    if len(passed) >= needed:
        return "met on signs only, not beyond noise"
    return "open"


def encoder_of(system: str) -> str:
    """The encoder a system runs on, as named in TARGETS: `*_cnn` systems use configs/cnn.cfg."""
    return "CNN" if system.endswith("_cnn") else "MiniLM"


def suite_baselines(system: str) -> Tuple[str, str]:
    """The suite's K=3 and K=1 (w/o MoE) systems of TARGETS with the same encoder as an
    investigation system."""
    full, ablations = next((full, dict(ablations)) for name, full, _, ablations in TARGETS
                           if name == encoder_of(system))
    return full, ablations["MoE"]


def investigations_section(main: Dict[str, List[Run]]) -> List[str]:
    """One row per run of a system outside the suite (a hypothesis test), beside the suite's
    BOND-MoE with the same encoder, dataset and seed."""
    runs = sorted((r for group in main.values() for r in group if r["system"] not in SYSTEM_ORDER),
                  key=lambda r: (DATASETS.index(r["dataset"]) if r["dataset"] in DATASETS else 99,
                                 r["system"], r["seed"]))
    if not runs:
        return []
    lines = ["## Investigations (systems outside the suite, one hypothesis each)", "",
             "Summary: F1 % of the dev-best checkpoint, mean ± std over seeds, beside the suite's "
             "K=3 and K=1 systems with the same encoder (`bond_moe` / `bond` for MiniLM, "
             "`bond_moe_cnn` / `bond_cnn` for `*_cnn`) on the same dataset and step cap. Then per "
             "run: the dev F1 that selected the checkpoint, and dev-best / last checkpoint beside "
             "those K=3 and K=1 systems with the same seed.", ""]

    def pair(r: Run) -> str:
        return f"{fmt_num(metric(r, 'eval_at_best'))} / {fmt_num(metric(r, 'eval_at_last'))}"

    summary = []
    for dataset in DATASETS:
        group = main.get(dataset, [])
        for system in sorted({r["system"] for r in runs if r["dataset"] == dataset}):
            k3, k1 = suite_baselines(system)
            summary.append([f"{TITLES[dataset]} ({split_name(group)})", f"`{system}`",
                            cell(group, system), f"{cell(group, k3)} `{k3}`",
                            f"{cell(group, k1)} `{k1}`"])
    lines += table(["dataset", "system", "F1", "suite K=3", "suite K=1"], summary) + [""]
    rows = []
    for run in runs:
        same_seed = []
        for suite in suite_baselines(run["system"]):
            base = [r for r in main.get(run["dataset"], [])
                    if r["system"] == suite and r["seed"] == run["seed"]]
            same_seed.append(pair(base[0]) if base else NOT_RUN)
        dataset = f"{TITLES.get(run['dataset'], run['dataset'])} ({split_name([run])})"
        rows.append([dataset, f"`{run['system']}`", str(run["seed"]),
                     run.get("system_description", ""), fmt_num(metric(run, "dev_at_best")),
                     pair(run), *same_seed])
    header = ["dataset", "system", "seed", "what changes", "dev F1 (selects)", "F1 best / last",
              "suite K=3 best / last", "suite K=1 best / last"]
    return lines + table(header, rows) + [""]


def stage_figures(run: Run) -> Optional[Dict[str, Optional[float]]]:
    """Dev F1 (%) at the last evaluation before the first teacher and the best one after it,
    the first teacher's kept token fraction and the share of documents the E-step at that
    refresh re-routed (None for a run without a teacher, or distilled from step 1: no stage I)."""
    if run.get("teacher"):
        return None
    start = (run.get("schedule") or {}).get("teacher_start")
    events = events_of(run)
    teachers = [e for e in events if e.get("event") == "teacher"]
    if not start or not teachers:
        return None
    curve = [c for c in curve_of(run) if c.get("ents_f") is not None]
    before = [c["ents_f"] for c in curve if c["step"] < start]
    after = [c["ents_f"] for c in curve if c["step"] >= start]
    reroute = [e for e in events if e.get("event") == "estep" and e.get("step") == start]
    return {
        "stage_one": pct(before[-1]) if before else None,
        "stage_two": pct(max(after)) if after else None,
        "kept": teachers[0].get("kept_fraction"),
        "rerouted": reroute[0]["changed"] / reroute[0]["n_docs"] if reroute else None,
    }


def stages_section(main: Dict[str, List[Run]]) -> List[str]:
    """Where a K=3 system loses to K=1: stage I (distant labels) vs stage II (self-training)."""
    rows = []
    for dataset in DATASETS:
        for run in sorted(main.get(dataset, []), key=lambda r: (system_rank(r["system"]), r["seed"])):
            figures = stage_figures(run)
            if figures is None:
                continue
            one, two = figures["stage_one"], figures["stage_two"]
            gain = None if one is None or two is None else two - one
            rerouted = figures["rerouted"]
            rows.append([TITLES.get(dataset, dataset), f"`{run['system']}`", str(run["seed"]),
                         fmt_num(one), fmt_num(two), fmt_num(gain),
                         fmt_num(figures["kept"], 3),
                         "–" if rerouted is None else f"{100 * rerouted:.0f}%"])
    if not rows:
        return []
    lines = ["## Stage I vs stage II (dev F1 %, from the embedded dev curves and events)", "",
             "Stage I = distant labels, stage II = self-training from the first teacher on. "
             "Columns: dev F1 at the last evaluation before the first teacher; best dev F1 from it "
             "on; their difference; the share of training tokens the first teacher's pseudo-labels "
             "kept (soft: max q > threshold); the share of documents the E-step at that teacher "
             "refresh moved to another expert (– for K=1).", ""]
    header = ["dataset", "system", "seed", "stage I end", "stage II best", "gain",
              "kept (1st teacher)", "re-routed at 1st teacher"]
    return lines + table(header, rows) + [""]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """A markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def split_name(runs: Sequence[Run]) -> str:
    """The evaluation split(s) of a dataset's runs ("test", "dev", or both)."""
    return "/".join(sorted({r["eval_split"] for r in runs})) or "?"


def column_title(dataset: str, main: Dict[str, List[Run]], caps: Dict[str, int]) -> str:
    """``Webpage (test, 600 steps)``; flags a non-default cap."""
    runs = main.get(dataset, [])
    if not runs:
        return f"{TITLES[dataset]} ({NOT_RUN})"
    cap = caps[dataset]
    defaults = {r.get("default_steps") for r in runs}
    flag = "" if defaults == {cap} else f", NON-DEFAULT cap (suite: {'/'.join(map(str, sorted(d for d in defaults if d)))})"
    return f"{TITLES[dataset]} ({split_name(runs)}, {cap} steps{flag})"


def fmt_num(value: Optional[float], digits: int = 1) -> str:
    """A number or "n/a"."""
    return "n/a" if value is None else f"{value:.{digits}f}"


# ----------------------------------------------------------------------------- plots


def embedded_or_logged(run: Run, field: str, path_key: str) -> Tuple[bool, List[Dict[str, Any]]]:
    """(True, records) when the JSON embeds `field`, else (False, JSON lines of paths[path_key])."""
    if run.get(field):
        return True, run[field]
    path = resolve_path((run.get("paths") or {}).get(path_key))
    if path is None or not path.is_file():
        return True, []
    lines = path.read_text(encoding="utf8").splitlines()
    return False, [json.loads(line) for line in lines if line.strip()]


def curve_of(run: Run) -> List[Dict[str, Any]]:
    """The dev curve: embedded in the JSON, else read from paths.train_log (spaCy: ×100 scores)."""
    embedded, records = embedded_or_logged(run, "curve", "train_log")
    if embedded:
        return records
    out = []
    for rec in records:
        f = (rec.get("scores") or {}).get("ents_f")
        out.append({"step": rec["step"], "ents_f": None if f is None else f / 100.0})
    return out


def events_of(run: Run) -> List[Dict[str, Any]]:
    """E-step/teacher events: embedded in the JSON, else read from paths.events."""
    embedded, records = embedded_or_logged(run, "events", "events")
    if embedded:
        return records
    return [r for r in records if r.get("event") in ("estep", "teacher")]


def resolve_path(value: Optional[str]) -> Optional[Path]:
    """A path from a JSON (relative = relative to the repository root)."""
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else ROOT / path


def pyplot() -> Any:
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically."""
    plt = pyplot()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_dev_curves(dataset: str, runs: Sequence[Run], cap: int, path: Path, encoder: str) -> bool:
    """Dev F1 vs step of one encoder's systems, one colour per system, one line per seed. False if
    no curve."""
    plt = pyplot()

    by_system: Dict[str, List[Run]] = defaultdict(list)
    for run in runs:
        if curve_of(run):
            by_system[run["system"]].append(run)
    if not by_system:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, system in enumerate(sorted(by_system, key=system_rank)):
        for j, run in enumerate(sorted(by_system[system], key=lambda r: r["seed"])):
            points = [(p["step"], 100 * p["ents_f"]) for p in curve_of(run) if p.get("ents_f") is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".",
                    color=colours[i % len(colours)], alpha=0.85, linewidth=1.2,
                    label=f"{system} (n={len(by_system[system])})" if j == 0 else None)
    ax.set_xlabel("step (16 sentences)")
    ax.set_ylabel("dev entity F1 (%)")
    ax.set_title(f"{TITLES.get(dataset, dataset)}, {encoder}: dev F1 vs step ({cap}-step cap)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def plot_experts(run: Run, path: Path) -> bool:
    """Expert loads and changed docs per E-step, teacher refreshes as dashed lines."""
    plt = pyplot()

    events = events_of(run)
    esteps = [e for e in events if e.get("event") == "estep"]
    teachers = [e for e in events if e.get("event") == "teacher"]
    if not esteps:
        return False
    steps = [e["step"] for e in esteps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for k in range(max(len(e["loads"]) for e in esteps)):
        top.plot(steps, [e["loads"][k] if k < len(e["loads"]) else None for e in esteps],
                 marker="o", markersize=3, label=f"expert {k}")
    top.set_ylabel("documents (load)")
    n_docs = max((e.get("n_docs") or max(e["loads"]) for e in esteps), default=1)
    top.set_ylim(0, 1.05 * n_docs)
    top.legend(fontsize=8, loc="lower right", ncol=4)
    bottom.plot(steps, [e["changed"] for e in esteps], marker="o", markersize=3, color="tab:red")
    bottom.set_ylabel("docs that changed expert")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("step (16 sentences)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        for i, t in enumerate(teachers):
            ax.axvline(t["step"], color="grey", linestyle="--", linewidth=1,
                       label="teacher refresh" if (ax is bottom and i == 0) else None)
    if teachers:
        bottom.legend(fontsize=8)
    top.set_title(f"{run['dataset']} / {run['system']} / seed {run['seed']}: E-steps "
                  f"({run['_file']})", fontsize=9)
    save_figure(fig, path)
    return True


# ----------------------------------------------------------------------------- report


def build_report(runs: List[Run], out: Path, plots: Path, make_plots: bool = True,
                 quality: Optional[Dict[str, Any]] = None, scale: Optional[Dict[str, Any]] = None,
                 speed: Optional[Dict[str, Any]] = None, profile: Optional[Dict[str, Any]] = None,
                 profiles: Sequence[Dict[str, Any]] = (),
                 test_quality: Optional[Dict[str, Any]] = None, out_results: Optional[Path] = None,
                 tokens: Optional[Dict[str, Any]] = None,
                 inference: Optional[Dict[str, Any]] = None,
                 onnx: Optional[Dict[str, Any]] = None,
                 int8: Optional[Dict[str, Any]] = None,
                 seqeval: Optional[Dict[str, Any]] = None,
                 kills: Sequence[Dict[str, Any]] = (),
                 resume: Optional[Dict[str, Any]] = None,
                 corpus_scale: Optional[Dict[str, Any]] = None,
                 kb_loop: Optional[Dict[str, Any]] = None,
                 corpus_scale_bounded: Optional[Dict[str, Any]] = None,
                 uncertain_o: Optional[Dict[str, Any]] = None) -> str:
    """The markdown text of RESULTS.md (writes the PNGs under `plots` as a side effect)."""
    main, other, caps = split_by_cap(runs)
    selected = {r["_file"] for group in main.values() for r in group}
    lines: List[str] = [
        "# Benchmark results",
        "",
        f"Generated by `benchmarks/report.py` from {len(runs)} JSON file(s) written by "
        "`benchmarks/run.py` (listed at the bottom). Do not edit by hand.",
        "",
        "- Ours: entity-level micro F1 (%) of the **dev-best checkpoint** (`model-best`) on the gold "
        "**test** split, or on **dev** where the dataset has no test split (the column says which; "
        "dev then also selected the checkpoint, so it is optimistic). Mean ± sample std over seeds, "
        "n = number of seeds. All our systems are trained on the distant labels with the same step "
        "cap per dataset (column header); MiniLM-L6 encoder unless marked CNN; CPU.",
        "- \"reported\" rows are published numbers (RoBERTa-base, full BOND schedules, checkpoint "
        "chosen by best **test** F1), quoted from `../shared/design/algorithm.md` §4: not comparable "
        "one-to-one, shown for reference.",
        "",
    ]
    titles = [column_title(d, main, caps) for d in DATASETS]

    # Table I
    lines += ["## Table I: main results (F1 %, dev-best checkpoint)", ""]
    rows = [[label] + [cell(main.get(d, []), system) for d in DATASETS] for system, label in TABLE1]
    rows += [[label] + [f"{vals[d]:.2f}" for d in DATASETS] for label, vals in REPORTED_TABLE1]
    lines += table(["system"] + titles, rows) + [""]

    lines += ["### Table I-b: last checkpoint and dev scores (F1 %)", "",
              "Per cell: test (or dev) F1 of `model-last` / dev F1 of `model-best`.", ""]
    rows = []
    for system, label in TABLE1 + tuple((s, f"`{s}`") for _, s in TABLE2[2:]):
        row = [label]
        for d in DATASETS:
            last = cell(main.get(d, []), system, "eval_at_last")
            dev = cell(main.get(d, []), system, "dev_at_best")
            row.append(NOT_RUN if last == NOT_RUN else f"{last} / {dev}")
        rows.append(row)
    lines += table(["system"] + titles, rows) + [""]

    # Table II
    lines += ["## Table II: ablations (F1 %, dev-best checkpoint), next to the paper's Table II", "",
              "`w/o MoE` is K=1 with self-training: the same command as `bond`, so its row is "
              "filled from the `bond` runs.", ""]
    header = ["ablation"]
    for d in DATASETS:
        header += [f"{TITLES[d]} ours ({split_name(main.get(d, [])) if main.get(d) else NOT_RUN})",
                   f"{TITLES[d]} paper (reported)"]
    rows = []
    for label, system in TABLE2:
        row = [label]
        for d in DATASETS:
            row += [cell(main.get(d, []), system), f"{REPORTED_TABLE2[system][d]:.2f}"]
        rows.append(row)
    lines += table(header, rows) + [""]

    lines += ["## Table III: the same comparison with the CNN encoder (HashEmbedCNN, no pretrained "
              "weights; the fast CPU option)", "",
              "Same distant data, step caps, schedules and ablation overrides as Tables I/II; "
              "`configs/cnn.cfg` and `configs/spacy_ner_cnn.cfg`.", ""]
    rows = [[label] + [cell(main.get(d, []), system) for d in DATASETS] for label, system in TABLE_CNN]
    lines += table(["system"] + titles, rows) + [""]

    lines += targets_section(main)
    lines += investigations_section(main)
    lines += stages_section(main)

    # Per type
    lines += ["## Per-type F1 (%, dev-best checkpoint, test or dev split as above)", ""]
    any_type = False
    for d in DATASETS:
        group = main.get(d, [])
        labels = sorted({lab for r in group for lab in ((r.get("eval_at_best") or {}).get("per_type") or {})})
        if not labels:
            continue
        any_type = True
        systems = sorted({r["system"] for r in group}, key=system_rank)
        lines += [f"**{column_title(d, main, caps)}**", ""]
        rows = [[f"`{s}`"] + [cell(group, s, label=lab) for lab in labels] for s in systems]
        lines += table(["system"] + labels, rows) + [""]
    if not any_type:
        lines += [NOT_RUN, ""]

    analyses = load_analyses(out_results, runs) if out_results is not None else []
    lines += experts_section(analyses) if out_results is not None else []
    lines += ensembles_section(out_results, runs)
    lines += tokenization_section(tokens, analyses)
    lines += labels_section(runs, quality, scale, test_quality)
    lines += speed_section(speed, profile, profiles)
    lines += inference_section(inference)
    lines += onnx_section(onnx)
    lines += int8_section(int8)
    lines += seqeval_section(seqeval)
    lines += reliability_section(kills, resume)
    lines += corpus_scale_section(corpus_scale, corpus_scale_bounded)
    lines += kb_loop_section(kb_loop)
    lines += uncertain_o_section(uncertain_o, runs)

    # Speed / memory
    lines += ["## Speed and memory (per run)", "",
              "Train wall = the whole `spacy train` process (init, E-steps, teacher passes and dev "
              "evaluations included); approx words/s = mean train words per sentence × 16 × updates "
              "/ train wall; peak RSS = the training process (os.wait4). Machine load varies "
              "between runs (load average at start/end shown).", ""]
    rows = []
    for r in sorted(runs, key=lambda r: (DATASETS.index(r["dataset"]) if r["dataset"] in DATASETS else 99,
                                         system_rank(r["system"]), r["seed"], r["steps"])):
        m = r.get("machine") or {}
        load = "/".join(fmt_num(x, 1) for x in [*(m.get("loadavg_at_start") or [None])[:1],
                                                 *(m.get("loadavg_at_end") or [None])[:1]])
        wall = r.get("train_wall_seconds")
        rows.append([r["dataset"], f"`{r['system']}`", str(r["seed"]), str(r["steps"]),
                     fmt_num(None if wall is None else wall / 60.0, 1),
                     fmt_num(r.get("approx_train_words_per_s"), 0), fmt_num(r.get("peak_rss_mb"), 0),
                     f"{m.get('cores', '?')}/{m.get('torch_threads', '?')}", load, f"`{r['_file']}`"])
    lines += table(["dataset", "system", "seed", "steps", "train wall (min)", "approx words/s",
                    "peak RSS (MB)", "cores/torch threads", "load start/end", "JSON"],
                   rows or [[NOT_RUN] * 10]) + [""]

    # Plots
    lines += ["## Plots", ""]
    rel_plots = os.path.relpath(plots, out.parent)
    made: List[str] = []
    current: Set[str] = set()  # file names of the plots this report makes
    if make_plots:
        for d in DATASETS:
            group = main.get(d, [])
            for suffix, encoder in (("", "MiniLM"), ("_cnn", "CNN")):
                subset = [r for r in group if encoder_of(r["system"]) == encoder]
                name = f"dev_f1_{d}{suffix}.png"
                if subset and plot_dev_curves(d, subset, caps[d], plots / name, encoder):
                    made.append(f"![{TITLES[d]} {encoder} dev F1 vs step]({rel_plots}/{name})")
                    current.add(name)
            by_system: Dict[str, List[Run]] = defaultdict(list)
            for r in group:
                by_system[r["system"]].append(r)
            for system in sorted(by_system, key=system_rank):
                first = min(by_system[system], key=lambda r: r["seed"])
                name = f"experts_{d}__{system}__seed{first['seed']}.png"
                if plot_experts(first, plots / name):
                    made.append(f"![{TITLES[d]} {system} E-steps]({rel_plots}/{name})")
                    current.add(name)
        # Plots of an earlier report that this one no longer makes would be stale: remove them.
        for stale in [*plots.glob("dev_f1_*.png"), *plots.glob("experts_*.png")]:
            if stale.name not in current:
                stale.unlink()
    lines += (["Dev F1 vs step (every run at the reported cap) and, for the lowest seed of each "
               "multi-expert system, expert loads and changed documents per E-step (dashed: "
               "teacher refreshes).", ""] + [m + "\n" for m in made]) if made else [NOT_RUN, ""]

    # Other caps
    if other:
        lines += ["## Other runs (step cap not the one reported above; excluded from the tables)", ""]
        rows = [[r["dataset"], f"`{r['system']}`", str(r["seed"]), str(r["steps"]), r["eval_split"],
                 fmt_num(metric(r, "eval_at_best")), fmt_num(metric(r, "eval_at_last")),
                 f"`{r['_file']}`"] for r in other]
        lines += table(["dataset", "system", "seed", "steps", "split", "F1 @ dev-best",
                        "F1 @ last", "JSON"], rows) + [""]

    # Sources
    lines += ["## Source files", "", "Every number above (except \"reported\") comes from these "
              "JSON files (`benchmarks/run.py` output); each holds the exact command, overrides, "
              "git commit, machine and timings.", ""]
    rows = []
    for r in runs:
        git = r.get("git") or {}
        commit = (git.get("commit") or "?")[:10] + (" (dirty)" if git.get("dirty") else "")
        rows.append([f"`{r['_file']}`", r["dataset"], f"`{r['system']}`", str(r["seed"]),
                     str(r["steps"]), "yes" if r["_file"] in selected else "no", commit,
                     str(r.get("timestamp", "?"))])
    lines += table(["file", "dataset", "system", "seed", "steps", "in tables", "commit",
                    "started (UTC)"], rows or [[NOT_RUN] * 8]) + [""]
    return "\n".join(lines)


def write_text_atomic(path: Path, text: str) -> None:
    """Write text via a temp file and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf8")
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description="Write RESULTS.md and plots from benchmark JSONs.")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--plots", type=Path, default=None, help="default: <folder of --out>/plots")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    out = args.out.resolve()
    plots = (args.plots or out.parent / "plots").resolve()
    runs = load_runs(args.results) if args.results.is_dir() else []
    text = build_report(runs, out, plots, make_plots=not args.no_plots,
                        quality=load_extra(args.results, "label_quality__conll03.json"),
                        scale=load_extra(args.results, "kb_scale.json"),
                        speed=load_extra(args.results, "speed__webpage__minilm.json"),
                        profile=load_extra(args.results, "profile_experts.json"),
                        profiles=[load_extra(args.results, f.name) for f in
                                  sorted(args.results.glob("profile__*.json"))] if args.results.is_dir() else [],
                        test_quality=load_extra(args.results, "label_quality__conll03_test.json"),
                        out_results=args.results if args.results.is_dir() else None,
                        tokens=load_extra(args.results, "tokenization.json"),
                        inference=load_extra(args.results, "inference_speed__conll03.json"),
                        onnx=load_extra(args.results, "onnx_check__conll03.json"),
                        int8=load_extra(args.results, "int8_check.json"),
                        seqeval=load_extra(args.results, "seqeval_check.json"),
                        kills=[k for k in (load_extra(args.results, f"kill_safety__{e}.json")
                                           for e in ("tiny", "minilm")) if k is not None],
                        resume=load_extra(args.results, "resume_check__webpage__bond.json"),
                        corpus_scale=load_extra(args.results, "scale.json"),
                        kb_loop=load_extra(args.results, "kb_loop__conll03.json"),
                        corpus_scale_bounded=load_extra(args.results, "scale_minilm_bounded.json"),
                        uncertain_o=load_extra(args.results, "uncertain_o_coverage.json"))
    write_text_atomic(out, text + "\n")
    print(f"wrote {out} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
