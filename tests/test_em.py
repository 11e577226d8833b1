"""Hard-EM and fair assignment: Sinkhorn, balanced rounding, doc keys, expert separation."""
import itertools
import random

import numpy
import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example

from spacy_bond_moe.callbacks import create_em_schedule
from spacy_bond_moe.losses import expert_loss
from spacy_bond_moe.em import (
    DOC_ID_KEY, assign, balanced_random, doc_key, hash_expert, responsibilities, round_plan,
    sinkhorn,
)

from .conftest import cnn_moe_model, make_doc


def skewed_costs(n_docs=600, n_experts=3, seed=0):
    rng = numpy.random.default_rng(seed)
    costs = rng.uniform(0.5, 1.5, size=(n_docs, n_experts))
    costs[:, 0] -= 0.4  # expert 0 fits almost every document best
    return costs


def test_sinkhorn_marginals_within_tolerance():
    costs = skewed_costs()
    result = sinkhorn(costs, lam=0.1, max_iter=500, tol=1e-8)
    plan = numpy.exp(result.plan_log)
    assert result.residual < 1e-8
    assert numpy.allclose(plan.sum(axis=1), 1 / costs.shape[0], atol=1e-9)
    assert numpy.allclose(plan.sum(axis=0), 1 / costs.shape[1], atol=1e-8)


def test_sinkhorn_is_stable_for_tiny_lambda():
    result = sinkhorn(skewed_costs() * 100, lam=0.01, max_iter=50)
    assert numpy.isfinite(result.plan_log).all()


def test_balanced_argmax_on_skewed_matrix():
    costs = skewed_costs()
    plain, _ = assign(costs, fair=False)
    assert numpy.bincount(plain, minlength=3)[0] > 0.6 * len(costs)  # skewed without fairness
    fair, residual = assign(costs, fair=True)
    loads = numpy.bincount(fair, minlength=3)
    assert loads.max() - loads.min() <= 1 and residual < 1e-6


def test_fair_assignment_keeps_clear_preferences():
    """Documents with a strong, distinct preference keep their best expert."""
    rng = numpy.random.default_rng(1)
    best = numpy.arange(300) % 3
    costs = rng.uniform(1.0, 1.1, size=(300, 3))
    costs[numpy.arange(300), best] -= 0.8
    costs[:, 1] -= 0.5  # a uniform advantage must not steal the others' documents
    experts, _ = assign(costs, fair=True)
    assert (experts == best).mean() > 0.99


def test_round_plan_respects_capacity():
    plan = numpy.log(numpy.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]))
    assert sorted(numpy.bincount(round_plan(plan)).tolist()) == [2, 2]
    assert round_plan(plan)[:2].tolist() == [0, 0]


def test_balanced_random_and_hash_expert():
    experts = balanced_random(10, 3, seed=4)
    assert sorted(numpy.bincount(experts).tolist()) == [3, 3, 4]
    assert hash_expert("doc-7", 3) == hash_expert("doc-7", 3)
    assert {hash_expert(f"d{i}", 3) for i in range(50)} == {0, 1, 2}


def test_doc_key_stable_across_docbin(tmp_path):
    nlp = spacy.blank("en")
    with_id = make_doc(nlp, "Paris is big .", [(0, 5, "LOC")], "webpage:train:3")
    without_id = nlp.make_doc("Rome too .")
    DocBin(docs=[with_id, without_id], store_user_data=True).to_disk(tmp_path / "x.spacy")
    docs = list(DocBin().from_disk(tmp_path / "x.spacy").get_docs(nlp.vocab))
    assert doc_key(docs[0]) == "webpage:train:3" == with_id.user_data[DOC_ID_KEY]
    assert doc_key(docs[1]) == doc_key(without_id) and doc_key(docs[1]).startswith("text:")


NAMES = ["Paris", "Jordan", "Florence", "Sydney", "Georgia", "Austin", "Victoria", "Madison"]
TEMPLATES = ["I saw {} , {} and {} yesterday .", "{} is near {} and {} ."]


