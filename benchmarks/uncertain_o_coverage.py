"""Which distant "O" labels does `uncertain_o` leave unsupervised, against CoNLL03 gold train labels?

    python benchmarks/uncertain_o_coverage.py    # -> benchmarks/results/uncertain_o_coverage.json

For BOND's distant labels (``corpus/conll03``) and ours (``corpus/conll03_kb``), both built by
``benchmarks/run.py``: of the tokens whose distant label is "O", how many are gold entity tokens
(missed by the labels), and, for each `uncertain_o` mode of the distant loss (the package's own
`DistantLoss.supervised`), the share of those missed tokens it unsupervises and the share of true
"O" tokens it unsupervises with them. Gold train labels are used for this measurement only.
"""
import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy
import spacy
from spacy.tokens import Doc, DocBin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import data_root, git_info, write_json_atomic  # noqa: E402

from spacy_bond_moe.losses import build_cross_entropy_v2  # noqa: E402

MODES = ("capitalised", "proper")


def coverage(docs: List[Doc], gold: List[List[str]]) -> Dict[str, Any]:
    """Missed-entity and true-O tokens among distant "O" labels, unsupervised per mode."""
    result: Dict[str, Any] = {}
    is_o = [numpy.array([t.ent_iob_ == "O" for t in doc]) for doc in docs]
    missed = [o & numpy.array([tag != "O" for tag in tags]) for o, tags in zip(is_o, gold)]
    n_missed = int(sum(m.sum() for m in missed))
    n_true_o = int(sum(o.sum() for o in is_o)) - n_missed
    result["distant_o_tokens"] = n_missed + n_true_o
    result["missed_entity_tokens"] = n_missed
    for mode in MODES:
        loss = build_cross_entropy_v2(uncertain_o=mode)
        loss.initialize(docs)
        off_missed = off_true_o = 0
        for doc, o, m in zip(docs, is_o, missed):
            ids = numpy.where(o, 0, 1)
            off = ~loss.supervised(ids, numpy.ones(len(doc), dtype=bool), doc)
            off_missed += int((off & m).sum())
            off_true_o += int((off & o & ~m).sum())
        result[mode] = {
            "unsupervised_tokens": off_missed + off_true_o,
            "missed_unsupervised_share": round(off_missed / max(n_missed, 1), 4),
            "true_o_unsupervised_share": round(off_true_o / max(n_true_o, 1), 4),
            "entity_share_of_unsupervised": round(off_missed / max(off_missed + off_true_o, 1), 4),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "uncertain_o_coverage.json")
    args = parser.parse_args()
    conll = data_root() / "roster" / "conll"
    texts = [line.split() for line in (conll / "train_text.txt").read_text(encoding="utf8").splitlines()]
    gold = [line.split() for line in (conll / "train_label_true.txt").read_text(encoding="utf8").splitlines()]
    nlp = spacy.blank("en")
    out: Dict[str, Any] = {"schema": 1, "command": "python benchmarks/uncertain_o_coverage.py",
                           "git": git_info(), "labels": {}}
    for name in ("conll03", "conll03_kb"):
        docs = list(DocBin().from_disk(args.corpus / name / "train.spacy").get_docs(nlp.vocab))
        if [[t.text for t in doc] for doc in docs] != texts:
            sys.exit(f"{args.corpus / name / 'train.spacy'}: tokens differ from {conll / 'train_text.txt'}")
        out["labels"][name] = coverage(docs, gold)
        print(name, out["labels"][name], flush=True)
    write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
