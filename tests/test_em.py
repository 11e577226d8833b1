"""Hard-EM and fair assignment: Sinkhorn, balanced rounding, the assigners and the router,
doc keys, expert separation, the schedule's shared stage I."""
import itertools
import random

import numpy
import pytest
import spacy
from spacy.tokens import DocBin
from spacy.training import Example

from spacy.util import registry
from thinc.api import ConfigValidationError

from spacy_bond_moe.callbacks import create_em_schedule_v2
from spacy_bond_moe.em import (
    DOC_ID_KEY, Router, balanced_random, build_argmax_assigner_v1, build_sinkhorn_assigner_v1,
    doc_key, hash_expert, round_plan, sinkhorn,
)
from spacy_bond_moe.losses import expert_loss

from .conftest import cnn_moe_model, make_doc


FAIR = build_sinkhorn_assigner_v1()
ARGMAX = build_argmax_assigner_v1()


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
    plain = ARGMAX(costs).experts
    assert numpy.bincount(plain, minlength=3)[0] > 0.6 * len(costs)  # skewed without fairness
    result = FAIR(costs)
    fair, residual = result.experts, result.residual
    loads = numpy.bincount(fair, minlength=3)
    assert loads.max() - loads.min() <= 1 and residual < 1e-6


def test_fair_assignment_keeps_clear_preferences():
    """Documents with a strong, distinct preference keep their best expert."""
    rng = numpy.random.default_rng(1)
    best = numpy.arange(300) % 3
    costs = rng.uniform(1.0, 1.1, size=(300, 3))
    costs[numpy.arange(300), best] -= 0.8
    costs[:, 1] -= 0.5  # a uniform advantage must not steal the others' documents
    experts = FAIR(costs).experts
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
    experts = numpy.array([ner.router.expert_of(doc_key(eg.reference)) for eg in examples])
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
    experts = FAIR(costs).experts
    assert (experts[empty] == 0).sum() >= 95  # expert 0 is (nearly) all entity-free documents
    assert (experts[~empty] == 0).sum() <= 5
    result = FAIR(costs, active=~empty)
    experts, residual = result.experts, result.residual
    assert numpy.bincount(experts[empty], minlength=3).tolist() == [50, 50, 50]
    assert numpy.bincount(experts[~empty], minlength=3).tolist() == [50, 50, 50]
    assert residual < 1e-6
    experts = ARGMAX(costs, active=~empty).experts
    assert numpy.bincount(experts[empty], minlength=3).tolist() == [50, 50, 50]
    experts = FAIR(costs, active=numpy.zeros(len(costs), dtype=bool)).experts
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
    ner = nlp.add_pipe("bond_moe_ner", config={
        "model": cnn_moe_model(3),
        "assigner": {"@misc": "spacy-bond-moe.sinkhorn_assigner.v1", "scope": "entities"}})
    examples = entity_and_empty_examples(nlp)
    nlp.initialize(lambda: examples)
    event = ner.reassign_experts(examples, nlp=nlp, step=1)
    assert event["n_docs"] == 48 and event["n_docs_with_entities"] == 24
    for prefix in ("e", "o"):
        loads = numpy.bincount([ner.router.expert_of(f"{prefix}{i}") for i in range(24)],
                               minlength=3)
        assert loads.tolist() == [8, 8, 8]


@pytest.mark.parametrize("option,value", [("scope", "docs"), ("m_step", "average")])
def test_assigner_rejects_unknown_choice(option, value):
    """The config system itself rejects a bad choice, naming the option."""
    nlp = spacy.blank("en")
    bad = {"@misc": "spacy-bond-moe.sinkhorn_assigner.v1", option: value}
    with pytest.raises(ConfigValidationError, match=rf"assigner -> {option}"):
        nlp.add_pipe("bond_moe_ner", config={"assigner": bad})


