"""Self-training: the frozen teacher and BOND's soft labels."""
import numpy
import pytest
import spacy

from spacy_bond_moe.em import doc_key
from spacy_bond_moe.tags import blank_mask
from spacy_bond_moe.teacher import (
    Teacher, build_hard_pseudo_labels_v1, build_soft_pseudo_labels_v1, class_frequencies,
    hard_labels, soft_labels,
)

from .conftest import make_examples, trf_tok2vec_config

CNN = {
    "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 32,
    "depth": 2, "embed_size": 300, "window_size": 1, "maxout_pieces": 2, "subword_features": True,
}


def test_soft_label_formula_on_fixed_tensor():
    p = numpy.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.25, 0.25]])
    f = class_frequencies(p)
    assert f.tolist() == pytest.approx([1.3, 1.25, 0.45])
    q, keep = soft_labels(p, f, power=2.0, threshold=0.7)
    # q_tc = (p_tc^2 / f_c) / sum_c' (p_tc'^2 / f_c'), by hand for the first row:
    row = numpy.array([0.36 / 1.3, 0.09 / 1.25, 0.01 / 0.45])
    assert q[0] == pytest.approx(row / row.sum())
    assert q.sum(axis=1) == pytest.approx([1.0, 1.0, 1.0])
    assert keep.tolist() == [True, True, False]  # max q: 0.746, 0.881, 0.504
    assert q[2].max() == pytest.approx((0.25 / 1.3) / (0.25 / 1.3 + 0.0625 / 1.25 + 0.0625 / 0.45))


def test_hard_labels():
    q, keep = hard_labels(numpy.array([[0.2, 0.8], [0.6, 0.4]]))
    assert q.tolist() == [[0.0, 1.0], [1.0, 0.0]] and keep.all()


def build(encoder: dict):
    nlp = spacy.blank("en")
    model = {"@architectures": "spacy-bond-moe.MoETagger.v1", "n_experts": 2, "tok2vec": encoder}
    ner = nlp.add_pipe("bond_moe_ner", config={"model": model})
    examples = make_examples(nlp, copies=2)
    optimizer = nlp.initialize(lambda: examples)
    return nlp, ner, examples, optimizer


@pytest.mark.parametrize("encoder", ["cnn", "trf"])
def test_teacher_frozen_then_equal_after_refresh(encoder, tiny_bert):
    nlp, ner, examples, optimizer = build(CNN if encoder == "cnn" else trf_tok2vec_config(str(tiny_bert)))
    optimizer.learn_rate = 0.01
    docs = [eg.predicted for eg in examples]
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    event = ner.snapshot_teacher(examples, nlp=nlp, step=3)
    assert event["n_docs"] == len(examples) and ner.teacher.active
    teacher_before = [p.copy() for p in ner.teacher.model.predict(docs)]
    assert all(numpy.allclose(a, b, atol=1e-6) for a, b in zip(teacher_before, ner.model.predict(docs)))
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    student = ner.model.predict(docs)
    teacher_after = ner.teacher.model.predict(docs)
    assert all(numpy.array_equal(a, b) for a, b in zip(teacher_before, teacher_after))
    assert not all(numpy.allclose(a, b, atol=1e-4) for a, b in zip(student, teacher_after))
    teacher_model = ner.teacher.model
    ner.snapshot_teacher(examples, nlp=nlp, step=8)
    assert ner.teacher.model is teacher_model  # refreshed in place
    refreshed = ner.teacher.model.predict(docs)
    assert all(numpy.allclose(a, b, atol=1e-6) for a, b in zip(student, refreshed))
    assert ner.teacher.age(10) == 2