def conflicting_groups(nlp, n_docs: int = 40, seed: int = 0):
    """Two labelers annotate the same names: group A types every name LOC, group B PER.

    Each document mentions several names, so a labeler's convention is a property of the
    whole document (what document-level EM is for), not of one name.
    """
    rng = random.Random(seed)
    examples, groups = [], []
    for group, label in (("A", "LOC"), ("B", "PER")):
        for i in range(n_docs):
            template = TEMPLATES[i % len(TEMPLATES)]
            names = rng.sample(NAMES, template.count("{}"))
            text, ents = "", []
            for piece, name in itertools.zip_longest(template.split("{}"), names):
                text += piece
                if name is not None:
                    ents.append((len(text), len(text) + len(name), label))
                    text += name
            ref = make_doc(nlp, text, ents, f"{group}:{i}")
            examples.append(Example(nlp.make_doc(text), ref))
            groups.append(group)
    return examples, groups


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_em_separates_conflicting_labelers(seed):
    spacy.util.fix_random_seed(seed)
    nlp = spacy.blank("en")
    model = cnn_moe_model(2, width=32, depth=2, embed_size=500)
    ner = nlp.add_pipe("bond_moe_ner", config={"model": model})
    examples, groups = conflicting_groups(nlp, seed=seed)
    optimizer = nlp.initialize(lambda: examples)
    rng = random.Random(seed)
    step = 0
    for epoch in range(8):
        batch = examples[:]
        rng.shuffle(batch)
        for i in range(0, len(batch), 8):
            # E-step every half epoch: with one E-step per epoch the experts can memorise
            # their random initial documents first (seed 7 then stays at purity 0.5).
            if step > 0 and step % 5 == 0:
                event = ner.reassign_experts(examples, nlp=nlp, step=step)
                assert max(event["loads"]) - min(event["loads"]) <= 1
            nlp.update(batch[i : i + 8], sgd=optimizer, drop=0.1)
            step += 1
    experts = numpy.array([ner.expert_of(doc_key(eg.reference)) for eg in examples])
    is_a = numpy.array([g == "A" for g in groups])
    purity = max((experts[is_a] == 0).mean() + (experts[~is_a] == 1).mean(),
                 (experts[is_a] == 1).mean() + (experts[~is_a] == 0).mean()) / 2
    assert purity >= 0.9
    # Each expert predicts its own group's convention for the names.
    expert_a = int(numpy.bincount(experts[is_a]).argmax())
    expert_b = 1 - expert_a
    tags = ner.tags
    probs = ner.predict([eg.predicted for eg in examples])
    hits = {"A": [], "B": []}
    for eg, p, group in zip(examples, probs, groups):
        expert, label = (expert_a, "LOC") if group == "A" else (expert_b, "PER")
        for ent in eg.reference.ents:
            hits[group].append(tags[int(p[ent.start, expert].argmax())] == f"B-{label}")
    assert numpy.mean(hits["A"]) >= 0.9 and numpy.mean(hits["B"]) >= 0.9


def test_entity_free_documents_fill_one_expert_unless_kept_out():
    """Documents whose targets are all "O" are cheapest under the same expert: the fair
    E-step then gives that expert almost only them. `active` keeps them out of the
    scoring and deals them evenly."""
    rng = numpy.random.default_rng(3)
    n_ent, n_empty = 150, 150
    costs = rng.uniform(0.8, 1.2, size=(n_ent + n_empty, 3))
    costs[n_ent:] = rng.uniform(0.35, 0.45, size=(n_empty, 3))
    costs[n_ent:, 0] = 0.05  # the "O" expert fits entity-free documents best
    empty = numpy.arange(n_ent + n_empty) >= n_ent
    experts, _ = assign(costs, fair=True)
    assert (experts[empty] == 0).sum() >= 95  # expert 0 is (nearly) all entity-free documents
    assert (experts[~empty] == 0).sum() <= 5
    experts, residual = assign(costs, fair=True, active=~empty)
    assert numpy.bincount(experts[empty], minlength=3).tolist() == [50, 50, 50]
    assert numpy.bincount(experts[~empty], minlength=3).tolist() == [50, 50, 50]
    assert residual < 1e-6
    experts, _ = assign(costs, fair=False, active=~empty)
    assert numpy.bincount(experts[empty], minlength=3).tolist() == [50, 50, 50]
    experts, _ = assign(costs, fair=True, active=numpy.zeros(len(costs), dtype=bool))
    assert numpy.bincount(experts, minlength=3).tolist() == [100, 100, 100]


def entity_and_empty_examples(nlp, n_docs: int = 24):
    examples = []
    for i in range(n_docs):
        name = NAMES[i % len(NAMES)]
        text = f"{name} went home ."
        examples.append(Example(nlp.make_doc(text), make_doc(nlp, text, [(0, len(name), "PER")], f"e{i}")))
        text = f"nothing happened on day {i} ."
        examples.append(Example(nlp.make_doc(text), make_doc(nlp, text, [], f"o{i}")))
    return examples


