"""Self-training: the frozen teacher and BOND's soft labels."""
import numpy
import pytest
import spacy

from spacy_bond_moe.teacher import class_frequencies, hard_labels, soft_labels

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
    assert event["n_docs"] == len(examples) and ner.teacher is not None
    teacher_before = [p.copy() for p in ner.teacher.predict(docs)]
    assert all(numpy.allclose(a, b, atol=1e-6) for a, b in zip(teacher_before, ner.model.predict(docs)))
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    student = ner.model.predict(docs)
    teacher_after = ner.teacher.predict(docs)
    assert all(numpy.array_equal(a, b) for a, b in zip(teacher_before, teacher_after))
    assert not all(numpy.allclose(a, b, atol=1e-4) for a, b in zip(student, teacher_after))
    teacher_obj = ner.teacher
    ner.snapshot_teacher(examples, nlp=nlp, step=8)
    assert ner.teacher is teacher_obj  # refreshed in place
    refreshed = ner.teacher.predict(docs)
    assert all(numpy.allclose(a, b, atol=1e-6) for a, b in zip(student, refreshed))
    assert ner.teacher_age(10) == 2


def test_student_trains_on_teacher_targets():
    nlp, ner, examples, optimizer = build(CNN)
    for _ in range(10):
        nlp.update(examples, sgd=optimizer)
    ner.snapshot_teacher(examples, nlp=nlp, step=10)
    targets = ner.targets(examples)
    distant = []
    ner_teacher, ner._teacher = ner._teacher, None
    distant = ner.targets(examples)
    ner._teacher = ner_teacher
    # Teacher targets are soft distributions with a confidence mask, not the distant one-hots.
    for (q, keep), (d, _) in zip(targets, distant):
        assert q.sum(axis=1) == pytest.approx(numpy.ones(len(q)), abs=1e-2)
        assert keep.dtype == bool and (q[keep].max(axis=1) > 0.9).all()
    assert any(not numpy.array_equal(q, d) for (q, _), (d, _) in zip(targets, distant))
    losses = {}
    nlp.update(examples, sgd=optimizer, losses=losses)
    assert losses["bond_moe_ner"] > 0


def test_unknown_docs_get_teacher_predictions_on_the_fly():
    nlp, ner, examples, optimizer = build(CNN)
    ner.snapshot_teacher(examples[:2], nlp=nlp, step=0)
    assert len(ner._teacher_targets) == 2
    targets = ner.targets(examples)
    assert len(targets) == len(examples)
    assert all(q.shape == (len(eg.predicted), len(ner.tags)) for (q, _), eg in zip(targets, examples))
