"""Read the distant-NER benchmark formats (BOND JSON, RoSTER text) into spaCy DocBins.

Every sentence becomes one `Doc` whose tokens are the source tokens joined by single
spaces, whose entities come from the BIO tags (every other token explicitly outside),
and whose ``user_data["bond_moe_id"]`` is ``"{dataset}:{split}:{index}"``, ``index``
being the 0-based position of the sentence in its source file.
"""

import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from spacy.tokens import Doc, DocBin
from spacy.training import biluo_tags_to_spans, iob_to_biluo
from spacy.vocab import Vocab

logger = logging.getLogger("spacy_bond_moe")

FORMATS = ("bond", "roster")
SPLITS = ("train", "dev", "test")
DOC_ID_KEY = "bond_moe_id"
BOND_TAG_MAP = "tag_to_id.json"
BOND_SPECIAL_TAGS = frozenset({"<START>", "<STOP>"})
# RoSTER file pairs per split. Train uses the distant labels only: the gold
# train labels (train_label_true.txt) are for measuring label noise, never for training.
ROSTER_FILES: Dict[str, Tuple[str, str]] = {
    "train": ("train_text.txt", "train_label_dist.txt"),
    "dev": ("valid_text.txt", "valid_label_true.txt"),
    "test": ("test_text.txt", "test_label_true.txt"),
}

_BIO_TAG = re.compile(r"O|[BI]-\S+")

Sentence = Tuple[List[str], List[str]]


class ConversionError(ValueError):
    """Invalid or unreadable benchmark input; the message names the file and the place."""

    def __init__(self, path: Path, problem: str, where: Optional[str] = None) -> None:
        self.path = Path(path)
        location = f"{self.path}: {where}" if where else str(self.path)
        super().__init__(f"{location}: {problem}")


@dataclass
class ConversionStats:
    """Counts for one converted split."""

    n_docs: int = 0
    n_tokens: int = 0
    n_ents: Dict[str, int] = field(default_factory=dict)
    n_repaired: int = 0
    n_skipped_empty: int = 0

    @property
    def n_ents_total(self) -> int:
        """Number of entities of all types."""
        return sum(self.n_ents.values())


def is_bio_tag(tag: str) -> bool:
    """Whether `tag` is ``O``, ``B-X`` or ``I-X`` (X non-empty, without whitespace)."""
    return _BIO_TAG.fullmatch(tag) is not None


def repair_bio(tags: Sequence[str]) -> Tuple[List[str], int]:
    """Turn each ``I-X`` not preceded by ``B-X``/``I-X`` into ``B-X`` (seqeval's default).

    Returns the repaired tags and how many were changed.
    """
    repaired: List[str] = []
    n_repaired = 0
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
            n_repaired += 1
        repaired.append(tag)
        previous = tag
    return repaired, n_repaired


def to_doc(vocab: Vocab, words: Sequence[str], tags: Sequence[str], doc_id: str) -> Doc:
    """Build a Doc from tokens and BIO tags; tokens outside entities are set to O."""
    spaces = [True] * len(words)
    if spaces:
        spaces[-1] = False
    doc = Doc(vocab, words=list(words), spaces=spaces)
    spans = biluo_tags_to_spans(doc, iob_to_biluo(list(tags)))
    doc.set_ents(spans, default="outside")
    doc.user_data[DOC_ID_KEY] = doc_id
    return doc