def test_estep_scope_entities_spreads_entity_free_documents():
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("bond_moe_ner", config={"model": cnn_moe_model(3), "estep_scope": "entities"})
    examples = entity_and_empty_examples(nlp)
    nlp.initialize(lambda: examples)
    event = ner.reassign_experts(examples, nlp=nlp, step=1)
    assert event["n_docs"] == 48 and event["n_docs_with_entities"] == 24
    for prefix in ("e", "o"):
        loads = numpy.bincount([ner.expert_of(f"{prefix}{i}") for i in range(24)], minlength=3)
        assert loads.tolist() == [8, 8, 8]


def test_estep_scope_rejects_unknown_value():
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="estep_scope"):
        nlp.add_pipe("bond_moe_ner", config={"estep_scope": "docs"})


def test_shared_warmup_trains_every_expert_and_defers_the_estep():
    """During `shared_warmup` updates every document's loss reaches all K experts and
    E-steps are skipped; afterwards each document trains its assigned expert only."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("bond_moe_ner", config={"model": cnn_moe_model(3), "shared_warmup": 2})
    examples = entity_and_empty_examples(nlp, n_docs=6)
    optimizer = nlp.initialize(lambda: examples)
    schedule = create_em_schedule("bond_moe_ner", lambda _: examples, 1, 0, 0)

    def touched_experts(eg):
        scores = ner.model.predict([eg.predicted])
        _, grads = ner.get_loss([eg], scores)
        return [k for k in range(3) if grads[0][:, k].any()]

    for step in range(4):
        schedule(nlp, {"step": step})
        if step < 2:
            initial = dict(ner._assignments)  # the balanced random routing of initialize()
            assert ner.in_shared_warmup
            assert ner.reassign_experts(examples, nlp=nlp, step=step) == {}
            assert ner._assignments == initial
            assert touched_experts(examples[0]) == [0, 1, 2]
        else:
            assert not ner.in_shared_warmup
            assert touched_experts(examples[0]) == [ner.expert_of(doc_key(examples[0].reference))]
        nlp.update(examples, sgd=optimizer)
    estep_steps = [e["step"] for e in ner.pop_events() if e["event"] == "estep"]
    assert estep_steps == [2, 3]


def test_shared_warmup_rejects_negative_value():
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="shared_warmup"):
        nlp.add_pipe("bond_moe_ner", config={"shared_warmup": -1})


@pytest.mark.parametrize("fair", [True, False])
def test_responsibilities_rows_and_balance(fair):
    costs = skewed_costs(n_docs=300)
    weights = responsibilities(costs, fair=fair, lam=0.1)
    assert weights.shape == (300, 3) and numpy.allclose(weights.sum(axis=1), 1.0)
    share = weights.mean(axis=0)
    if fair:  # Sinkhorn: every expert holds a third of the mass
        assert numpy.allclose(share, 1 / 3, atol=1e-5)
    else:  # softmax of the costs: expert 0's uniform advantage takes most of it
        assert share[0] > 0.6
    hard = assign(costs, fair=fair)[0]
    assert (weights.argmax(axis=1) == hard).mean() > 0.9
    spread = responsibilities(costs, fair=fair, active=numpy.arange(300) < 100)
    assert numpy.allclose(spread[100:], 1 / 3)


def test_soft_m_step_spreads_each_document_over_the_experts():
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("bond_moe_ner", config={"model": cnn_moe_model(3), "m_step": "soft",
                                               "sinkhorn_lambda": 10.0})
    examples = entity_and_empty_examples(nlp, n_docs=6)
    nlp.initialize(lambda: examples)
    eg = examples[0]
    _, grads = ner.get_loss([eg], ner.model.predict([eg.predicted]))
    assert sum(bool(grads[0][:, k].any()) for k in range(3)) == 1  # before any E-step: routed
    event = ner.reassign_experts(examples, nlp=nlp, step=1)
    assert 1 / 3 <= event["mean_max_responsibility"] < 0.5  # a large lambda: nearly uniform
    scores = ner.model.predict([eg.predicted])
    _, grads = ner.get_loss([eg], scores)
    weights = ner._responsibilities[doc_key(eg.reference)]
    q, mask = ner.targets([eg])[0]
    mask_arr = mask.astype("float32")[:, None]
    expected = sum(w * expert_loss(scores[0], k, q, mask_arr)[1] for k, w in enumerate(weights))
    assert numpy.allclose(grads[0], expected / mask.sum(), atol=1e-7)
    assert all(grads[0][:, k].any() for k in range(3))


def test_m_step_rejects_unknown_value():
    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match="m_step"):
        nlp.add_pipe("bond_moe_ner", config={"m_step": "average"})
