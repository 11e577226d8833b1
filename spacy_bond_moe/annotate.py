"""Batch annotation with a trained pipeline (our ``spacy apply``), sharded and resumable:
text / JSONL / DocBin inputs to DocBin or JSONL shards with entities, confidences and expert."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple

import spacy
import srsly
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from .about import __version__
from .converters import DOC_ID_KEY
from .distant import MAX_LINE_CHARS, LabelSummary, detect_input_format, read_shard_docs
from .engines import JobReport, run_job
from .shards import Shard, input_files, sha256_file
from .util import FACTORY

OutputFormat = Literal["spacy", "jsonl"]
OUTPUT_FORMATS = ("spacy", "jsonl")


def model_fingerprint(model: str) -> str:
    """SHA-256 over a pipeline folder's files (names and bytes), or over an installed
    package's name and version."""
    path = Path(model)
    digest = hashlib.sha256()
    if path.is_dir():
        for file_ in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file_.relative_to(path)}\0{sha256_file(file_)}\0".encode())
    else:
        from spacy.util import get_package_version

        digest.update(f"{model}\0{get_package_version(model)}".encode())
    return digest.hexdigest()


def spans_key(nlp: Language) -> Optional[str]:
    """The `spans_key` of the pipeline's bond_moe_ner component (None without one)."""
    for name in nlp.pipe_names:
        if nlp.get_pipe_meta(name).factory == FACTORY:
            return nlp.get_pipe(name).cfg.get("spans_key", "bond_moe")
    return None


def span_scores(doc: Doc, spans_key: Optional[str]) -> Dict[Tuple[int, int, str], float]:
    """(start, end, label) -> confidence, from the component's span group (empty without one)."""
    if not spans_key or spans_key not in doc.spans:
        return {}
    group = doc.spans[spans_key]
    return {(s.start, s.end, s.label_): float(c) for s, c in zip(group, group.attrs.get("scores", []))}


def doc_record(doc: Doc, spans_key: Optional[str]) -> Dict[str, Any]:
    """One JSONL record: id, text, entities (token and character offsets, label, confidence)
    and the expert the document was routed to."""
    scores = span_scores(doc, spans_key)
    ents = [
        {"start": e.start, "end": e.end, "start_char": e.start_char, "end_char": e.end_char,
         "label": e.label_, "text": e.text, "score": round(scores[(e.start, e.end, e.label_)], 6)
         if (e.start, e.end, e.label_) in scores else None}
        for e in doc.ents
    ]
    expert = doc._.get("bond_moe_expert") if doc.has_extension("bond_moe_expert") else None
    return {"id": doc.user_data.get(DOC_ID_KEY), "text": doc.text, "ents": ents, "expert": expert}


@dataclass(frozen=True)
class AnnotateJob:
    """A trained pipeline over shards: one DocBin or JSONL file per shard."""

    model: str
    model_sha256: str
    output_format: OutputFormat = "spacy"
    batch_size: int = 64
    gpu_id: int = -1
    max_line_chars: int = MAX_LINE_CHARS
    command: ClassVar[str] = "annotate"

    @classmethod
    def create(cls, model: str, **options: Any) -> "AnnotateJob":
        """A job for the pipeline `model` (a folder or an installed package, fingerprinted now)."""
        if Path(model).exists():
            model = str(Path(model).resolve())
        if options.get("output_format", "spacy") not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {options['output_format']!r}; expected one of {OUTPUT_FORMATS}")
        return cls(model, model_fingerprint(model), **options)

    @property
    def output_suffix(self) -> str:
        return ".jsonl" if self.output_format == "jsonl" else ".spacy"

    def settings(self) -> Dict[str, Any]:
        return {"model": self.model, "model_sha256": self.model_sha256, "output_format": self.output_format,
                "batch_size": self.batch_size, "max_line_chars": self.max_line_chars}

    def fingerprint(self) -> str:
        data = {**self.settings(), "version": __version__}  # not gpu_id: the same output wherever it runs
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def state_key(self) -> str:
        return f"{self.model}:{self.model_sha256}:{self.gpu_id}"

    def setup(self) -> Language:
        if self.gpu_id >= 0:
            spacy.require_gpu(self.gpu_id)
        return spacy.load(self.model)

    def run(self, nlp: Language, shard: Shard) -> Tuple[bytes, Dict[str, Any]]:
        summary = LabelSummary()
        docs = list(read_shard_docs(shard, nlp, summary, self.max_line_chars))
        counts = {"n_docs": len(docs), "n_words": sum(len(doc) for doc in docs), "n_ents": 0,
                  "n_skipped_empty": summary.n_skipped_empty, "n_skipped_long": summary.n_skipped_long,
                  "skipped_long_lines": summary.skipped_long_lines, "n_nul_removed": summary.n_nul_removed}
        key = spans_key(nlp)
        doc_bin, lines = DocBin(store_user_data=True), []
        for doc in nlp.pipe(docs, batch_size=self.batch_size):
            counts["n_ents"] += len(doc.ents)
            if self.output_format == "jsonl":
                lines.append(srsly.json_dumps(doc_record(doc, key)))
            else:
                doc_bin.add(doc)
        if self.output_format == "jsonl":
            return "".join(line + "\n" for line in lines).encode("utf8"), counts
        return doc_bin.to_bytes(), counts

    def totals(self, counts: List[Dict[str, Any]]) -> Dict[str, Any]:
        keys = ("n_docs", "n_words", "n_ents", "n_skipped_empty", "n_skipped_long", "n_nul_removed")
        return {key: sum(c.get(key, 0) for c in counts) for key in keys}


def annotate(job: AnnotateJob, input_path: Path, out_dir: Path, *, shard_size: int,
             input_format: Optional[str] = None, engine: str = "local", n_workers: int = 1,
             address: Optional[str] = None, progress: bool = False) -> JobReport:
    """Annotate `input_path` (a file or a folder of files) into shards in `out_dir`."""
    files = input_files(input_path, input_format, detect_input_format)
    return run_job(job, files, out_dir, shard_size=shard_size, engine=engine, n_workers=n_workers,
                   address=address, progress=progress, totals=job.totals)
