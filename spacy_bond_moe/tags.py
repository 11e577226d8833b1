"""BIO tag sets, per-token training targets and constrained (valid-BIO) decoding."""
import unicodedata
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.attrs import IS_SPACE
from spacy.tokens import Doc, Span
from spacy.training import Example

MISSING = -1
FORBIDDEN = -1e9  # the score of a move that valid BIO does not allow


def make_tags(labels: Iterable[str]) -> List[str]:
    """BIO tag list for entity labels: "O" first, then B-/I- per label.

    labels (Iterable[str]): The entity types.
    RETURNS (List[str]): The tags, index = class id.
    """
    tags = ["O"]
    for label in labels:
        tags.extend((f"B-{label}", f"I-{label}"))
    return tags


def blank_mask(doc: Doc) -> numpy.ndarray:
    """(n_tokens,) bool: which tokens have no visible character: spaCy's whitespace
    tokens (line breaks, runs of spaces, tabs) and tokens of control or format characters
    only (such as U+200B). They are never encoded, supervised or part of an entity."""
    if len(doc) == 0:
        return numpy.zeros((0,), dtype=bool)
    mask = doc.to_array(IS_SPACE).astype(bool)
    if not doc.text.isprintable():  # else no token can be invisible
        for i, token in enumerate(doc):
            if not mask[i] and not token.text.isprintable():
                mask[i] = all(c.isspace() or unicodedata.category(c)[0] == "C" for c in token.text)
    return mask


def capitalised_mask(doc: Doc) -> numpy.ndarray:
    """(n_tokens,) bool: tokens that start with an upper-case letter and are not stop words
    ("EU", "Taunton", "BRUSSELS"; not "The", "He"). A knowledge base misses names, and
    names are capitalised: a distant "O" on such a token is weak evidence."""
    return numpy.fromiter(
        (token.text[:1].isupper() and not token.is_stop for token in doc), dtype=bool, count=len(doc)
    )


def example_tag_ids(example: Example, tag_ids: dict) -> numpy.ndarray:
    """Gold BIO class ids on the predicted tokenisation; MISSING where unknown.

    Unknown means: the reference marks the token as missing, alignment failed, the
    entity type is not one of the component's labels, or the token is blank (`blank_mask`).
    """
    biluo = example.get_aligned_ner()
    ids = numpy.full((len(biluo),), MISSING, dtype="int64")
    blank = blank_mask(example.predicted)
    for i, tag in enumerate(biluo):
        if tag is None or tag == "-" or blank[i]:
            continue
        if tag == "O":
            ids[i] = 0
            continue
        prefix, label = tag.split("-", 1)
        bio = "B" if prefix in ("B", "U") else "I"
        ids[i] = tag_ids.get(f"{bio}-{label}", MISSING)
    return ids


def transition_mask(tags: Sequence[str]) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """Allowed-transition scores for valid BIO: I-X only after B-X or I-X.

    RETURNS (Tuple[ndarray, ndarray]): start scores (C,) and transition scores (C, C)
        with 0 for allowed and a large negative value for forbidden moves.
    """
    n = len(tags)
    start = numpy.zeros((n,), dtype="float32")
    trans = numpy.zeros((n, n), dtype="float32")
    for j, tag in enumerate(tags):
        if not tag.startswith("I-"):
            continue
        start[j] = FORBIDDEN
        label = tag[2:]
        for i, prev in enumerate(tags):
            if prev not in (f"B-{label}", f"I-{label}"):
                trans[i, j] = FORBIDDEN
    return start, trans


def viterbi_decode(
    log_probs: numpy.ndarray, start: numpy.ndarray, trans: numpy.ndarray
) -> numpy.ndarray:
    """Most probable tag sequence under the BIO constraints.

    log_probs (ndarray): (n_tokens, C) log probabilities.
    RETURNS (ndarray): (n_tokens,) class ids forming valid BIO.
    """
    n_tokens, n_tags = log_probs.shape
    if n_tokens == 0:
        return numpy.zeros((0,), dtype="int64")
    score = start + log_probs[0]
    back = numpy.zeros((n_tokens, n_tags), dtype="int64")
    for t in range(1, n_tokens):
        cand = score[:, None] + trans
        back[t] = cand.argmax(axis=0)
        score = cand[back[t], numpy.arange(n_tags)] + log_probs[t]
    path = numpy.zeros((n_tokens,), dtype="int64")
    path[-1] = int(score.argmax())
    for t in range(n_tokens - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def tags_to_spans(
    doc: Doc, tag_ids: Sequence[int], tags: Sequence[str]
) -> List[Span]:
    """Entity spans of a tag-id sequence (lenient chunker: I-X after O starts X)."""
    spans: List[Span] = []
    start: Optional[int] = None
    label = ""
    for i, tag_id in enumerate(list(tag_ids) + [0]):
        tag = tags[tag_id] if i < len(tag_ids) else "O"
        prefix, _, tag_label = tag.partition("-")
        continues = start is not None and prefix == "I" and tag_label == label
        if start is not None and not continues:
            spans.append(Span(doc, start, i, label=label))
            start = None
        if prefix in ("B", "I") and not continues:
            start, label = i, tag_label
    return spans
