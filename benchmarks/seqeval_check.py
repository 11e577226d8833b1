"""Our entity F1 against an independent scorer: seqeval (default, conlleval-compatible mode)
beside spaCy's `ner_scorer` on the same predictions of trained pipelines.

    python benchmarks/seqeval_check.py MODEL:DOCBIN [MODEL:DOCBIN ...]

Each pipeline tags the gold split's own tokens (no re-tokenisation); writes
benchmarks/results/seqeval_check.json (atomically) with both scores per pipeline.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import spacy
from seqeval.metrics import f1_score, precision_score, recall_score
from spacy.tokens import Doc, DocBin
from spacy.training import Example

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "seqeval_check.json"


def bio_tags(doc: Doc) -> List[str]:
    """IOB2 tags of a doc's entities ("B-PER", "I-PER", "O")."""
    return [f"{t.ent_iob_}-{t.ent_type_}" if t.ent_iob_ in ("B", "I") else "O" for t in doc]


def check(model: str, data: str) -> Dict[str, Any]:
    """Predict the gold docs' tokens with `model`; spaCy's and seqeval's P/R/F1 (%)."""
    nlp = spacy.load(model)
    gold = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    started = time.perf_counter()
    inputs = [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d])
              for d in gold]
    predicted = list(nlp.pipe(inputs, batch_size=64))
    seconds = time.perf_counter() - started
    examples = [Example(p, g) for p, g in zip(predicted, gold)]
    ours = nlp.get_pipe("bond_moe_ner").score(examples)
    y_true = [bio_tags(d) for d in gold]
    y_pred = [bio_tags(d) for d in predicted]
    theirs = {"p": precision_score(y_true, y_pred), "r": recall_score(y_true, y_pred),
              "f": f1_score(y_true, y_pred)}
    spacy_prf = {"p": ours["ents_p"], "r": ours["ents_r"], "f": ours["ents_f"]}
    return {
        "model": model, "data": data, "docs": len(gold),
        "gold_entities": sum(len(d.ents) for d in gold),
        "predicted_entities": sum(len(d.ents) for d in predicted),
        "spacy": {k: round(100 * v, 3) for k, v in spacy_prf.items()},
        "seqeval_default": {k: round(100 * v, 3) for k, v in theirs.items()},
        "f1_difference": round(100 * (spacy_prf["f"] - theirs["f"]), 4),
        "seconds": round(seconds, 2),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="MODEL:DOCBIN, e.g. training/x/model-best:corpus/x/test.spacy")
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args(argv)
    rows = []
    for pair in args.pairs:
        model, sep, data = pair.rpartition(":")
        if not sep or not Path(model).is_dir() or not Path(data).is_file():
            print(f"seqeval_check: {pair!r} is not MODEL_DIR:DOCBIN_FILE", file=sys.stderr)
            return 2
        rows.append(check(model, data))
        print(json.dumps(rows[-1]))
    result = {"command": "python benchmarks/seqeval_check.py " + " ".join(args.pairs), "rows": rows,
              "max_abs_f1_difference": max(abs(r["f1_difference"]) for r in rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