def _read_text(path: Path) -> str:
    """Read a UTF-8 file without newline translation (a lone \\r is not a line break)."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(path, f"cannot read file ({err})") from err


def _load_json(path: Path) -> object:
    """Parse a JSON file; an empty file or a syntax error is a ConversionError."""
    text = _read_text(path)
    if not text.strip():
        raise ConversionError(path, "file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConversionError(
            path, f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from err


def _check_words(path: Path, where: str, words: Sequence[object]) -> List[str]:
    """Return `words` if each is a non-empty string without whitespace."""
    checked: List[str] = []
    for i, word in enumerate(words):
        if not isinstance(word, str) or not word or any(c.isspace() for c in word):
            raise ConversionError(
                path, f"token {i} is {word!r}, not a non-empty string without whitespace", where
            )
        checked.append(word)
    return checked


def read_bond_tag_map(tag_to_id_path: Path) -> Dict[int, str]:
    """Read BOND's ``tag_to_id.json`` as id -> BIO tag, dropping ``<START>``/``<STOP>``."""
    mapping = _load_json(tag_to_id_path)
    if not isinstance(mapping, dict) or not mapping:
        raise ConversionError(tag_to_id_path, "expected a non-empty JSON object of tag -> id")
    id_to_tag: Dict[int, str] = {}
    for tag, tag_id in mapping.items():
        if type(tag_id) is not int:
            raise ConversionError(tag_to_id_path, f"id of tag {tag!r} is {tag_id!r}, not an integer")
        if tag_id in id_to_tag:
            raise ConversionError(
                tag_to_id_path, f"tags {id_to_tag[tag_id]!r} and {tag!r} share id {tag_id}"
            )
        if tag not in BOND_SPECIAL_TAGS and not is_bio_tag(tag):
            raise ConversionError(tag_to_id_path, f"tag {tag!r} is not O, B-X or I-X")
        id_to_tag[tag_id] = tag
    return id_to_tag


