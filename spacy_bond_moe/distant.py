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

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import spacy
import srsly
from spacy.language import Language
from spacy.matcher import Matcher, PhraseMatcher
from spacy.tokens import Doc, DocBin, Span
from spacy.schemas import validate_token_pattern

from .about import __version__
from .converters import DOC_ID_KEY
from .engines import JobReport, run_job
from .fetch import write_atomic
from .util import InputError
from .rules import Rule, select_rules
from .shards import Shard, check_out_dir, input_files, sha256_file, shard_lines

logger = logging.getLogger(__name__)

Pattern = Union[str, List[Dict[str, object]]]
DEFAULT_PRIORITY = ("ORG", "PER", "LOC", "MISC")
CAPITALISED_LABELS = ("PER", "ORG", "LOC")
INPUT_FORMATS = ("text", "tokens", "jsonl", "spacy")
PHRASE_CHUNK = 10000  # phrase patterns tokenised and added to the PhraseMatcher at a time
MAX_LINE_CHARS = 100000  # longer input lines are skipped (spaCy's tokenizer refuses 1,000,000)
MAX_LISTED_LINES = 10  # line numbers of skipped or repaired lines kept in the summary


class DistantError(InputError):
    """Bad labeller input: names the file and, where known, the line."""


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
        for regex in _regexes(pattern):
            try:
                re.compile(regex)
            except re.error as err:
                raise DistantError(path, f"invalid REGEX {regex!r} ({err})", line) from None
        return KBEntry(label.strip(), pattern, source)
    raise DistantError(
        path, f"'pattern' must be a string or a list of token objects, got {type(pattern).__name__}", line
    )


def _regexes(value: object) -> Iterator[str]:
    """Every ``{"REGEX": ...}`` value in a token pattern, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "REGEX" and isinstance(item, str):
                yield item
            else:
                yield from _regexes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _regexes(item)


def _read_lines(path: Path, what: str) -> List[str]:
    """The lines of a UTF-8 text file, without a leading byte-order mark."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DistantError(path, f"cannot read {what} ({err})") from None


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
    lines = _read_lines(path, "knowledge base")
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


def _listed(numbers: Sequence[int], total: int) -> str:
    """``line 3, 8`` or ``line 3, 8, ... (first 2 of 5)``."""
    more = f", ... (first {len(numbers)} of {total})" if total > len(numbers) else ""
    return "line " + ", ".join(map(str, numbers)) + more


def _note_line(numbers: List[int], number: int) -> None:
    """Keep `number` among the first MAX_LISTED_LINES line numbers."""
    if len(numbers) < MAX_LISTED_LINES:
        numbers.append(number)


@dataclass
class LabelSummary:
    """Counts of one labelling run (printed and saved next to the output)."""

    n_docs: int = 0
    n_tokens: int = 0
    n_entity_tokens: int = 0
    n_docs_with_ents: int = 0
    n_skipped_empty: int = 0
    n_skipped_long: int = 0
    skipped_long_lines: List[int] = field(default_factory=list)  # the first MAX_LISTED_LINES
    n_nul_removed: int = 0  # NUL characters stripped from the input
    n_nul_lines: int = 0
    nul_lines: List[int] = field(default_factory=list)  # the first MAX_LISTED_LINES
    n_replaced_ents: int = 0
    ents: Dict[str, int] = field(default_factory=Counter)
    hits: Dict[str, int] = field(default_factory=Counter)
    filtered: Dict[str, int] = field(default_factory=Counter)
    overlaps_dropped: int = 0
    n_propagated_names: int = 0
    kb: Optional[KBStats] = None

    def merge(self, counts: Dict[str, object]) -> None:
        """Add the counts of another run (a shard's :meth:`to_dict`); listed line numbers
        stay the first MAX_LISTED_LINES."""
        for name, value in counts.items():
            mine = getattr(self, name, None)
            if name == "kb" or mine is None or isinstance(mine, float):
                continue
            if isinstance(mine, dict):
                mine.update(value)  # type: ignore[attr-defined]
            elif isinstance(mine, list):
                mine[:] = sorted(mine + list(value))[:MAX_LISTED_LINES]  # type: ignore[operator]
            elif isinstance(mine, int) and not isinstance(mine, bool):
                setattr(self, name, mine + int(value))  # type: ignore[call-overload]

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

    def warnings(self) -> List[str]:
        """One line for the skipped over-long lines and one for the NUL characters removed."""
        lines = []
        if self.n_skipped_long:
            lines.append(
                f"skipped {self.n_skipped_long} over-long input line(s) "
                f"({_listed(self.skipped_long_lines, self.n_skipped_long)})"
            )
        if self.n_nul_removed:
            lines.append(
                f"removed {self.n_nul_removed} NUL character(s) from {self.n_nul_lines} input line(s) "
                f"({_listed(self.nul_lines, self.n_nul_lines)})"
            )
        return lines

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
        if self.filtered.get("caseless"):
            lines.append(
                f"caseless: {self.filtered['caseless']} matches in scripts without case (e.g. Chinese, "
                "Japanese, Thai) dropped by the capitalisation filters; --caseless-ok keeps them"
            )
        lines += self.warnings()
        if self.n_propagated_names:
            lines.append(f"propagated names: {self.n_propagated_names} surnames learnt from full names")
        if self.kb is not None:
            lines.append(
                f"knowledge base: {self.kb.n_phrases} phrases, {self.kb.n_token_patterns} token patterns; "
                f"skipped {self.kb.skipped_empty} empty, {self.kb.skipped_duplicate} duplicate; "
                f"{self.kb.ambiguous} with several labels"
            )
        return "\n".join(lines)


