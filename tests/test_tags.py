"""BIO tags, constrained decoding and the chunker."""
import numpy
import spacy
from spacy.training import Example

from spacy_bond_moe.tags import (
    MISSING, example_tag_ids, make_tags, tags_to_spans, transition_mask, viterbi_decode,
)

TAGS = make_tags(["LOC", "PER"])  # O B-LOC I-LOC B-PER I-PER


def decode(rows):
    start, trans = transition_mask(TAGS)
    return [TAGS[i] for i in viterbi_decode(numpy.log(numpy.asarray(rows) + 1e-9), start, trans)]


def test_make_tags():
    assert TAGS == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_viterbi_never_starts_with_I_and_never_I_after_O():
    #        O    B-L  I-L  B-P  I-P
    rows = [[0.1, 0.1, 0.6, 0.1, 0.1],   # argmax I-LOC at start: invalid
            [0.5, 0.1, 0.1, 0.1, 0.2],
            [0.3, 0.1, 0.1, 0.1, 0.4]]   # argmax I-PER after O: invalid
    tags = decode(rows)
    assert tags[0] != "I-LOC" and not tags[0].startswith("I-")
    for prev, cur in zip(tags, tags[1:]):
        if cur.startswith("I-"):
            assert prev in (f"B-{cur[2:]}", cur)


def test_viterbi_no_type_switch_inside_entity():
    rows = [[0.0, 0.0, 0.0, 0.9, 0.1], [0.1, 0.0, 0.5, 0.0, 0.4]]  # B-PER then argmax I-LOC
    assert decode(rows) == ["B-PER", "I-PER"]


def test_viterbi_keeps_valid_argmax():
    rows = [[0.0, 0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.9, 0.1, 0.0], [0.9, 0.0, 0.1, 0.0, 0.0]]
    assert decode(rows) == ["B-LOC", "I-LOC", "O"]


def test_viterbi_empty():
    start, trans = transition_mask(TAGS)
    assert viterbi_decode(numpy.zeros((0, 5)), start, trans).shape == (0,)


def test_chunker_cases():
    doc = spacy.blank("en").make_doc("a b c d e")
    ids = {t: i for i, t in enumerate(TAGS)}
    def spans(tags):
        return [(s.start, s.end, s.label_) for s in tags_to_spans(doc, [ids[t] for t in tags], TAGS)]
    assert spans(["O", "I-LOC", "I-LOC", "O", "O"]) == [(1, 3, "LOC")]        # I after O starts
    assert spans(["B-LOC", "I-PER", "O", "O", "O"]) == [(0, 1, "LOC"), (1, 2, "PER")]
    assert spans(["O", "O", "O", "B-PER", "I-PER"]) == [(3, 5, "PER")]        # trailing entity
    assert spans(["B-PER", "B-PER", "O", "O", "O"]) == [(0, 1, "PER"), (1, 2, "PER")]


def test_example_tag_ids_missing_and_unknown_labels():
    nlp = spacy.blank("en")
    ref = nlp.make_doc("Bob visited Paris in May")
    ref.set_ents([ref.char_span(0, 3, label="PER"), ref.char_span(24 - 3 + 0, 24, label="DATE")],
                 default="missing")
    ref.set_ents([ref.char_span(12, 17, label="LOC")], default="unmodified")
    ids = example_tag_ids(Example(nlp.make_doc(ref.text), ref), {t: i for i, t in enumerate(TAGS)})
    # Bob=B-PER, visited=missing, Paris=B-LOC, in=missing, May=DATE (not a label) -> missing
    assert ids.tolist() == [3, MISSING, 1, MISSING, MISSING]
