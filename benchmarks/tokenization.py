"""How far spaCy's tokenizer departs from the datasets' own tokens, per converted split.

    python benchmarks/tokenization.py        # -> benchmarks/results/tokenization.json

Training and evaluation read the corpora with `gold_preproc = false` (configs; `spacy evaluate`):
each document is re-tokenised by `nlp.make_doc(doc.text)` and the labels are aligned to the new
tokens (spaCy's `Example`). This counts, per split: documents whose spaCy tokens differ from the
dataset's, entities whose boundaries fall inside a spaCy token (those could never be predicted
exactly), and spaCy tokens whose aligned NER label is missing (`None`: masked in training).
`benchmarks/expert_agreement.py` scores on the dataset's own tokens instead, which is why its
mixture F1 can differ slightly from the run's.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import spacy
from spacy.tokens import Doc, DocBin
from spacy.training import Example

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import write_json_atomic  # noqa: E402

DATASETS = ("conll03", "twitter", "webpage", "wikigold")
SPLITS = ("train", "dev", "test")


def split_stats(nlp: Any, docs: Sequence[Doc]) -> Dict[str, int]:
    """Counts for one split: documents, re-tokenised ones, entities off spaCy boundaries, missing labels."""
    stats = {"docs": len(docs), "docs_retokenized": 0, "tokens": 0, "spacy_tokens": 0, "entities": 0,
             "entities_off_boundaries": 0, "spacy_tokens_label_missing": 0}
    for reference in docs:
        predicted = nlp.make_doc(reference.text)
        stats["tokens"] += len(reference)
        stats["spacy_tokens"] += len(predicted)
        stats["entities"] += len(reference.ents)
        if [t.text for t in predicted] == [t.text for t in reference]:
            continue
        stats["docs_retokenized"] += 1
        starts = {t.idx for t in predicted}
        ends = {t.idx + len(t) for t in predicted}
        stats["entities_off_boundaries"] += sum(e.start_char not in starts or e.end_char not in ends
                                                for e in reference.ents)
        aligned = Example(predicted, reference).get_aligned_ner()
        stats["spacy_tokens_label_missing"] += sum(tag is None for tag in aligned)
    return stats


def measure(corpus: Path, datasets: Sequence[str] = DATASETS) -> List[Dict[str, Any]]:
    """One row per converted split found under `corpus/<dataset>/<split>.spacy`."""
    nlp = spacy.blank("en")
    rows = []
    for dataset in datasets:
        for split in SPLITS:
            path = corpus / dataset / f"{split}.spacy"
            if path.is_file():
                docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
                rows.append({"dataset": dataset, "split": split, **split_stats(nlp, docs)})
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokenization.json")
    args = parser.parse_args(argv)
    rows = measure(args.corpus)
    if not rows:
        print(f"no converted splits under {args.corpus} (run the project's convert step first)", file=sys.stderr)
        return 1
    write_json_atomic(args.out, {"command": "python benchmarks/tokenization.py", "tokenizer": "spacy.blank('en')",
                                 "splits": rows})
    for r in rows:
        print(f"{r['dataset']:9} {r['split']:5} docs {r['docs']:6} re-tokenised {r['docs_retokenized']:6} "
              f"entities {r['entities']:6} off boundaries {r['entities_off_boundaries']:4} "
              f"missing-label tokens {r['spacy_tokens_label_missing']:5} / {r['spacy_tokens']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