def test_student_trains_on_teacher_targets():
    nlp, ner, examples, optimizer = build(CNN)
    for _ in range(10):
        nlp.update(examples, sgd=optimizer)
    ner.snapshot_teacher(examples, nlp=nlp, step=10)
    targets = ner.targets(examples)
    ner_teacher, ner.teacher = ner.teacher, Teacher(ner.teacher.labeller, ner.combine, ner.teacher.encode)
    distant = ner.targets(examples)
    ner.teacher = ner_teacher
    # Teacher targets are soft distributions with a confidence mask, not the distant one-hots.
    for (q, keep), (d, _) in zip(targets, distant):
        assert q.sum(axis=1) == pytest.approx(numpy.ones(len(q)), abs=1e-2)
        assert keep.dtype == bool and (q[keep].max(axis=1) > 0.9).all()
    assert any(not numpy.array_equal(q, d) for (q, _), (d, _) in zip(targets, distant))
    losses = {}
    nlp.update(examples, sgd=optimizer, losses=losses)
    assert losses["bond_moe_ner"] > 0


def test_unknown_docs_get_teacher_predictions_on_the_fly():
    """Documents outside the snapshot corpus get the teacher's labels, predicted then by the
    frozen teacher (not the student, not the distant labels)."""
    nlp, ner, examples, optimizer = build(CNN)
    for _ in range(10):
        nlp.update(examples, sgd=optimizer)
    distant = ner.targets(examples)
    ner.snapshot_teacher(examples[:2], nlp=nlp, step=0)
    assert len(ner.teacher.targets) == 2
    for _ in range(10):  # the student moves away from the teacher
        nlp.update(examples, sgd=optimizer)
    targets = ner.targets(examples)
    assert len(targets) == len(examples)
    teacher, labeller = ner.teacher, ner.teacher.labeller
    for (q, keep), (d, _), eg in zip(targets[2:], distant[2:], examples[2:]):
        doc = eg.predicted
        expected_q, expected_keep = labeller(ner.combine(teacher.model.predict([doc])[0]), teacher.freq)
        assert numpy.allclose(q, expected_q, atol=1e-6) and (keep == expected_keep).all()
        student_q, _ = labeller(ner.combine(ner.model.predict([doc])[0]), teacher.freq)
        assert not numpy.allclose(q, student_q, atol=1e-3)
        assert not numpy.allclose(q, d, atol=1e-3)
    cached_q, _ = teacher.targets[doc_key(examples[0].reference)]
    assert numpy.array_equal(targets[0][0], cached_q.astype("float32"))


def test_teacher_object_lifecycle():
    """Inactive until the first snapshot; class frequencies over the corpus; blank tokens
    never kept; hard labels keep every other token."""
    nlp, ner, examples, _ = build(CNN)
    teacher = Teacher(build_hard_pseudo_labels_v1(), ner.combine, ner.teacher.encode)
    assert not teacher.active and teacher.age(5) is None
    doc = nlp.make_doc("Paris is\n\nbig .")
    batches = [(["a", "b"], [examples[0].predicted, doc])]
    event = teacher.snapshot(ner.model, batches, len(ner.tags), step=4)
    assert teacher.active and teacher.age(9) == 5 and event["n_docs"] == 2
    n_visible = len(examples[0].predicted) + 4
    assert event["n_tokens"] == n_visible and event["kept_fraction"] == pytest.approx(1.0)
    mixture = ner.combine(ner.model.predict([doc])[0])
    assert teacher.freq.sum() == pytest.approx(
        ner.combine(ner.model.predict([examples[0].predicted])[0]).sum() + mixture[~blank_mask(doc)].sum(),
        rel=1e-5)
    q, keep = teacher.targets["b"]
    assert keep.tolist() == [True, True, False, True, True]
    soft = build_soft_pseudo_labels_v1(power=2.0, threshold=0.5)
    assert soft(mixture, teacher.freq)[0] == pytest.approx(soft_labels(mixture, teacher.freq, 2.0, 0.5)[0])


@pytest.mark.parametrize("args", [{"threshold": 1.5}, {"threshold": -0.1}, {"power": 0.0}])
def test_soft_pseudo_labels_reject_bad_values(args):
    with pytest.raises(ValueError, match="pseudo-label"):
        build_soft_pseudo_labels_v1(**args)
