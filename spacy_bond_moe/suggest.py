"""KB suggestions: close the loop between a trained model and its knowledge base.

The pipeline runs over a corpus (raw text, or the distantly labelled DocBin it was trained on).
Entity strings it predicts with confidence that no KB phrase covers become *additions*, ranked by
count and mean confidence, with example contexts; KB-labelled spans of a labelled corpus that the
model consistently does not predict become *suspects* (likely wrong or too broad patterns).
Additions are written as EntityRuler JSONL, ready for ``distant --kb``; both go to a readable TSV.
Ordering is deterministic: count, then confidence, then the string.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import srsly
from spacy.language import Language
from spacy.tokens import Doc, Span

from .annotate import span_scores
from .distant import load_kbs
from .fetch import write_atomic

MAX_EXAMPLES = 3
CONTEXT = 8  # tokens of context either side in the examples


@dataclass
class Candidate:
    """One (string, label) the model predicts or the KB labels, with its evidence."""

    text: str
    label: str
    count: int = 0
    confidence_sum: float = 0.0
    agreed: int = 0  # suspects: how often the model predicted the same span and label
    examples: List[str] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        return self.confidence_sum / self.count if self.count else 0.0

    def add(self, span: Span, confidence: float) -> None:
        self.count += 1
        self.confidence_sum += confidence
        if len(self.examples) < MAX_EXAMPLES:
            doc = span.doc
            left, right = doc[max(0, span.start - CONTEXT):span.start], doc[span.end:span.end + CONTEXT]
            self.examples.append(f"{left.text} [[{span.text}]] {right.text}".strip())


def kb_phrases(kbs: Sequence[Path]) -> Set[str]:
    """The lower-cased phrases of the KB files (token patterns cover no fixed string)."""
    entries, _ = load_kbs(kbs)
    return {entry.pattern.lower() for entry in entries if isinstance(entry.pattern, str)}


def collect(nlp: Language, docs: Iterable[Doc], covered: Set[str], spans_key: Optional[str],
            batch_size: int = 64) -> Tuple[Dict[Tuple[str, str], Candidate], Dict[Tuple[str, str], Candidate]]:
    """Additions (predicted, not a KB phrase and not labelled in that doc by the labeller's rules
    or name propagation either) and suspects (KB phrases labelled in the input, then how often
    the model agreed), keyed by (string, label). A doc's own entities are its labels."""
    additions: Dict[Tuple[str, str], Candidate] = {}
    suspects: Dict[Tuple[str, str], Candidate] = {}
    labelled: List[List[Tuple[int, int, str]]] = []

    def inputs() -> Iterable[Doc]:
        for doc in docs:
            labelled.append([(e.start, e.end, e.label_) for e in doc.ents])
            yield Doc(nlp.vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc],
                      user_data=dict(doc.user_data))

    for index, doc in enumerate(nlp.pipe(inputs(), batch_size=batch_size)):
        scores = span_scores(doc, spans_key)
        predicted = {(e.start, e.end, e.label_) for e in doc.ents}
        labelled_texts = {doc[start:end].text.lower() for start, end, _ in labelled[index]}
        for ent in doc.ents:  # covered: a KB phrase, or labelled in this doc by any source (rule, propagation)
            if ent.text.lower() not in covered and ent.text.lower() not in labelled_texts:
                key = (ent.text, ent.label_)
                additions.setdefault(key, Candidate(*key)).add(ent, scores.get((ent.start, ent.end, ent.label_), 1.0))
        for start, end, label in labelled[index]:
            span = doc[start:end]
            if span.text.lower() in covered:
                key = (span.text, label)
                candidate = suspects.setdefault(key, Candidate(*key))
                candidate.add(Span(doc, start, end, label=label), 0.0)
                candidate.agreed += (start, end, label) in predicted
    return additions, suspects


def rank_additions(additions: Dict[Tuple[str, str], Candidate], min_count: int, min_confidence: float,
                   top: int) -> List[Candidate]:
    keep = [c for c in additions.values() if c.count >= min_count and c.confidence >= min_confidence]
    return sorted(keep, key=lambda c: (-c.count, -c.confidence, c.text, c.label))[:top]


def rank_suspects(suspects: Dict[Tuple[str, str], Candidate], min_count: int, max_agreement: float,
                  top: int) -> List[Candidate]:
    keep = [c for c in suspects.values() if c.count >= min_count and c.agreed / c.count <= max_agreement]
    return sorted(keep, key=lambda c: (-c.count, c.agreed / c.count, c.text, c.label))[:top]


def write_suggestions(additions: Sequence[Candidate], suspects: Sequence[Candidate], jsonl: Path,
                      tsv: Path) -> None:
    """EntityRuler JSONL of the additions; a TSV of additions and suspects with evidence."""
    records = [{"label": c.label, "pattern": c.text, "source": "suggest-kb", "count": c.count,
                "confidence": round(c.confidence, 4)} for c in additions]
    write_atomic(jsonl, "".join(srsly.json_dumps(r) + "\n" for r in records).encode("utf8"))
    rows = ["kind\ttext\tlabel\tcount\tmean_confidence\tmodel_agrees\texamples"]
    for c in additions:
        rows.append(f"add\t{c.text}\t{c.label}\t{c.count}\t{c.confidence:.4f}\t\t{' | '.join(c.examples)}")
    for c in suspects:
        rows.append(f"suspect\t{c.text}\t{c.label}\t{c.count}\t\t{c.agreed}/{c.count}\t{' | '.join(c.examples)}")
    write_atomic(tsv, ("\n".join(row.replace("\r", " ") for row in rows) + "\n").encode("utf8"))


def summary(additions: Sequence[Candidate], suspects: Sequence[Candidate]) -> Dict[str, Any]:
    by_label: Dict[str, int] = defaultdict(int)
    for c in additions:
        by_label[c.label] += 1
    return {"additions": len(additions), "by_label": dict(sorted(by_label.items())), "suspects": len(suspects)}
