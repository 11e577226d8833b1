"""Quality of distant labels built from the offline KB packs, against CoNLL03 gold train labels.

    python benchmarks/label_quality.py            # -> benchmarks/results/label_quality__conll03.json

Builds one KB file per pack (`python -m spacy_bond_moe build-kb`'s code), labels
``roster/conll/train_text.txt`` with the default labeller options, and scores entity-level
P/R/F1 (overall and per type) against ``train_label_true.txt``, beside BOND's distant labels
(``train_label_dist.txt``). The gold labels are used for this measurement only. Ablations
(each pack / rule left out, exact-case matching) show where the labels come from.
"""

import argparse
import datetime as _dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import spacy
from spacy.tokens import Doc
from spacy.vocab import Vocab

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spacy_bond_moe.converters import read_roster, repair_bio, to_doc  # noqa: E402
from spacy_bond_moe.distant import DistantLabeller, LabelSummary, load_kbs  # noqa: E402
from spacy_bond_moe.kb_packs import PACKS, build_kb  # noqa: E402
from spacy_bond_moe.rules import RULES  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from run import write_json_atomic  # noqa: E402

TYPES = ("PER", "ORG", "LOC", "MISC")
Spans = List[Set[Tuple[int, int, str]]]


def spans_of(docs: Sequence[Doc]) -> Spans:
    """Per doc, the set of (start, end, label) entity spans."""
    return [{(e.start, e.end, e.label_) for e in doc.ents} for doc in docs]


def prf(pred: Spans, gold: Spans) -> Dict[str, Any]:
    """Entity-level (exact span and type) P/R/F1, overall and per type."""
    tp: Counter = Counter()
    n_pred: Counter = Counter()
    n_gold: Counter = Counter()
    for p, g in zip(pred, gold):
        for *_, label in p & g:
            tp[label] += 1
        n_pred.update(label for *_, label in p)
        n_gold.update(label for *_, label in g)

    def score(t: int, np_: int, ng: int) -> Dict[str, Any]:
        p_ = t / np_ if np_ else 0.0
        r_ = t / ng if ng else 0.0
        f_ = 2 * p_ * r_ / (p_ + r_) if p_ + r_ else 0.0
        return {"p": round(p_, 4), "r": round(r_, 4), "f": round(f_, 4), "tp": t, "pred": np_, "gold": ng}

    result = score(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    result["per_type"] = {t: score(tp[t], n_pred[t], n_gold[t]) for t in sorted(set(n_gold) | set(n_pred))}
    return result


def roster_docs(text: Path, labels: Path) -> List[Doc]:
    """The RoSTER sentences as docs with their (BIO-repaired) entities."""
    vocab = Vocab()
    return [to_doc(vocab, words, repair_bio(tags)[0], f"conll03:train:{i}")
            for i, (words, tags) in enumerate(read_roster(text, labels))]


def label(words: List[List[str]], kbs: List[Path], propagate: bool = True,
          **options: Any) -> Tuple[Spans, LabelSummary, float]:
    """Label the pre-tokenised sentences; return spans, summary and wall seconds."""
    nlp = spacy.blank("en")
    t0 = time.monotonic()
    labeller = DistantLabeller.from_kbs(nlp, kbs, **options)
    summary = LabelSummary(kb=labeller.kb_stats)
    if propagate:
        summary.n_propagated_names = len(labeller.propagate_names(Doc(nlp.vocab, words=w) for w in words))
    docs = [labeller.label(Doc(nlp.vocab, words=w), summary) for w in words]
    return spans_of(docs), summary, time.monotonic() - t0


def line(name: str, s: Dict[str, Any]) -> str:
    types = "  ".join(f"{t} {100 * s['per_type'].get(t, {'f': 0})['f']:5.1f}" for t in TYPES)
    return f"{name:28} P {100 * s['p']:5.1f}  R {100 * s['r']:5.1f}  F1 {100 * s['f']:5.1f}   {types}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with roster/conll (default: $BOND_MOE_DATA_MIRROR, ../shared/datasets, assets)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "label_quality__conll03.json")
    parser.add_argument("--no-ablations", action="store_true", help="only the full labeller and BOND")
    parser.add_argument("--split", choices=("train", "valid", "test"), default="train",
                        help="CoNLL03 split to label and score (BOND's distant labels exist for train only)")
    args = parser.parse_args(argv)
    data = args.data or Path(os.environ.get("BOND_MOE_DATA_MIRROR") or ROOT.parent / "shared" / "datasets")
    if not (data / "roster" / "conll").is_dir():
        data = ROOT / "assets"
    conll = data / "roster" / "conll"
    text = conll / f"{args.split}_text.txt"
    gold_docs = roster_docs(text, conll / f"{args.split}_label_true.txt")
    gold = spans_of(gold_docs)
    words = [[t.text for t in doc] for doc in gold_docs]
    bond = None
    if args.split == "train":
        bond = prf(spans_of(roster_docs(text, conll / "train_label_dist.txt")), gold)
        print(line("BOND distant labels", bond), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        kb_files: Dict[str, Path] = {}
        build_seconds: Dict[str, float] = {}
        for pack in PACKS:
            t0 = time.monotonic()
            kb_files[pack] = Path(tmp) / f"{pack}.jsonl"
            build_kb([pack], kb_files[pack])
            build_seconds[pack] = round(time.monotonic() - t0, 2)
        all_kbs = list(kb_files.values())
        spans, summary, seconds = label(words, all_kbs)
        ours = prf(spans, gold)
        print(line("ours (all packs + rules)", ours), flush=True)
        ablations: Dict[str, Dict[str, Any]] = {}
        if not args.no_ablations:
            variants: Dict[str, Tuple[List[Path], Dict[str, Any]]] = {
                "kb only (no rules)": (all_kbs, {"rules": []}),
                "exact case": (all_kbs, {"ignore_case": False}),
                "no name propagation": (all_kbs, {"propagate": False}),
                "no filters": (all_kbs, {"skip_stopwords": False, "skip_lowercase": False,
                                         "capitalised_labels": ()}),
            }
            for pack in PACKS:
                variants[f"without pack {pack}"] = ([p for k, p in kb_files.items() if k != pack], {})
            for rule in RULES:
                variants[f"without rule {rule}"] = (all_kbs, {"rules": [r for r in RULES if r != rule]})
            for name, (kbs, options) in variants.items():
                ablations[name] = prf(label(words, kbs, **options)[0], gold)
                print(line(name, ablations[name]), flush=True)
        _, kb_stats = load_kbs(all_kbs)

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {
        "schema": 1,
        "dataset": "conll03",
        "split": args.split,
        "n_sentences": len(gold_docs),
        "command": "python benchmarks/label_quality.py" + (" --no-ablations" if args.no_ablations else "")
                   + (f" --split {args.split} --out {args.out.name}" if args.split != "train" else ""),
        "packs": list(PACKS),
        "rules": list(RULES),
        "kb_build_seconds": build_seconds,
        "kb": kb_stats.__dict__,
        "labelling_seconds": round(seconds, 2),
        "summary": summary.to_dict(),
        "ours": ours,
        "bond": bond,
        "ablations": ablations,
        "git_commit": commit,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out} (labelling {seconds:.1f}s for {len(gold_docs)} sentences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