def read_bond_json(path: Path, tag_to_id_path: Path) -> Iterator[Sentence]:
    """Yield (words, BIO tags) for every sentence of a BOND JSON file, in file order.

    Empty sentences are yielded too, so that the position is the sentence index.
    """
    id_to_tag = read_bond_tag_map(tag_to_id_path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise ConversionError(path, f"top level is a JSON {type(data).__name__}, expected a list")
    if not data:
        raise ConversionError(path, "contains no sentences (empty list)")
    for index, item in enumerate(data):
        where = f"sentence {index}"
        if not isinstance(item, dict):
            raise ConversionError(path, f"is a JSON {type(item).__name__}, expected an object", where)
        for key in ("str_words", "tags"):
            if key not in item:
                raise ConversionError(path, f"missing key {key!r}", where)
            if not isinstance(item[key], list):
                raise ConversionError(path, f"{key!r} is not a list", where)
        words, tag_ids = item["str_words"], item["tags"]
        if len(words) != len(tag_ids):
            raise ConversionError(path, f"{len(words)} words but {len(tag_ids)} tags", where)
        tags: List[str] = []
        for i, tag_id in enumerate(tag_ids):
            tag = id_to_tag.get(tag_id) if type(tag_id) is int else None
            if tag is None:
                problem = f"unknown tag id {tag_id!r} at token {i} (not in {Path(tag_to_id_path).name})"
                raise ConversionError(path, problem, where)
            if tag in BOND_SPECIAL_TAGS:
                raise ConversionError(
                    path, f"tag id {tag_id} at token {i} maps to {tag}, not an entity tag", where
                )
            tags.append(tag)
        yield _check_words(path, where, words), tags


def _read_lines(path: Path) -> List[str]:
    """Split a non-empty text file into lines (a final newline ends the last line)."""
    text = _read_text(path)
    if not text.strip():
        raise ConversionError(path, "file is empty")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def read_roster(text_path: Path, label_path: Path) -> Iterator[Sentence]:
    """Yield (words, BIO tags) for every line of a RoSTER text/label file pair, in file order.

    Empty lines are yielded too, so that the position is the sentence index.
    """
    text_lines = _read_lines(text_path)
    label_lines = _read_lines(label_path)
    if len(text_lines) != len(label_lines):
        raise ConversionError(
            label_path,
            f"has {len(label_lines)} lines but {Path(text_path).name} has {len(text_lines)}",
        )
    for number, (text_line, label_line) in enumerate(zip(text_lines, label_lines), start=1):
        where = f"line {number}"
        words, tags = text_line.split(), label_line.split()
        if len(words) != len(tags):
            raise ConversionError(
                label_path,
                f"{len(tags)} labels but {Path(text_path).name} has {len(words)} tokens",
                where,
            )
        for i, tag in enumerate(tags):
            if not is_bio_tag(tag):
                raise ConversionError(
                    label_path, f"unknown label {tag!r} at token {i} (expected O, B-X or I-X)", where
                )
        yield words, tags


def _write_atomic(doc_bin: DocBin, output: Path) -> None:
    """Write `doc_bin` to a temporary file next to `output`, then move it into place."""
    tmp = output.with_name(f".{output.name}.{uuid.uuid4().hex}.tmp")
    try:
        data = doc_bin.to_bytes()
        with tmp.open("xb") as file_:
            file_.write(data)
            file_.flush()
            os.fsync(file_.fileno())
        os.replace(tmp, output)
    except OSError as err:
        raise ConversionError(output, f"cannot write output ({err})") from err
    finally:
        tmp.unlink(missing_ok=True)


def convert(
    input_format: str,
    inputs: Tuple[Path, Path],
    output: Path,
    dataset: str,
    split: str,
) -> ConversionStats:
    """Convert one split to a DocBin at `output`; return its counts.

    `inputs` is (json file, tag_to_id.json) for ``"bond"`` and (text file, label file)
    for ``"roster"``. Nothing is written unless the whole input is valid and holds at
    least one non-empty sentence.
    """
    if input_format == "bond":
        sentences = read_bond_json(*inputs)
    elif input_format == "roster":
        sentences = read_roster(*inputs)
    else:
        raise ValueError(f"unknown input format {input_format!r}, expected one of {FORMATS}")
    vocab = Vocab()
    doc_bin = DocBin(store_user_data=True)
    stats = ConversionStats()
    n_ents: Counter[str] = Counter()
    for index, (words, tags) in enumerate(sentences):
        if not words:
            stats.n_skipped_empty += 1
            continue
        tags, n_repaired = repair_bio(tags)
        doc = to_doc(vocab, words, tags, f"{dataset}:{split}:{index}")
        doc_bin.add(doc)
        stats.n_docs += 1
        stats.n_tokens += len(doc)
        stats.n_repaired += n_repaired
        n_ents.update(ent.label_ for ent in doc.ents)
    if stats.n_docs == 0:
        raise ConversionError(
            inputs[0], f"no documents: all {stats.n_skipped_empty} sentences are empty"
        )
    stats.n_ents = dict(sorted(n_ents.items()))
    _write_atomic(doc_bin, Path(output))
    logger.info(
        "%s:%s -> %s: %d docs, %d BIO tags repaired (I-X without B-X), %d empty sentences skipped",
        dataset, split, output, stats.n_docs, stats.n_repaired, stats.n_skipped_empty,
    )
    return stats


class DirResults(Dict[str, ConversionStats]):
    """Counts per converted split; `removed` lists the stale split files deleted from the
    output folder (splits the source no longer has)."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: List[Path] = []


def _make_dirs(folder: Path) -> List[Path]:
    """Create `folder` and its missing parents; return those created, deepest first."""
    chain = [folder, *folder.parents]
    created = chain[: next(i for i, path in enumerate(chain) if path.exists())]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _remove_dirs(created)
        raise ConversionError(folder, f"cannot create the output folder ({err})") from err
    return created


def _remove_dirs(created: Sequence[Path]) -> None:
    """Remove the folders `_make_dirs` created, deepest first, where they are still empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def _move_into_place(tmp: Path, out_dir: Path, names: Sequence[str], stale: Sequence[str]) -> List[Path]:
    """Move the files `names` from `tmp` into `out_dir` and delete the files `stale` there.

    The files replaced or deleted are first moved into ``tmp/previous`` and moved back if a
    step fails, so that `out_dir` holds either all the old files or all the new ones.
    Returns the stale files deleted.
    """
    backup = tmp / "previous"
    saved: List[str] = []
    placed: List[str] = []
    try:
        backup.mkdir()
        for name in [*names, *stale]:
            if (out_dir / name).exists():
                os.replace(out_dir / name, backup / name)
                saved.append(name)
        for name in names:
            os.replace(tmp / name, out_dir / name)
            placed.append(name)
    except OSError as err:
        problem = f"cannot move the converted files into place ({err})"
        try:
            for name in placed:
                (out_dir / name).unlink()
            for name in saved:
                os.replace(backup / name, out_dir / name)
        except OSError:
            raise ConversionError(out_dir, f"{problem}; the previous files are in {backup}") from err
        raise ConversionError(out_dir, problem) from err
    return [out_dir / name for name in stale if name in saved]


def _convert_dir(
    input_format: str,
    split_inputs: Dict[str, Tuple[Path, Path]],
    out_dir: Path,
    dataset: str,
    src_dir: Path,
) -> DirResults:
    """Convert each split whose sentence file (first input) exists; log and skip the others.

    Every split is written into a temporary folder beside `out_dir` and moved into place
    only once all have converted, so a failure leaves `out_dir` as it was. A split file in
    `out_dir` whose split the source lacks is stale and deleted (`DirResults.removed`).
    """
    if not any(inputs[0].exists() for inputs in split_inputs.values()):
        raise ConversionError(src_dir, f"no {input_format} split files found")
    existing = next(path for path in [out_dir, *out_dir.parents] if path.exists())
    if not existing.is_dir():
        raise ConversionError(existing, f"is a file, not a folder: cannot create the output folder {out_dir}")
    created = _make_dirs(out_dir.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as err:
        _remove_dirs(created)
        raise ConversionError(out_dir, f"cannot write beside the output folder ({err})") from err
    results = DirResults()
    done = False
    try:
        for split, inputs in split_inputs.items():
            if not inputs[0].exists():
                logger.warning("%s: no %s split (%s not found), skipped", dataset, split, inputs[0].name)
                continue
            results[split] = convert(input_format, inputs, tmp / f"{split}.spacy", dataset, split)
        created = _make_dirs(out_dir) + created
        names = [f"{split}.spacy" for split in results]
        stale = [f"{split}.spacy" for split in split_inputs if split not in results]
        results.removed = _move_into_place(tmp, out_dir, names, stale)
        done = True
    finally:
        if done or not any((tmp / "previous").glob("*")):  # else it holds the old files
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_dirs(created)
    for path in results.removed:
        logger.warning("%s: removed the stale %s (the source has no such split)", dataset, path)
    return results


def convert_bond_dir(src_dir: Path, out_dir: Path, dataset: str) -> DirResults:
    """Convert a BOND dataset folder ({train,dev,test}.json + tag_to_id.json) to {split}.spacy."""
    src_dir = Path(src_dir)
    tag_map = src_dir / BOND_TAG_MAP
    if not tag_map.exists():
        raise ConversionError(tag_map, "file not found")
    split_inputs = {split: (src_dir / f"{split}.json", tag_map) for split in SPLITS}
    return _convert_dir("bond", split_inputs, Path(out_dir), dataset, src_dir)


def convert_roster_dir(src_dir: Path, out_dir: Path, dataset: str) -> DirResults:
    """Convert a RoSTER data folder to {split}.spacy (train from distant labels only)."""
    src_dir = Path(src_dir)
    split_inputs = {
        split: (src_dir / text, src_dir / labels) for split, (text, labels) in ROSTER_FILES.items()
    }
    return _convert_dir("roster", split_inputs, Path(out_dir), dataset, src_dir)


def detect_format(src_dir: Path) -> str:
    """Guess the format of a dataset folder: ``"bond"`` or ``"roster"``."""
    src_dir = Path(src_dir)
    is_bond = (src_dir / BOND_TAG_MAP).exists()
    is_roster = any((src_dir / text).exists() for text, _ in ROSTER_FILES.values())
    if is_bond == is_roster:
        found = "both" if is_bond else "neither"
        raise ConversionError(
            src_dir,
            f"cannot detect the format: found {found} of {BOND_TAG_MAP} (bond) and "
            f"{ROSTER_FILES['train'][0]} etc. (roster); pass --format",
        )
    return "bond" if is_bond else "roster"