def test_unknown_sub_config_name_is_a_registry_error():
    nlp = spacy.blank("en")
    with pytest.raises(Exception, match="spacy-bond-moe.fancy_assigner.v1"):
        nlp.add_pipe("bond_moe_ner", config={"assigner": {"@misc": "spacy-bond-moe.fancy_assigner.v1"}})
    assert registry.misc.get("spacy-bond-moe.argmax_assigner.v1") is build_argmax_assigner_v1


def test_shared_stage_trains_every_expert_and_defers_the_estep():
    """While `shared_steps` lasts, every document's loss reaches all K experts and the
    schedule runs no E-step; afterwards each document trains its assigned expert only."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("bond_moe_ner", config={"model": cnn_moe_model(3)})
    examples = entity_and_empty_examples(nlp, n_docs=6)
    optimizer = nlp.initialize(lambda: examples)
    schedule = create_em_schedule_v2("bond_moe_ner", lambda _: examples, 1, 0, 0, shared_steps=2)

    def touched_experts(eg):
        scores = ner.model.predict([eg.predicted])
        _, grads = ner.get_loss([eg], scores)
        return [k for k in range(3) if grads[0][:, k].any()]

    initial = dict(ner.router.assignments)  # the balanced random routing of initialize()
    for step in range(4):
        schedule(nlp, {"step": step})
        if step < 2:
            assert not ner.route_updates
            assert ner.router.assignments == initial
            assert touched_experts(examples[0]) == [0, 1, 2]
        else:
            assert ner.route_updates
            assert touched_experts(examples[0]) == [ner.router.expert_of(doc_key(examples[0].reference))]
        nlp.update(examples, sgd=optimizer)
    estep_steps = [e["step"] for e in ner.pop_events() if e["event"] == "estep"]
    assert estep_steps == [2, 3]


def test_schedule_counts_optimizer_steps_with_accumulated_gradients():
    """One clock: with accumulate_gradient = 2 (two `update` calls per step) the shared
    stage, E-steps and teacher still switch at optimizer steps."""
    from spacy.training.loop import train_while_improving

    nlp = spacy.blank("en")
    ner = nlp.add_pipe("bond_moe_ner", config={"model": cnn_moe_model(2)})
    examples = entity_and_empty_examples(nlp, n_docs=8)
    seen = []
    calls = []
    original_update = ner.update

    def update(batch, **kwargs):
        calls.append(ner.route_updates)
        return original_update(batch, **kwargs)

    ner.update = update
    schedule = create_em_schedule_v2("bond_moe_ner", lambda _: examples, 2, 4, 0, shared_steps=3)

    def before_update(nlp, args):
        schedule(nlp, args)
        seen.append((args["step"], ner.route_updates))

    nlp.initialize(lambda: examples)
    batches = [(0, examples[i : i + 4]) for i in range(0, 16, 4)] * 2
    steps = train_while_improving(
        nlp, nlp.create_optimizer(), iter(batches), evaluate=lambda: (0.0, {}), dropout=0.0,
        accumulate_gradient=2, patience=0, max_steps=5, eval_frequency=100, exclude=[],
        annotating_components=[], before_update=before_update)
    for _ in steps:
        pass
    assert seen == [(0, False), (1, False), (2, False), (3, True), (4, True), (5, True)]
    assert calls == [False] * 6 + [True] * 6  # two update calls per optimizer step
    events = ner.pop_events()
    assert [(e["event"], e["step"]) for e in events] == [("teacher", 4), ("estep", 4)]


@pytest.mark.parametrize("fair", [True, False])
def test_responsibilities_rows_and_balance(fair):
    costs = skewed_costs(n_docs=300)
    build = build_sinkhorn_assigner_v1 if fair else build_argmax_assigner_v1
    soft = build(m_step="soft")
    result = soft(costs)
    weights = result.weights
    assert weights.shape == (300, 3) and numpy.allclose(weights.sum(axis=1), 1.0)
    share = weights.mean(axis=0)
    if fair:  # Sinkhorn: every expert holds a third of the mass
        assert numpy.allclose(share, 1 / 3, atol=1e-5)
    else:  # softmax of the costs: expert 0's uniform advantage takes most of it
        assert share[0] > 0.6
    hard = build()(costs).experts
    assert (weights.argmax(axis=1) == hard).mean() > 0.9
    assert (result.experts == hard).all()  # one E-step yields both, from one Sinkhorn run
    spread = soft(costs, active=numpy.arange(300) < 100).weights
    assert numpy.allclose(spread[100:], 1 / 3)


def test_soft_estep_runs_sinkhorn_once(monkeypatch):
    from spacy_bond_moe import em

    calls = []
    original = em.sinkhorn
    monkeypatch.setattr(em, "sinkhorn", lambda *a, **k: calls.append(1) or original(*a, **k))
    build_sinkhorn_assigner_v1(m_step="soft")(skewed_costs(n_docs=30))
    assert len(calls) == 1


def test_router_deals_routes_and_logs():
    router = Router(3, build_sinkhorn_assigner_v1(m_step="soft"))
    keys = [f"d{i}" for i in range(30)]
    router.deal(reversed(keys))  # sorted: the same dealing whatever the corpus order
    dealt = dict(router.assignments)
    router.deal(keys)
    assert router.assignments == dealt
    assert numpy.bincount(list(dealt.values()), minlength=3).tolist() == [10, 10, 10]
    assert router.weights_of("d0") is None  # no E-step yet: hard routing
    assert router.expert_of("unseen") == hash_expert("unseen", 3)
    costs = skewed_costs(n_docs=30)
    event = router.estep(keys, costs, numpy.ones(30, dtype=bool), step=7)
    assert event["loads"] == [10, 10, 10] and event["n_docs"] == 30 and event["step"] == 7
    assert event["changed"] == sum(dealt[k] != router.expert_of(k) for k in keys)
    assert router.prior == pytest.approx([1 / 3] * 3)
    assert router.weights_of("d0").shape == (3,) and "mean_max_responsibility" in event


def test_soft_m_step_spreads_each_document_over_the_experts():
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("bond_moe_ner", config={
        "model": cnn_moe_model(3),
        "assigner": {"@misc": "spacy-bond-moe.sinkhorn_assigner.v1", "m_step": "soft", "lam": 10.0}})
    examples = entity_and_empty_examples(nlp, n_docs=6)
    nlp.initialize(lambda: examples)
    eg = examples[0]
    _, grads = ner.get_loss([eg], ner.model.predict([eg.predicted]))
    assert sum(bool(grads[0][:, k].any()) for k in range(3)) == 1  # before any E-step: routed
    event = ner.reassign_experts(examples, nlp=nlp, step=1)
    assert 1 / 3 <= event["mean_max_responsibility"] < 0.5  # a large lambda: nearly uniform
    scores = ner.model.predict([eg.predicted])
    _, grads = ner.get_loss([eg], scores)
    weights = ner.router.weights_of(doc_key(eg.reference))
    q, mask = ner.targets([eg])[0]
    mask_arr = mask.astype("float32")[:, None]
    expected = sum(w * expert_loss(scores[0], k, q, mask_arr)[1] for k, w in enumerate(weights))
    assert numpy.allclose(grads[0], expected / mask.sum(), atol=1e-7)
    assert all(grads[0][:, k].any() for k in range(3))


def test_schedule_without_estep_never_runs_one():
    """estep_every = 0 means never (no division by zero), with or without a teacher."""
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("bond_moe_ner", config={"model": cnn_moe_model(2)})
    examples = entity_and_empty_examples(nlp, n_docs=4)
    nlp.initialize(lambda: examples)
    schedule = create_em_schedule_v2("bond_moe_ner", lambda _: examples, 0, 2, 0)
    for step in range(4):
        schedule(nlp, {"step": step})
    assert [e["event"] for e in ner.pop_events()] == ["teacher"]
