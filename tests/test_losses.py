"""Losses: values and logit gradients against finite differences."""
import numpy
import pytest

import spacy
from spacy.util import registry
from thinc.api import Config

from spacy_bond_moe.losses import (
    build_cross_entropy_v1, build_cross_entropy_v2, build_gce_v1, build_gce_v2, expert_loss,
    generalized_cross_entropy, soft_cross_entropy,
)
from spacy_bond_moe.tags import capitalised_mask


def softmax(z):
    e = numpy.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numeric_grad(fn, z, eps=1e-6):
    grad = numpy.zeros_like(z)
    for idx in numpy.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


Z = numpy.array([[1.0, -0.5, 0.3], [0.2, 0.1, -1.0], [2.0, 0.0, 0.5]])
SOFT = numpy.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4]])
MASK = numpy.array([[1.0], [1.0], [0.0]])


def test_soft_cross_entropy_value_and_gradient():
    loss, grad = soft_cross_entropy(softmax(Z), SOFT, MASK)
    expected = -(SOFT[:2] * numpy.log(softmax(Z)[:2])).sum()
    assert loss == pytest.approx(expected, rel=1e-6)
    numeric = numeric_grad(lambda z: soft_cross_entropy(softmax(z), SOFT, MASK)[0], Z)
    assert numpy.allclose(grad, numeric, atol=1e-5)
    assert (grad[2] == 0).all()  # masked token


@pytest.mark.parametrize("q", [0.3, 0.7, 1.0])
def test_gce_gradient_and_limits(q):
    onehot = numpy.eye(3)[[0, 1, 2]]
    loss, grad = generalized_cross_entropy(softmax(Z), onehot, MASK, q)
    numeric = numeric_grad(lambda z: generalized_cross_entropy(softmax(z), onehot, MASK, q)[0], Z)
    assert numpy.allclose(grad, numeric, atol=1e-5)
    p = softmax(Z)
    assert loss == pytest.approx(((1 - p[[0, 1], [0, 1]] ** q) / q).sum(), rel=1e-5)


def test_gce_approaches_ce_for_small_q():
    onehot = numpy.eye(3)[[0, 1, 2]]
    ce, _ = soft_cross_entropy(softmax(Z), onehot, MASK)
    gce, _ = generalized_cross_entropy(softmax(Z), onehot, MASK, 1e-4)
    assert gce == pytest.approx(ce, rel=1e-3)


def test_expert_loss_only_touches_assigned_expert():
    probs = numpy.stack([softmax(Z), softmax(Z * 2), softmax(-Z)], axis=1)  # (n, K=3, C)
    loss, grad = expert_loss(probs, 1, SOFT, MASK)
    assert loss == pytest.approx(soft_cross_entropy(probs[:, 1], SOFT, MASK)[0])
    assert (grad[:, 0] == 0).all() and (grad[:, 2] == 0).all() and grad[:, 1].any()


@pytest.mark.parametrize("distant_loss", [build_cross_entropy_v1(), build_gce_v1(q=0.7)])
def test_shared_expert_loss_is_the_mean_over_experts(distant_loss):
    token_loss = distant_loss.token_loss
    logits = numpy.stack([Z, Z * 2, -Z], axis=1)  # (n, K=3, C)
    onehot = numpy.eye(3)[[0, 1, 2]]

    def shared(z):
        return expert_loss(softmax(z), None, onehot, MASK, token_loss)[0]

    loss, grad = expert_loss(softmax(logits), None, onehot, MASK, token_loss)
    each = [expert_loss(softmax(logits), k, onehot, MASK, token_loss)[0] for k in range(3)]
    assert loss == pytest.approx(sum(each) / 3)
    assert numpy.allclose(grad, numeric_grad(shared, logits), atol=1e-5)
    assert all(grad[:2, k].any() for k in range(3)) and (grad[2] == 0).all()


