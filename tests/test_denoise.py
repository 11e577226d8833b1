"""RoSTER's noisy-label removal: `spacy-bond-moe.confidence_filter.v1`, the component's
`filter_labels` and the schedule's `filter_every`."""
import numpy
import pytest
import spacy
from spacy.training import Example
from spacy.util import registry
from thinc.api import ConfigValidationError

from spacy_bond_moe.callbacks import create_em_schedule_v3
from spacy_bond_moe.denoise import build_confidence_filter_v1, type_groups
from spacy_bond_moe.em import doc_key
from spacy_bond_moe.tags import MISSING

from .conftest import cnn_moe_model, make_doc

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_type_groups_join_b_and_i():
    assert type_groups(TAGS) == ["O", "PER", "PER", "LOC", "LOC"]


def test_confidence_filter_keeps_labels_whose_type_the_model_believes():
    probs = numpy.array([
        [0.5, 0.5, 0.0, 0.0, 0.0],  # labelled O, p(O) = 0.5: removed (a missed entity?)
        [0.1, 0.4, 0.4, 0.1, 0.0],  # labelled B-PER, p(PER) = 0.8 (B/I confusion): kept
        [0.8, 0.1, 0.0, 0.1, 0.0],  # labelled B-LOC, p(LOC) = 0.1: removed
        [0.9, 0.1, 0.0, 0.0, 0.0],  # no label: never kept
        [0.9, 0.0, 0.0, 0.1, 0.0],  # labelled O, p(O) = 0.9: kept
    ], dtype="float32")
    ids = numpy.array([0, 1, 3, MISSING, 0])
    result = build_confidence_filter_v1(threshold=0.7, max_removed=1.0)([probs], [ids], TAGS)
    assert result["keep"][0].tolist() == [False, True, False, False, True]
    assert result["removed"] == pytest.approx({"O": 0.5, "PER": 0.0, "LOC": 1.0})
    assert result["reset"] == []
    # A type losing more than max_removed of its labels keeps them all (RoSTER's reset).
    result = build_confidence_filter_v1(threshold=0.7, max_removed=0.9)([probs], [ids], TAGS)
    assert result["keep"][0].tolist() == [False, True, True, False, True]
    assert result["reset"] == ["LOC"] and result["removed"]["LOC"] == 0.0
    # remove = "o": only distant O labels go (the B-LOC label stays whatever the model says).
    result = build_confidence_filter_v1(threshold=0.7, max_removed=1.0, remove="o")([probs], [ids], TAGS)
    assert result["keep"][0].tolist() == [False, True, True, False, True]
    assert result["removed"] == pytest.approx({"O": 0.5, "PER": 0.0, "LOC": 0.0})


def test_confidence_filter_empty_docs_and_bad_values():
    result = build_confidence_filter_v1()([numpy.zeros((0, 5), "float32")], [numpy.zeros((0,), int)], TAGS)
    assert result["keep"][0].shape == (0,) and result["removed"] == {}
    with pytest.raises(ValueError, match="threshold must be in"):
        build_confidence_filter_v1(threshold=1.0)
    with pytest.raises(ValueError, match="max_removed must be in"):
        build_confidence_filter_v1(max_removed=1.5)
    config = {"x": {"@misc": "spacy-bond-moe.confidence_filter.v1", "threshold": 0.8}}
    assert registry.resolve(config)["x"].threshold == 0.8
    config["x"]["remove"] = "entities"
    with pytest.raises(ConfigValidationError, match="remove"):
        registry.resolve(config)


def _pipeline(label_filter=True):
    nlp = spacy.blank("en")
    config = {"model": cnn_moe_model(1)}
    if label_filter:
        config["label_filter"] = {"@misc": "spacy-bond-moe.confidence_filter.v1", "threshold": 0.7}
    ner = nlp.add_pipe("bond_moe_ner", config=config)
    examples = []
    for i, name in enumerate(["Mary", "John", "Anna", "Paul"] * 2):
        text = f"{name} met Rome today ."
        ref = make_doc(nlp, text, [(0, len(name), "PER")], f"d{i}")
        examples.append(Example(nlp.make_doc(text), ref))
    nlp.initialize(lambda: examples)
    return nlp, ner, examples


def test_filter_labels_drops_contradicted_labels_from_stage_one_targets():
    nlp, ner, examples = _pipeline()
    before = [mask.copy() for _, mask in ner.targets(examples)]
    # A model that is sure every token is O contradicts every distant PER label ...
    o_only = [numpy.tile(numpy.eye(len(ner.tags), dtype="float32")[0], (len(eg.predicted), 1, 1))
              for eg in examples]
    ner.predict = lambda docs: o_only[: len(docs)]
    event = ner.filter_labels(examples, nlp=nlp, step=7)
    # ... so all of PER would go: more than max_removed (0.9), so PER is kept whole; O stays.
    assert event["reset_types"] == ["PER"] and event["removed_fraction"] == 0.0
    assert [m.tolist() for _, m in ner.targets(examples)] == [b.tolist() for b in before]
    # A model unsure of "Rome" (p(O) = 0.5) removes that O label, and only it.
    unsure = []
    for eg in examples:
        p = numpy.tile(numpy.eye(len(ner.tags), dtype="float32")[0], (len(eg.predicted), 1, 1))
        p[0, 0] = numpy.eye(len(ner.tags))[ner.tags.index("B-PER")]
        p[2, 0, 0] = p[2, 0, ner.tags.index("B-PER")] = 0.5
        unsure.append(p)
    ner.predict = lambda docs: unsure[: len(docs)]
    event = ner.filter_labels(examples, nlp=nlp, step=9)
    assert event["event"] == "label_filter" and event["step"] == 9
    assert event["removed_fraction"] == pytest.approx(1 / 5)
    assert event["removed_per_type"] == pytest.approx({"O": 0.25, "PER": 0.0})
    for (_, mask), b in zip(ner.targets(examples), before):
        assert mask.tolist() == [b[0], b[1], False, b[3], b[4]]
    assert set(ner.kept_labels) == {doc_key(eg.reference) for eg in examples}
    assert [e["event"] for e in ner.pop_events()] == ["label_filter", "label_filter"]


def test_filter_every_needs_a_label_filter():
    nlp, ner, examples = _pipeline(label_filter=False)
    schedule = create_em_schedule_v3("bond_moe_ner", lambda _: examples, 0, 0, 0, filter_every=2)
    schedule(nlp, {"step": 0})
    with pytest.raises(ValueError, match="filter_every > 0 needs a label_filter"):
        schedule(nlp, {"step": 2})


def test_schedule_filters_in_stage_one_only():
    nlp, ner, examples = _pipeline()
    schedule = create_em_schedule_v3("bond_moe_ner", lambda _: examples, 0, 5, 0, filter_every=2)
    for step in range(9):
        schedule(nlp, {"step": step})
    assert [(e["event"], e["step"]) for e in ner.pop_events()] == [
        ("label_filter", 2), ("label_filter", 4), ("teacher", 5)]
    with pytest.raises(ValueError, match="filter_every must be an integer >= 0"):
        create_em_schedule_v3("bond_moe_ner", lambda _: examples, 0, 5, 0, filter_every=-1)