def is_caseless(text: str) -> bool:
    """Whether `text` is a word of a script without case (Chinese, Japanese, Thai, ...): it
    has letters (vowel signs such as Thai's are marks, not letters) and no cased character."""
    return any(char.isalpha() for char in text) and text.lower() == text.upper()


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
        caseless_ok: bool = False,
    ) -> None:
        self.nlp = nlp
        self.skip_stopwords = skip_stopwords
        self.skip_lowercase = skip_lowercase
        self.caseless_ok = caseless_ok
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

    def learn_names(self, docs: Iterable[Doc], label: str = "PER") -> List[str]:
        """The last words of the multi-word `label` entities ("Boris Yeltsin" -> "Yeltsin")
        that labelling `docs` finds, sorted; the docs' own entities are not kept."""
        names: Set[str] = set()
        for doc in docs:
            for ent in self.label(doc).ents:
                last = ent[-1]
                if ent.label_ == label and len(ent) > 1 and last.is_title and last.is_alpha and not last.is_stop:
                    names.add(last.text)
        return sorted(names)

    def add_names(self, names: Sequence[str], label: str = "PER") -> None:
        """Label lone mentions of `names` as `label` from now on (instead of earlier names)."""
        key = self._key("propagated", label, "names")
        if key in self.matcher:
            self.matcher.remove(key)
        if names:
            self.matcher.add(key, [[{"TEXT": {"IN": sorted(names)}}]])

    def propagate_names(self, docs: Iterable[Doc], label: str = "PER") -> List[str]:
        """Corpus-level name propagation: :meth:`learn_names` over `docs`, then :meth:`add_names`.
        Returns the names added."""
        names = self.learn_names(docs, label)
        self.add_names(names, label)
        return names

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

    def _capitalised(self, text: str) -> bool:
        """Whether `text` starts with a capital; with `caseless_ok`, a caseless word counts too."""
        return text[:1].isupper() or (self.caseless_ok and is_caseless(text))

    def _rejection(self, span: Span, label: str) -> Optional[str]:
        """The filter that drops `span`, or None. ``caseless``: a capitalisation filter that
        only failed because the words have no case (北京), kept with `caseless_ok`."""
        if self.skip_stopwords and all(token.is_stop or token.is_punct for token in span):
            return "stopwords"
        if self.skip_lowercase and not any(self._capitalised(token.text) for token in span):
            return "caseless" if any(is_caseless(token.text) for token in span) else "lowercase"
        head = span[-1]
        if label in self.capitalised_labels and not (self._capitalised(head.text) or head.is_digit):
            return "caseless" if is_caseless(head.text) else "uncapitalised_head"
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


