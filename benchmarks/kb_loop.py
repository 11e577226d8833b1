"""The KB loop once for real on CoNLL03: label -> train -> suggest-kb -> relabel -> train.

    python benchmarks/kb_loop.py                 # -> benchmarks/results/kb_loop__conll03.json

1. the offline KB packs (``build-kb``) label CoNLL03's raw train text (``distant``);
2. ``--system`` (a benchmarks/run.py system, default the CNN default recipe) trains on those
   labels with CoNLL03's schedule, dev = gold dev, scored on gold test (run.py's own run);
3. ``suggest-kb`` with that model over the labelled train set; the top ``--top`` additions are
   accepted as they are, without reading any gold label;
4. the packs plus the suggestions label the text again, and the same system trains on them.

The gold train labels are read only to score the two label sets (entity-level P/R/F1, as
benchmarks/label_quality.py) and, after the fact, how many accepted suggestions are gold
entities of that type somewhere in the train set. Every step is skipped when its output exists.
"""

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import spacy
from spacy.tokens import DocBin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from label_quality import prf, roster_docs, spans_of  # noqa: E402
from run import data_root, ensure_corpus, git_info, machine_info, make_spec, run_one, write_json_atomic  # noqa: E402

PYTHON = [sys.executable, "-m", "spacy_bond_moe"]


def step(cmd: List[str], output: Path) -> None:
    """Run a CLI step unless `output` exists."""
    if output.exists():
        return
    print(f"[loop] {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def label_round(name: str, kbs: List[Path], text: Path, work: Path, gold_corpus: Path) -> Path:
    """A corpus folder <work>/<name>/conll03_kb with our labels on train and the gold dev/test."""
    corpus = work / name / "conll03_kb"
    corpus.mkdir(parents=True, exist_ok=True)
    kb_args = [arg for kb in kbs for arg in ("--kb", str(kb))]
    step(PYTHON + ["distant", str(text), str(corpus / "train.spacy"), *kb_args, "--format", "tokens",
                   "--no-progress"], corpus / "train.spacy")
    for split in ("dev", "test"):
        if not (corpus / f"{split}.spacy").exists():
            shutil.copyfile(gold_corpus / f"{split}.spacy", corpus / f"{split}.spacy")
    return corpus


def train_round(corpus_root: Path, system: str, seed: int, work: Path, name: str) -> Dict[str, Any]:
    """benchmarks/run.py's run of `system` on conll03_kb from `corpus_root`; its result JSON."""
    spec = make_spec("conll03_kb", system, seed, work / name / "results", work / name / "runs", corpus_root)
    run_one(spec)
    return json.loads(spec.result_path.read_text()) | {"run_dir": str(spec.run_dir)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="bond_moe_warmup_cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=100)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "kb_loop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kb_loop__conll03.json")
    args = parser.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    gold_corpus = ROOT / "corpus" / "conll03"
    ensure_corpus("conll03", gold_corpus)
    roster = data_root() / "roster" / "conll"
    text = roster / "train_text.txt"
    packs = work / "packs.jsonl"
    step(PYTHON + ["build-kb", str(packs)], packs)
    gold_docs = roster_docs(text, roster / "train_label_true.txt")
    gold = spans_of(gold_docs)

    def quality(corpus: Path) -> Dict[str, Any]:
        docs = list(DocBin().from_disk(corpus / "train.spacy").get_docs(spacy.blank("en").vocab))
        return prf(spans_of(docs), gold)

    v1 = label_round("v1", [packs], text, work, gold_corpus)
    first = train_round(v1.parent, args.system, args.seed, work, "v1")
    suggested = work / "suggested.jsonl"
    step(PYTHON + ["suggest-kb", str(Path(first["run_dir"]) / "model-best"), str(v1 / "train.spacy"),
                   "--kb", str(packs), "-o", str(suggested), "--top", str(args.top)], suggested)
    suggestions = [json.loads(line) for line in suggested.read_text().splitlines()]
    gold_strings = {(gold_docs[i][s:e].text, label) for i, spans in enumerate(gold) for s, e, label in spans}
    v2 = label_round("v2", [packs, suggested], text, work, gold_corpus)
    second = train_round(v2.parent, args.system, args.seed, work, "v2")
    rounds = {}
    for name, corpus, result in (("packs", v1, first), ("packs_plus_suggestions", v2, second)):
        rounds[name] = {"label_quality_vs_gold_train": quality(corpus),
                        "test_f1_at_dev_best": result["eval_at_best"]["f"],
                        "dev_f1_at_best": result["dev_at_best"]["f"], "run": Path(result["run_dir"]).name}
    out = {
        "schema": 1, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/kb_loop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "system": args.system, "seed": args.seed, "top": args.top,
        "suggestions": {"n": len(suggestions), "by_label": dict(sorted(Counter(r["label"] for r in suggestions).items())),
                        "gold_entity_of_that_type_somewhere": sum((r["pattern"], r["label"]) in gold_strings
                                                                  for r in suggestions),
                        "first_20": [(r["pattern"], r["label"], r["count"], r["confidence"]) for r in suggestions[:20]]},
        "rounds": rounds, "git": git_info(), "machine": machine_info(),
    }
    write_json_atomic(args.out, out)
    for name, r in rounds.items():
        q = r["label_quality_vs_gold_train"]
        print(f"[loop] {name}: labels P {100 * q['p']:.1f} R {100 * q['r']:.1f} F1 {100 * q['f']:.1f}; "
              f"model test F1 {100 * r['test_f1_at_dev_best']:.2f}")
    print(f"[loop] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
