"""Distant labelling: match knowledge bases (entity lists) and rules against raw text.

Knowledge bases are JSONL files in spaCy's EntityRuler pattern format
(``{"label": "ORG", "pattern": "Acme Corp"}`` or a token pattern list) or TSV files
(``name<TAB>type``). Phrases are matched with a ``PhraseMatcher`` (exact or
case-insensitive), token patterns and rule packs (:mod:`.rules`) with a ``Matcher``.
Candidates pass BOND-style filters, then overlaps are resolved longest first, ties by
specificity (listed phrase, then KB token pattern, then rule), then type priority. The
result is a DocBin with distant ``doc.ents`` and doc ids, ready for ``spacy train``; every
skip, filter and overlap is counted in :class:`LabelSummary`.
"""

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import srsly
from spacy.language import Language
from spacy.matcher import Matcher, PhraseMatcher
from spacy.tokens import Doc, DocBin, Span
from spacy.schemas import validate_token_pattern

from .converters import DOC_ID_KEY
from .fetch import write_atomic
from .rules import Rule, select_rules

logger = logging.getLogger(__name__)

Pattern = Union[str, List[Dict[str, object]]]
DEFAULT_PRIORITY = ("ORG", "PER", "LOC", "MISC")
CAPITALISED_LABELS = ("PER", "ORG", "LOC")
INPUT_FORMATS = ("text", "tokens", "jsonl", "spacy")
PHRASE_CHUNK = 10000  # phrase patterns tokenised and added to the PhraseMatcher at a time