def read_docs(
    path: Path,
    nlp: Language,
    input_format: str,
    summary: LabelSummary,
    max_line_chars: int = MAX_LINE_CHARS,
    *,
    lines: Optional[Iterable[Tuple[int, str]]] = None,
    doc_range: Optional[Tuple[int, int]] = None,
) -> Iterator[Doc]:
    """Docs from `path` with ids ``"{file stem}:{index}"`` (or the JSONL ``"id"``).

    In line formats, a leading byte-order mark and NUL characters are removed, and lines
    longer than `max_line_chars` are skipped; both are counted in `summary`. `lines`
    ((number, text) pairs) replaces reading the whole file, `doc_range` selects docs of a
    DocBin: both for reading one shard (:mod:`.shards`).
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {input_format!r}; expected one of {INPUT_FORMATS}")
    if input_format == "spacy":
        try:
            docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
        except (OSError, ValueError) as err:
            raise DistantError(path, f"cannot read DocBin ({err})") from None
        first, stop = doc_range or (0, len(docs))
        for index in range(first, stop):
            docs[index].user_data.setdefault(DOC_ID_KEY, f"{path.stem}:{index}")
            yield docs[index]
        return
    if lines is None:
        lines = enumerate(_read_lines(path, "input"), start=1)
    for number, line in lines:
        if "\x00" in line:
            summary.n_nul_removed += line.count("\x00")
            summary.n_nul_lines += 1
            _note_line(summary.nul_lines, number)
            line = line.replace("\x00", "")
        if not line.strip():
            summary.n_skipped_empty += 1
            continue
        if len(line) > max_line_chars:
            summary.n_skipped_long += 1
            _note_line(summary.skipped_long_lines, number)
            continue
        doc_id = f"{path.stem}:{number - 1}"
        if input_format == "text":
            doc = _make_doc(path, number, line, nlp)
        elif input_format == "tokens":
            doc = Doc(nlp.vocab, words=line.split())
        else:
            doc, doc_id = _jsonl_doc(path, number, line, nlp, doc_id)
        doc.user_data[DOC_ID_KEY] = doc_id
        yield doc


def _make_doc(path: Path, number: int, text: str, nlp: Language) -> Doc:
    """Tokenise one line's text; a tokenizer error (E088: too long) names the line."""
    try:
        return nlp.make_doc(text)
    except ValueError as err:
        raise DistantError(path, str(err), number) from None


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
        return _make_doc(path, number, record["text"], nlp), doc_id
    raise DistantError(path, "expected 'text' (a string) or 'tokens' (a list of non-empty strings)", number)


def detect_input_format(path: Path) -> str:
    """`spacy` for .spacy, `jsonl` for .jsonl/.json, else `text`."""
    if path.suffix == ".spacy":
        return "spacy"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    return "text"