def test_o_drop_keeps_entity_tokens_and_draws_anew():
    loss = build_cross_entropy_v1(o_drop=0.5)
    ids = numpy.array([0] * 200 + [1] * 20)
    mask = numpy.ones(220, dtype=bool)
    first, second = loss.supervised(ids, mask), loss.supervised(ids, mask)
    assert first[200:].all() and 0.35 < first[:200].mean() < 0.65
    assert not numpy.array_equal(first, second)
    assert build_cross_entropy_v1().supervised(ids, mask) is mask
    for bad in (lambda: build_cross_entropy_v1(o_drop=1.0), lambda: build_gce_v1(q=0.0)):
        with pytest.raises(ValueError):
            bad()


def test_capitalised_mask():
    doc = spacy.blank("en")("The EU met Peter and BRUSSELS in london on Monday . He left")
    assert [t.text for t, m in zip(doc, capitalised_mask(doc)) if m] == ["EU", "Peter", "BRUSSELS", "Monday"]
    assert capitalised_mask(doc[:0].as_doc()).shape == (0,)


@pytest.mark.parametrize("build", [build_cross_entropy_v2, build_gce_v2])
def test_uncertain_o_leaves_capitalised_o_unsupervised(build):
    doc = spacy.blank("en")("The EU met Peter in london .")
    ids = numpy.array([0, 3, 0, 0, 0, 0, 0])  # "EU" labelled, "Peter" missed by the KB
    mask = numpy.ones(len(doc), dtype=bool)
    mask[6] = False  # already unsupervised stays so
    kept = build(uncertain_o="capitalised").supervised(ids, mask, doc)
    assert kept.tolist() == [True, True, True, False, True, True, False]
    assert build().supervised(ids, mask, doc) is mask  # "none" (the default) trusts every O
    with pytest.raises(ValueError, match="needs the doc"):
        build(uncertain_o="capitalised").supervised(ids, mask)
    # with O-drop on top, the capitalised O stays unsupervised on every draw
    drops = [build(o_drop=0.5, uncertain_o="capitalised").supervised(ids, mask, doc) for _ in range(5)]
    assert not any(d[3] for d in drops) and all(d[1] for d in drops)


def test_uncertain_o_choice_is_checked_by_the_config():
    cfg = Config().from_str('''
[loss]
@misc = "spacy-bond-moe.cross_entropy.v2"
uncertain_o = "titlecase"
''')
    with pytest.raises(Exception, match="capitalised"):
        registry.resolve(cfg)
    cfg["loss"]["uncertain_o"] = "capitalised"
    assert registry.resolve(cfg)["loss"].uncertain_o == "capitalised"


def test_proper_o_uses_the_corpus_casing():
    nlp = spacy.blank("en")
    corpus = [nlp("SOCCER - Results from Taunton"), nlp("soccer results are in"), nlp("in Taunton .")]
    loss = build_cross_entropy_v2(uncertain_o="proper")
    doc = corpus[0]
    ids, mask = numpy.zeros(len(doc), dtype="int64"), numpy.ones(len(doc), dtype=bool)
    with pytest.raises(ValueError, match="initialize"):
        loss.supervised(ids, mask, doc)
    loss.initialize(corpus)
    assert [t.text for t, m in zip(doc, loss.supervised(ids, mask, doc)) if not m] == ["Taunton"]
    # "soccer" is lower case in 1 of 2: with max_lower_share 0.5 it is a name too
    loose = build_cross_entropy_v2(uncertain_o="proper", max_lower_share=0.5)
    loose.load_state(loss.state())  # the table travels with the training state
    assert loose.lower_share == loss.lower_share
    assert [t.text for t, m in zip(doc, loose.supervised(ids, mask, doc)) if not m] == [
        "SOCCER", "Results", "Taunton"]
    with pytest.raises(ValueError, match="max_lower_share"):
        build_gce_v2(uncertain_o="proper", max_lower_share=1.0)