class DistantError(ValueError):
    """Bad labeller input: names the file and, where known, the line."""

    def __init__(self, path: Path, problem: str, line: Optional[int] = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class KBEntry:
    """One knowledge-base pattern; `source` names the file (and pack) it came from."""

    label: str
    pattern: Pattern
    source: str


@dataclass
class KBStats:
    """What loading the knowledge bases kept and skipped."""

    n_phrases: int = 0
    n_token_patterns: int = 0
    per_label: Dict[str, int] = field(default_factory=dict)
    skipped_empty: int = 0
    skipped_duplicate: int = 0
    ambiguous: int = 0


def _entry(path: Path, line: int, label: object, pattern: object, source: str) -> Optional[KBEntry]:
    """Validate one KB record; None for an empty pattern (skipped and counted by the caller)."""
    if not isinstance(label, str) or not label.strip():
        raise DistantError(path, f"'label' must be a non-empty string, got {label!r}", line)
    if isinstance(pattern, str):
        pattern = " ".join(pattern.split())
        return KBEntry(label.strip(), pattern, source) if pattern else None
    if isinstance(pattern, list):
        if not pattern:
            return None
        if not all(isinstance(token, dict) for token in pattern):
            raise DistantError(path, "a token pattern must be a list of objects", line)
        errors = validate_token_pattern(pattern)
        if errors:
            raise DistantError(path, f"invalid token pattern: {'; '.join(errors)}", line)
        return KBEntry(label.strip(), pattern, source)
    raise DistantError(
        path, f"'pattern' must be a string or a list of token objects, got {type(pattern).__name__}", line
    )


def _read_jsonl(path: Path, lines: List[str]) -> Iterator[Tuple[int, Optional[KBEntry]]]:
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DistantError(path, f"invalid JSON ({err.msg} at column {err.colno})", number) from None
        if not isinstance(record, dict) or "label" not in record or "pattern" not in record:
            raise DistantError(path, "expected an object with 'label' and 'pattern'", number)
        source = f"{path.name}:{record['source']}" if "source" in record else path.name
        yield number, _entry(path, number, record["label"], record["pattern"], source)


def _read_tsv(path: Path, lines: List[str]) -> Iterator[Tuple[int, Optional[KBEntry]]]:
    for number, text in enumerate(lines, start=1):
        if not text.strip() or text.startswith("#"):
            continue
        columns = text.rstrip("\r\n").split("\t")
        if len(columns) != 2:
            raise DistantError(path, f"expected 'name<TAB>type', got {len(columns)} column(s)", number)
        yield number, _entry(path, number, columns[1], columns[0], path.name)


def read_kb(path: Union[str, Path], stats: Optional[KBStats] = None) -> List[KBEntry]:
    """Read one knowledge base (JSONL or TSV, by extension; else sniffed from its first line)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DistantError(path, f"cannot read knowledge base ({err})") from None
    first = next((line for line in lines if line.strip() and not line.startswith("#")), "")
    is_jsonl = path.suffix in (".jsonl", ".json") or (
        path.suffix not in (".tsv", ".txt") and first.lstrip().startswith("{")
    )
    stats = stats if stats is not None else KBStats()
    entries = []
    for _, entry in (_read_jsonl if is_jsonl else _read_tsv)(path, lines):
        if entry is None:
            stats.skipped_empty += 1
        else:
            entries.append(entry)
    return entries


def _key(pattern: Pattern) -> str:
    return pattern if isinstance(pattern, str) else json.dumps(pattern, sort_keys=True)


def load_kbs(paths: Sequence[Union[str, Path]]) -> Tuple[List[KBEntry], KBStats]:
    """Read several knowledge bases; duplicates (same label and pattern) are kept once."""
    stats = KBStats()
    seen: Set[Tuple[str, str]] = set()
    labels_of: Dict[str, Set[str]] = {}
    entries: List[KBEntry] = []
    for path in paths:
        for entry in read_kb(path, stats):
            key = (entry.label, _key(entry.pattern))
            if key in seen:
                stats.skipped_duplicate += 1
                continue
            seen.add(key)
            entries.append(entry)
            labels_of.setdefault(key[1], set()).add(entry.label)
    stats.n_phrases = sum(isinstance(e.pattern, str) for e in entries)
    stats.n_token_patterns = len(entries) - stats.n_phrases
    stats.per_label = dict(sorted(Counter(e.label for e in entries).items()))
    stats.ambiguous = sum(len(labels) > 1 for labels in labels_of.values())
    return entries, stats


@dataclass
class LabelSummary:
    """Counts of one labelling run (printed and saved next to the output)."""

    n_docs: int = 0
    n_tokens: int = 0
    n_entity_tokens: int = 0
    n_docs_with_ents: int = 0
    n_skipped_empty: int = 0
    n_replaced_ents: int = 0
    ents: Dict[str, int] = field(default_factory=Counter)
    hits: Dict[str, int] = field(default_factory=Counter)
    filtered: Dict[str, int] = field(default_factory=Counter)
    overlaps_dropped: int = 0
    n_propagated_names: int = 0
    kb: Optional[KBStats] = None

    @property
    def token_coverage(self) -> float:
        return self.n_entity_tokens / self.n_tokens if self.n_tokens else 0.0

    @property
    def doc_coverage(self) -> float:
        return self.n_docs_with_ents / self.n_docs if self.n_docs else 0.0

    def to_dict(self) -> Dict[str, object]:
        data: Dict[str, object] = {
            key: dict(sorted(value.items())) if isinstance(value, dict) else value
            for key, value in vars(self).items()
        }
        data["kb"] = asdict(self.kb) if self.kb is not None else None
        data["token_coverage"] = round(self.token_coverage, 6)
        data["doc_coverage"] = round(self.doc_coverage, 6)
        return data

    def format(self) -> str:
        """A short plain-text report."""
        lines = [
            f"docs {self.n_docs} (empty skipped {self.n_skipped_empty}), tokens {self.n_tokens}",
            f"entities {sum(self.ents.values())}: "
            + ", ".join(f"{label} {n}" for label, n in sorted(self.ents.items())),
            f"coverage: {self.doc_coverage:.1%} of docs have an entity, "
            f"{self.token_coverage:.1%} of tokens are in one",
            "matches by source: " + ", ".join(f"{k} {v}" for k, v in sorted(self.hits.items())),
            "filtered: " + (", ".join(f"{k} {v}" for k, v in sorted(self.filtered.items())) or "none")
            + f"; overlaps dropped {self.overlaps_dropped}",
        ]
        if self.n_propagated_names:
            lines.append(f"propagated names: {self.n_propagated_names} surnames learnt from full names")
        if self.kb is not None:
            lines.append(
                f"knowledge base: {self.kb.n_phrases} phrases, {self.kb.n_token_patterns} token patterns; "
                f"skipped {self.kb.skipped_empty} empty, {self.kb.skipped_duplicate} duplicate; "
                f"{self.kb.ambiguous} with several labels"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Candidate:
    start: int
    end: int
    label: str
    source: str
    kind: int  # specificity for equally long overlaps: 0 KB phrase, 1 KB token pattern, 2 rule


class DistantLabeller:
    """Label docs from knowledge-base entries and rules (see the module docstring)."""

    def __init__(
        self,
        nlp: Language,
        entries: Iterable[KBEntry],
        *,
        rules: Optional[List[str]] = None,
        ignore_case: bool = True,
        skip_stopwords: bool = True,
        skip_lowercase: bool = True,
        capitalised_labels: Sequence[str] = CAPITALISED_LABELS,
        priority: Sequence[str] = DEFAULT_PRIORITY,
    ) -> None:
        self.nlp = nlp
        self.skip_stopwords = skip_stopwords
        self.skip_lowercase = skip_lowercase
        self.capitalised_labels = set(capitalised_labels)
        self.priority = {label: rank for rank, label in enumerate(priority)}
        self.phrase_matcher = PhraseMatcher(nlp.vocab, attr="LOWER" if ignore_case else "ORTH")
        self.matcher = Matcher(nlp.vocab, validate=True)
        self._sources: Dict[int, Tuple[str, str]] = {}
        self._rules: Dict[int, Rule] = {}
        phrases: Dict[Tuple[str, str], List[str]] = {}
        for entry in entries:
            if isinstance(entry.pattern, str):
                phrases.setdefault((entry.label, entry.source), []).append(entry.pattern)
            else:
                self.matcher.add(self._key("kb", entry.label, entry.source), [entry.pattern])
        for (label, source), texts in phrases.items():
            key = self._key("kb", label, source)
            for start in range(0, len(texts), PHRASE_CHUNK):  # bounded memory for huge KBs
                chunk = texts[start : start + PHRASE_CHUNK]
                self.phrase_matcher.add(key, list(nlp.tokenizer.pipe(chunk, batch_size=1000)))
        selected = select_rules(rules)
        for rule in selected:
            key = self._key("rule", rule.label, rule.name)
            self._rules[self.nlp.vocab.strings[key]] = rule
            self.matcher.add(key, list(rule.patterns))
        self.rule_names = [rule.name for rule in selected]
        self.kb_stats: Optional[KBStats] = None

    @classmethod
    def from_kbs(cls, nlp: Language, paths: Sequence[Union[str, Path]], **options: object) -> "DistantLabeller":
        """A labeller over the knowledge-base files `paths` (see :func:`load_kbs`)."""
        entries, stats = load_kbs(paths)
        labeller = cls(nlp, entries, **options)  # type: ignore[arg-type]
        labeller.kb_stats = stats
        return labeller

    def _key(self, kind: str, label: str, source: str) -> str:
        key = f"{kind}|{label}|{source}"
        self._sources[self.nlp.vocab.strings.add(key)] = (label, f"{kind}:{source}")
        return key

    def propagate_names(self, docs: Iterable[Doc], label: str = "PER") -> List[str]:
        """Corpus-level name propagation: label the docs, then make the last word of every
        multi-word `label` entity ("Boris Yeltsin") a one-word pattern ("Yeltsin") of `label`.

        Returns the names added. The docs' own entities are not kept.
        """
        names: Set[str] = set()
        for doc in docs:
            for ent in self.label(doc).ents:
                last = ent[-1]
                if ent.label_ == label and len(ent) > 1 and last.is_title and last.is_alpha and not last.is_stop:
                    names.add(last.text)
        if names:
            self.matcher.add(self._key("propagated", label, "names"), [[{"TEXT": {"IN": sorted(names)}}]])
        return sorted(names)

    def _candidates(self, doc: Doc) -> Iterator[_Candidate]:
        for match_id, start, end in self.phrase_matcher(doc):
            label, source = self._sources[match_id]
            yield _Candidate(start, end, label, source, 0)
        for match_id, start, end in self.matcher(doc) if len(self.matcher) else ():
            label, source = self._sources[match_id]
            rule = self._rules.get(match_id)
            span: Optional[Span] = doc[start:end]
            if rule is not None:
                span = rule.trim(span)
            if span is not None:
                yield _Candidate(span.start, span.end, label, source, 1 if rule is None else 2)

    def _rejection(self, span: Span, label: str) -> Optional[str]:
        if self.skip_stopwords and all(token.is_stop or token.is_punct for token in span):
            return "stopwords"
        if self.skip_lowercase and not any(token.text[:1].isupper() for token in span):
            return "lowercase"
        if label in self.capitalised_labels and not (span[-1].text[:1].isupper() or span[-1].is_digit):
            return "uncapitalised_head"
        return None

    def label(self, doc: Doc, summary: Optional[LabelSummary] = None) -> Doc:
        """Set `doc.ents` from the knowledge bases and rules (other tokens become O)."""
        summary = summary if summary is not None else LabelSummary()
        kept: List[_Candidate] = []
        for cand in set(self._candidates(doc)):
            summary.hits[cand.source] += 1
            reason = self._rejection(doc[cand.start : cand.end], cand.label)
            if reason is None:
                kept.append(cand)
            else:
                summary.filtered[reason] += 1
        kept.sort(
            key=lambda c: (
                c.start - c.end, c.kind, self.priority.get(c.label, len(self.priority)), c.start, c.label
            )
        )
        taken = [False] * len(doc)
        spans: List[Span] = []
        for cand in kept:
            if any(taken[cand.start : cand.end]):
                summary.overlaps_dropped += 1
                continue
            taken[cand.start : cand.end] = [True] * (cand.end - cand.start)
            spans.append(Span(doc, cand.start, cand.end, label=cand.label))
        if doc.ents:
            summary.n_replaced_ents += len(doc.ents)
        doc.set_ents(spans, default="outside")
        summary.n_docs += 1
        summary.n_tokens += len(doc)
        summary.n_entity_tokens += sum(len(span) for span in spans)
        summary.n_docs_with_ents += bool(spans)
        summary.ents.update(span.label_ for span in spans)
        return doc


def read_docs(path: Path, nlp: Language, input_format: str, summary: LabelSummary) -> Iterator[Doc]:
    """Docs from `path` with ids ``"{file stem}:{index}"`` (or the JSONL ``"id"``)."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {input_format!r}; expected one of {INPUT_FORMATS}")
    if input_format == "spacy":
        try:
            docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
        except (OSError, ValueError) as err:
            raise DistantError(path, f"cannot read DocBin ({err})") from None
        for index, doc in enumerate(docs):
            doc.user_data.setdefault(DOC_ID_KEY, f"{path.stem}:{index}")
            yield doc
        return
    try:
        lines = path.read_text(encoding="utf8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DistantError(path, f"cannot read input ({err})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            summary.n_skipped_empty += 1
            continue
        doc_id = f"{path.stem}:{number - 1}"
        if input_format == "text":
            doc = nlp.make_doc(line)
        elif input_format == "tokens":
            doc = Doc(nlp.vocab, words=line.split())
        else:
            doc, doc_id = _jsonl_doc(path, number, line, nlp, doc_id)
        doc.user_data[DOC_ID_KEY] = doc_id
        yield doc


def _jsonl_doc(path: Path, number: int, line: str, nlp: Language, doc_id: str) -> Tuple[Doc, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DistantError(path, f"invalid JSON ({err.msg} at column {err.colno})", number) from None
    if not isinstance(record, dict):
        raise DistantError(path, "expected a JSON object with 'text' or 'tokens'", number)
    doc_id = str(record.get("id", doc_id))
    if isinstance(record.get("tokens"), list) and all(isinstance(t, str) and t for t in record["tokens"]):
        return Doc(nlp.vocab, words=record["tokens"]), doc_id
    if isinstance(record.get("text"), str):
        return nlp.make_doc(record["text"]), doc_id
    raise DistantError(path, "expected 'text' (a string) or 'tokens' (a list of non-empty strings)", number)


def detect_input_format(path: Path) -> str:
    """`spacy` for .spacy, `jsonl` for .jsonl/.json, else `text`."""
    if path.suffix == ".spacy":
        return "spacy"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    return "text"


def label_file(
    labeller: DistantLabeller,
    input_path: Path,
    output: Path,
    *,
    input_format: Optional[str] = None,
    summary_path: Optional[Path] = None,
    progress: bool = False,
    propagate: bool = False,
) -> LabelSummary:
    """Label every doc of `input_path`; write the DocBin and the summary JSON atomically.

    With `propagate`, a first pass over the input learns PER surnames
    (:meth:`DistantLabeller.propagate_names`) and the second pass labels with them.
    """
    input_path, output = Path(input_path), Path(output)
    input_format = input_format or detect_input_format(input_path)
    summary = LabelSummary(kb=labeller.kb_stats)
    if propagate:
        names = labeller.propagate_names(read_docs(input_path, labeller.nlp, input_format, LabelSummary()))
        summary.n_propagated_names = len(names)
    docs = read_docs(input_path, labeller.nlp, input_format, summary)
    if progress:
        from tqdm import tqdm

        docs = tqdm(docs, desc=f"labelling {input_path.name}", unit=" docs")
    doc_bin = DocBin(store_user_data=True)
    for doc in docs:
        doc_bin.add(labeller.label(doc, summary))
    if summary.n_docs == 0:
        raise DistantError(input_path, "no documents to label")
    write_atomic(output, doc_bin.to_bytes())
    summary_path = summary_path or output.with_name(output.name + ".summary.json")
    write_atomic(summary_path, srsly.json_dumps(summary.to_dict(), indent=2).encode("utf8") + b"\n")
    logger.info("%s -> %s (%d docs); summary %s", input_path, output, summary.n_docs, summary_path)
    return summary