def check_outputs(output: Path, summary_path: Optional[Path] = None) -> Path:
    """Fail early unless `output` and the summary JSON can be written; return the summary's
    path (default ``OUTPUT.summary.json``).

    Each must not be a folder, and its nearest existing parent must be a writable folder
    (missing folders are created when writing).
    """
    output = Path(output)
    summary_path = Path(summary_path) if summary_path else output.with_name(output.name + ".summary.json")
    if output.resolve() == summary_path.resolve():
        raise DistantError(summary_path, "the summary JSON must not be the output DocBin")
    for path in (output, summary_path):
        if path.is_dir():
            raise DistantError(path, "cannot write output: is a folder")
        parent = next(folder for folder in path.parents if folder.exists())
        if not parent.is_dir():
            raise DistantError(path, f"cannot write output: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DistantError(path, f"cannot write output: folder {parent} is not writable")
    return summary_path


def _write(path: Path, data: bytes, what: str) -> None:
    """`write_atomic` with an OSError as a DistantError naming `path`."""
    try:
        write_atomic(path, data)
    except OSError as err:
        raise DistantError(path, f"cannot write the {what} ({err})") from None


def label_file(
    labeller: DistantLabeller,
    input_path: Path,
    output: Path,
    *,
    input_format: Optional[str] = None,
    summary_path: Optional[Path] = None,
    progress: bool = False,
    propagate: bool = False,
    max_line_chars: int = MAX_LINE_CHARS,
) -> LabelSummary:
    """Label every doc of `input_path`; write the DocBin, then the summary JSON, atomically.

    The output paths are checked (:func:`check_outputs`) before anything is read. With
    `propagate`, a first pass over the input learns PER surnames
    (:meth:`DistantLabeller.propagate_names`) and the second pass labels with them.
    """
    input_path, output = Path(input_path), Path(output)
    summary_path = check_outputs(output, summary_path)
    input_format = input_format or detect_input_format(input_path)
    summary = LabelSummary(kb=labeller.kb_stats)
    if propagate:
        first_pass = read_docs(input_path, labeller.nlp, input_format, LabelSummary(), max_line_chars)
        summary.n_propagated_names = len(labeller.propagate_names(first_pass))
    docs = read_docs(input_path, labeller.nlp, input_format, summary, max_line_chars)
    if progress:
        from tqdm import tqdm

        docs = tqdm(docs, desc=f"labelling {input_path.name}", unit=" docs")
    doc_bin = DocBin(store_user_data=True)
    for doc in docs:
        doc_bin.add(labeller.label(doc, summary))
    for warning in summary.warnings():
        logger.warning("%s: %s", input_path, warning)
    if summary.n_docs == 0:
        raise DistantError(input_path, "no documents to label")
    _write(output, doc_bin.to_bytes(), "DocBin")
    _write(summary_path, srsly.json_dumps(summary.to_dict(), indent=2).encode("utf8") + b"\n", "summary")
    logger.info("%s -> %s (%d docs); summary %s", input_path, output, summary.n_docs, summary_path)
    return summary


@dataclass(frozen=True)
class DistantJob:
    """The labeller as a :class:`~.shards.ShardJob`: one DocBin per shard, or (`learn_names`)
    the PER surnames a shard teaches, for corpus-wide name propagation."""

    kbs: Tuple[str, ...]
    kb_sha256: Tuple[str, ...]
    options: Tuple[Tuple[str, object], ...]
    lang: str = "en"
    max_line_chars: int = MAX_LINE_CHARS
    names: Tuple[str, ...] = ()
    learn_names: bool = False
    command: ClassVar[str] = "distant"

    @classmethod
    def create(cls, kbs: Sequence[Union[str, Path]], lang: str = "en", max_line_chars: int = MAX_LINE_CHARS,
               **options: object) -> "DistantJob":
        """A job over the KB files `kbs` (checked and checksummed now) with labeller `options`."""
        paths = [Path(kb).resolve() for kb in kbs]
        for path in paths:
            if not path.is_file():
                raise DistantError(path, "knowledge base not found")
        sums = tuple(sha256_file(path) for path in paths)
        return cls(tuple(map(str, paths)), sums, tuple(sorted(options.items())), lang, max_line_chars)

    @property
    def output_suffix(self) -> str:
        return ".names.json" if self.learn_names else ".spacy"

    def settings(self) -> Dict[str, object]:
        return {"kbs": [{"path": p, "sha256": s} for p, s in zip(self.kbs, self.kb_sha256)],
                "lang": self.lang, "max_line_chars": self.max_line_chars, **dict(self.options),
                "n_propagated_names": len(self.names), "learn_names": self.learn_names}

    def fingerprint(self) -> str:
        data = {**self.settings(), "names": list(self.names), "version": __version__}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def state_key(self) -> str:
        """The KBs and options: the name pass and the labelling pass share one labeller."""
        data = {"kbs": self.kb_sha256, "lang": self.lang, "options": self.options}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def setup(self) -> DistantLabeller:
        return DistantLabeller.from_kbs(spacy.blank(self.lang), self.kbs, **dict(self.options))

    def run(self, labeller: DistantLabeller, shard: Shard) -> Tuple[bytes, Dict[str, object]]:
        labeller.add_names(() if self.learn_names else self.names)
        summary = LabelSummary()
        docs = read_shard_docs(shard, labeller.nlp, summary, self.max_line_chars)
        if self.learn_names:
            names = labeller.learn_names(docs)
            return srsly.json_dumps(names).encode("utf8"), {"n_docs": summary.n_docs, "names": names}
        doc_bin = DocBin(store_user_data=True)
        for doc in docs:
            doc_bin.add(labeller.label(doc, summary))
        return doc_bin.to_bytes(), summary.to_dict()

    def totals(self, counts: List[Dict[str, object]]) -> Dict[str, object]:
        """The summary of all shards (what `label_file` writes for one output)."""
        summary = LabelSummary()
        for shard_counts in counts:
            summary.merge(shard_counts)
        summary.n_propagated_names = len(self.names)
        return summary.to_dict()


def read_shard_docs(shard: Shard, nlp: Language, summary: LabelSummary,
                    max_line_chars: int = MAX_LINE_CHARS) -> Iterator[Doc]:
    """The docs of one shard, with the ids and line numbers they have in the whole file."""
    path = Path(shard.path)
    if shard.input_format == "spacy":
        return read_docs(path, nlp, "spacy", summary, doc_range=(shard.first, shard.stop))
    return read_docs(path, nlp, shard.input_format, summary, max_line_chars, lines=shard_lines(shard))


def label_sharded(job: DistantJob, input_path: Path, out_dir: Path, *, shard_size: int,
                  input_format: Optional[str] = None, propagate: bool = False, engine: str = "local",
                  n_workers: int = 1, address: Optional[str] = None, progress: bool = False) -> JobReport:
    """Label `input_path` (a file or a folder of files) into DocBin shards in `out_dir`.

    With `propagate`, a first sharded pass (receipts in ``OUT_DIR/.names``, also resumable)
    learns PER surnames from the whole input; the labelling pass then uses them all."""
    files = input_files(input_path, input_format, detect_input_format)
    check_out_dir(out_dir)
    run = dict(shard_size=shard_size, engine=engine, n_workers=n_workers, address=address, progress=progress)
    if propagate:
        learner = dataclasses.replace(job, learn_names=True)
        first = run_job(learner, files, Path(out_dir) / ".names", **run)  # type: ignore[arg-type]
        if first.errors:
            return first
        names = sorted({n for r in first.results for n in r["counts"]["names"]})  # type: ignore[union-attr]
        job = dataclasses.replace(job, names=tuple(names))
    report = run_job(job, files, out_dir, totals=job.totals, **run)  # type: ignore[arg-type]
    if not report.errors and not any(r["counts"].get("n_docs") for r in report.results):
        raise DistantError(Path(input_path), "no documents to label")
    return report
