"""spaCy's component battery for `bond_moe_ner` (after spacy/tests/pipeline/test_tagger.py)."""
import numpy
import pytest
import spacy
from spacy.language import Language
from spacy.training import Example
from spacy.util import load_model_from_path

from spacy_bond_moe import BondMoENER, build_cross_entropy_v1
from spacy_bond_moe.em import doc_key
from spacy_bond_moe.teacher import Teacher

from .conftest import TRAIN_DATA, assert_roundtrip_predicts_the_same, make_examples, trf_tok2vec_config

CNN = {
    "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 32,
    "depth": 2, "embed_size": 300, "window_size": 1, "maxout_pieces": 2, "subword_features": True,
}


def add_ner(nlp: Language, n_experts: int = 2, mode: str = "shared", **cfg) -> BondMoENER:
    model = {"@architectures": "spacy-bond-moe.MoETagger.v1", "n_experts": n_experts,
             "expert_mode": mode, "tok2vec": cfg.pop("tok2vec", CNN)}
    return nlp.add_pipe("bond_moe_ner", config={"model": model, **cfg})


def train_overfit(nlp: Language, ner: BondMoENER, n_steps: int = 60):
    """Every text appears once per expert, so every expert learns every sentence."""
    examples = make_examples(nlp, copies=ner.n_experts)
    optimizer = nlp.initialize(lambda: examples)
    ner.router.assignments = {doc_key(eg.reference): int(doc_key(eg.reference).split(":")[1])
                              for eg in examples}
    losses = {}
    for _ in range(n_steps):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
    return losses


def ents(doc):
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


@pytest.mark.parametrize("n_experts,mode", [(1, "shared"), (3, "shared"), (2, "separate")])
def test_overfitting_IO(nlp, tmp_path, n_experts, mode):
    ner = add_ner(nlp, n_experts, mode)
    losses = train_overfit(nlp, ner)
    assert losses["bond_moe_ner"] < 0.05
    texts = [text for text, _ in TRAIN_DATA]
    for text, gold in TRAIN_DATA:
        assert ents(nlp(text)) == sorted(gold)
    # Serialisation: identical predictions after a round trip.
    nlp.to_disk(tmp_path)
    nlp2 = load_model_from_path(tmp_path)
    for text in texts:
        doc1, doc2 = nlp(text), nlp2(text)
        assert ents(doc1) == ents(doc2)
        assert doc1.spans["bond_moe"].attrs["scores"] == pytest.approx(doc2.spans["bond_moe"].attrs["scores"])
        assert doc1._.bond_moe_expert == doc2._.bond_moe_expert
    # Batch == one by one.
    batched = [ents(d) for d in nlp.pipe(texts, batch_size=3)]
    assert batched == [ents(nlp(t)) for t in texts]
    probs_batch = ner.predict([nlp.make_doc(t) for t in texts])
    for text, p in zip(texts, probs_batch):
        assert numpy.allclose(ner.predict([nlp.make_doc(text)])[0], p, atol=1e-5)


def test_confidences_and_expert_extension(nlp):
    ner = add_ner(nlp, 3)
    train_overfit(nlp, ner)
    doc = nlp("Mary met John in Rome .")
    group = doc.spans["bond_moe"]
    assert [(s.start, s.end, s.label_) for s in group] == [(e.start, e.end, e.label_) for e in doc.ents]
    scores = group.attrs["scores"]
    assert len(scores) == len(doc.ents) and all(0.5 < s <= 1.0 for s in scores)
    assert doc._.bond_moe_expert in {0, 1, 2}


def test_bytes_serialization(nlp):
    ner = add_ner(nlp, 2)
    train_overfit(nlp, ner, n_steps=20)
    nlp2 = spacy.blank("en")
    add_ner(nlp2, 2)
    nlp2.from_bytes(nlp.to_bytes())
    assert nlp2.get_pipe("bond_moe_ner").labels == ner.labels
    for text, _ in TRAIN_DATA:
        assert ents(nlp(text)) == ents(nlp2(text))


def test_transformer_encoder_overfits_and_roundtrips(nlp, tmp_path, tiny_bert):
    ner = add_ner(nlp, 2, tok2vec=trf_tok2vec_config(str(tiny_bert)))
    examples = make_examples(nlp, copies=2)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = 0.01
    ner.router.assignments = {doc_key(eg.reference): int(doc_key(eg.reference).split(":")[1])
                              for eg in examples}
    first = last = None
    for i in range(40):
        losses = {}
        nlp.update(examples, sgd=optimizer, losses=losses)
        first = losses["bond_moe_ner"] if first is None else first
        last = losses["bond_moe_ner"]
    assert last < first * 0.5
    assert_roundtrip_predicts_the_same(nlp, tmp_path, [text for text, _ in TRAIN_DATA])


def test_n_process_2(nlp):
    ner = add_ner(nlp, 2)
    train_overfit(nlp, ner, n_steps=30)
    texts = [text for text, _ in TRAIN_DATA] * 3
    single = [ents(d) for d in nlp.pipe(texts)]
    multi = [(ents(d), d._.bond_moe_expert) for d in nlp.pipe(texts, n_process=2, batch_size=2)]
    assert [m[0] for m in multi] == single
    assert all(m[1] is not None for m in multi)


def test_empty_docs(nlp):
    ner = add_ner(nlp, 2)
    train_overfit(nlp, ner, n_steps=5)
    doc = nlp("")
    assert len(doc.ents) == 0 and doc._.bond_moe_expert is None
    assert list(doc.spans["bond_moe"]) == []
    docs = list(nlp.pipe(["", "Paris is big .", ""]))
    assert len(docs[1]) == 4 and len(docs[0]) == 0
    # Updates on empty docs are a no-op, not an error.
    empty = Example(nlp.make_doc(""), nlp.make_doc(""))
    assert nlp.update([empty], losses={})["bond_moe_ner"] == 0.0


def test_no_labels_clear_error(nlp):
    add_ner(nlp, 2)
    examples = [Example(nlp.make_doc("no entities here"), nlp.make_doc("no entities here"))]
    with pytest.raises(ValueError, match="no entity labels"):
        nlp.initialize(lambda: examples)


def test_labels_from_initialize_argument(nlp):
    ner = add_ner(nlp, 2)
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    assert ner.labels == ("LOC", "ORG", "PER")
    nlp2 = spacy.blank("en")
    ner2 = add_ner(nlp2, 2)
    nlp2.config["initialize"]["components"]["bond_moe_ner"] = {"labels": ["PER", "MISC"]}
    nlp2.initialize(lambda: examples)
    assert ner2.labels == ("PER", "MISC")
    assert ner2.tags == ["O", "B-PER", "I-PER", "B-MISC", "I-MISC"]


def test_add_label_rules(nlp):
    ner = add_ner(nlp, 2)
    assert ner.add_label("PER") == 1 and ner.add_label("PER") == 0
    with pytest.raises(ValueError):
        ner.add_label(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        ner.add_label(" ")
    nlp.initialize(lambda: make_examples(nlp))
    with pytest.raises(ValueError, match="initialized"):
        ner.add_label("NEW")


def test_hyphenated_labels(nlp, tmp_path):
    """W-NUT/Twitter types such as `geo-loc`: tags split at the first '-' only."""
    ner = add_ner(nlp, 1)
    data = [(text, [(s, e, "geo-loc" if lab == "LOC" else lab) for s, e, lab in gold])
            for text, gold in TRAIN_DATA]
    examples = make_examples(nlp, data)
    optimizer = nlp.initialize(lambda: examples)
    assert ner.tags == ["O", "B-ORG", "I-ORG", "B-PER", "I-PER", "B-geo-loc", "I-geo-loc"]
    for _ in range(60):
        nlp.update(examples, sgd=optimizer)
    for text, gold in data:
        assert ents(nlp(text)) == sorted(gold)
    nlp.to_disk(tmp_path)
    assert ents(load_model_from_path(tmp_path)("I like London and Berlin .")) == sorted(data[0][1])


def test_missing_annotation_is_unsupervised(nlp):
    """Tokens with missing NER annotation get no gradient; O tokens do."""
    ner = add_ner(nlp, 1)
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    ref = nlp.make_doc("Paris is big .")
    ref.set_ents([ref.char_span(0, 5, label="LOC")], default="missing")
    eg = Example(nlp.make_doc("Paris is big ."), ref)
    (q, mask), = ner.targets([eg])
    assert mask.tolist() == [True, False, False, False]
    scores = ner.model.predict([eg.predicted])
    _, grads = ner.get_loss([eg], scores)
    assert numpy.abs(grads[0][1:]).sum() == 0 and numpy.abs(grads[0][0]).sum() > 0


def test_uncertain_o_loss_in_training_targets(nlp):
    """`distant_loss.uncertain_o = "capitalised"`: stage I's targets leave the distant O on a
    capitalised token unsupervised (no gradient), keep it on lowercase and stop-word tokens."""
    ner = add_ner(nlp, 1, distant_loss={"@misc": "spacy-bond-moe.cross_entropy.v2",
                                        "uncertain_o": "capitalised"})
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    ref = nlp.make_doc("The trip to Taunton .")
    ref.set_ents([], default="outside")
    eg = Example(nlp.make_doc("The trip to Taunton ."), ref)
    (_, train_mask), = ner.targets([eg], train=True)
    (_, eval_mask), = ner.targets([eg])
    assert train_mask.tolist() == [True, True, True, False, True] and eval_mask.all()
    scores = ner.model.predict([eg.predicted])
    _, grads = ner.get_loss([eg], scores)
    assert numpy.abs(grads[0][3]).sum() == 0 and numpy.abs(grads[0][0]).sum() > 0


def test_proper_o_table_is_counted_at_initialize_and_kept_in_training_state(nlp):
    ner = add_ner(nlp, 1, distant_loss={"@misc": "spacy-bond-moe.cross_entropy.v2",
                                        "uncertain_o": "proper"})
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    table = ner.distant_loss.lower_share
    assert table and all(0.0 <= v <= 1.0 for v in table.values())
    assert set(table) == {t.lower_ for eg in examples for t in eg.predicted if t.is_alpha}
    state = ner.training_state()
    ner.distant_loss.lower_share = None
    ner.load_training_state(state)
    assert ner.distant_loss.lower_share == table


def test_update_routes_gradient_to_assigned_expert(nlp):
    ner = add_ner(nlp, 3)
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    for eg in examples:
        ner.router.assignments[doc_key(eg.reference)] = 2
    scores = ner.model.predict([eg.predicted for eg in examples])
    _, grads = ner.get_loss(examples, scores)
    for g in grads:
        assert numpy.abs(g[:, :2]).sum() == 0 and numpy.abs(g[:, 2]).sum() > 0


def test_bad_config_values(nlp):
    with pytest.raises(ValueError, match="combine"):
        add_ner(nlp, 2, combine="max")
    with pytest.raises(ValueError, match="expert_mode"):
        add_ner(spacy.blank("en"), 2, mode="both")
    with pytest.raises(ValueError, match="n_experts"):
        add_ner(spacy.blank("en"), 0)


def test_scorer_reports_ner_prf(nlp):
    ner = add_ner(nlp, 2)
    train_overfit(nlp, ner)
    examples = make_examples(nlp)
    scores = nlp.evaluate(examples)
    assert scores["ents_f"] == pytest.approx(1.0)
    assert set(scores["ents_per_type"]) == {"LOC", "ORG", "PER"}


def test_o_drop_unsupervises_a_share_of_distant_o(nlp):
    ner = add_ner(nlp, 1, distant_loss={"@misc": "spacy-bond-moe.cross_entropy.v1", "o_drop": 0.5})
    examples = make_examples(nlp, copies=20)
    nlp.initialize(lambda: examples)
    kept_o = total_o = 0
    for (q, mask), eg in zip(ner.targets(examples, train=True), examples):
        is_o = q[:, 0] == 1.0
        total_o += int(is_o.sum())
        kept_o += int((is_o & mask).sum())
        assert mask[~is_o].all()  # entity tokens are always supervised
    assert 0.35 < kept_o / total_o < 0.65
    assert all(m.all() for _, m in ner.targets(examples, train=False))  # E-step scoring: no drop


def test_gce_only_on_distant_labels(nlp):
    ner = add_ner(nlp, 1, distant_loss={"@misc": "spacy-bond-moe.gce.v1", "q": 0.7})
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    scores = ner.model.predict([eg.predicted for eg in examples])
    loss_gce, _ = ner.get_loss(examples, scores)
    gce = ner.distant_loss
    ner.distant_loss = build_cross_entropy_v1()
    loss_ce, _ = ner.get_loss(examples, scores)
    assert 0 < loss_gce < loss_ce  # (1 - p^q)/q < -log p
    ner.distant_loss = gce
    ner.snapshot_teacher(examples, nlp=nlp, step=0)
    teacher_loss, _ = ner.get_loss(examples, scores)
    ner.distant_loss = build_cross_entropy_v1()
    assert ner.get_loss(examples, scores)[0] == pytest.approx(teacher_loss)  # soft CE with a teacher


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_head_lr_scale(scale):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    ner = add_ner(nlp, 2, head_lr_scale=scale)
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    heads = ner.model.get_ref("output_layer").layers[0]
    embed = next(n for n in ner.model.walk() if n.name.startswith("hashembed"))
    w_head, w_embed = heads.get_param("W").copy(), embed.get_param("E").copy()
    nlp.update(examples, sgd=optimizer)
    head_step = numpy.abs(heads.get_param("W") - w_head).max()
    embed_step = numpy.abs(embed.get_param("E") - w_embed).max()
    # Adam's first step moves each weight by about lr * lr_scale.
    assert head_step == pytest.approx(optimizer.learn_rate * scale, rel=0.05)
    assert embed_step == pytest.approx(optimizer.learn_rate, rel=0.05)


def test_combine_mean_and_weighted(nlp):
    ner = add_ner(nlp, 2, combine="weighted")
    probs = numpy.array([[[0.8, 0.2], [0.2, 0.8]]], dtype="float32")  # 1 token, K=2, C=2
    ner.cfg["expert_prior"] = [0.75, 0.25]
    assert ner.combine(probs)[0].tolist() == pytest.approx([0.65, 0.35])
    ner.cfg["combine"] = "mean"
    assert ner.combine(probs)[0].tolist() == pytest.approx([0.5, 0.5])


# --------------------------------------------------------- whitespace and blank tokens
# (text with blank tokens, the same text without them); the non-blank tokens are the same.
BLANK_PAIRS = [
    ("Mary met John in Rome .\nParis is big .", "Mary met John in Rome . Paris is big ."),
    ("Mary met John\n\n\nin Rome .", "Mary met John in Rome ."),
    ("Bob Smith\tworks at Acme .", "Bob Smith works at Acme ."),
    ("Bob Smith works  at   Acme .", "Bob Smith works at Acme ."),
    ("\n\n  I like London and Berlin .", "I like London and Berlin ."),
    ("I like London and Berlin .  \n", "I like London and Berlin ."),
    ("Paris is big . \u200b Mary met John in Rome .", "Paris is big . Mary met John in Rome ."),
    ("Mary doesn't\n\nlike Rome .", "Mary doesn't like Rome ."),  # token norm "n't" -> "not"
]
BLANK_ONLY = ["\n", " \n\t  ", "\u200b"]


@pytest.fixture(scope="module", params=["cnn", "tiny_bert", "case_aware_tiny_bert"])
def trained_blank_nlp(request, tiny_bert):
    """A trained 2-expert pipeline per encoder; training docs hold whitespace tokens."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    tok2vec = CNN if request.param == "cnn" else trf_tok2vec_config(str(tiny_bert))
    if request.param == "case_aware_tiny_bert":  # hashed case features, window-mixed
        tok2vec = {"@architectures": "spacy-bond-moe.CaseAwareTok2Vec.v1", "encoder": tok2vec,
                   "features": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 8,
                                "attrs": ["SHAPE", "PREFIX", "SUFFIX"], "rows": [50, 100, 100],
                                "include_static_vectors": False},
                   "mixer": {"@architectures": "spacy.MaxoutWindowEncoder.v2", "width": 24,
                             "window_size": 1, "maxout_pieces": 2, "depth": 1}}
    ner = add_ner(nlp, 2, tok2vec=tok2vec)
    spaced = [("\t" + text + "\n\n", [(s + 1, e + 1, label) for s, e, label in gold])
              for text, gold in TRAIN_DATA]
    examples = make_examples(nlp, copies=2) + make_examples(nlp, spaced, copies=2, prefix="ws")
    optimizer = nlp.initialize(lambda: examples)
    if request.param != "cnn":
        optimizer.learn_rate = 0.01
    ner.router.assignments = {doc_key(eg.reference): int(doc_key(eg.reference).split(":")[1])
                              for eg in examples}
    for _ in range(60 if request.param == "cnn" else 40):
        nlp.update(examples, sgd=optimizer)
    return nlp


def _non_blank(doc):
    return [i for i, token in enumerate(doc) if token.text.strip() and token.text != "\u200b"]


def test_blank_tokens_predict_like_the_text_without_them(trained_blank_nlp):
    nlp = trained_blank_nlp
    ner = nlp.get_pipe("bond_moe_ner")
    for spaced, plain in BLANK_PAIRS:
        doc, ref = nlp.make_doc(spaced), nlp.make_doc(plain)
        keep = _non_blank(doc)
        assert [doc[i].text for i in keep] == [t.text for t in ref]
        p_doc, p_ref = ner.predict([doc])[0], ner.predict([ref])[0]
        assert numpy.allclose(p_doc[keep], p_ref, atol=1e-5), spaced
        blank = [i for i in range(len(doc)) if i not in keep]
        assert blank and (p_doc[blank, :, 0] == 1.0).all()  # one-hot "O" for every expert
        doc, ref = nlp(spaced), nlp(plain)
        assert [(e.text, e.label_) for e in doc.ents] == [(e.text, e.label_) for e in ref.ents]
        assert all(doc[i].ent_iob_ == "O" for i in blank)
        assert doc._.bond_moe_expert == ref._.bond_moe_expert
        scores, ref_scores = doc.spans["bond_moe"].attrs["scores"], ref.spans["bond_moe"].attrs["scores"]
        assert scores == pytest.approx(ref_scores, abs=1e-5)


def test_blank_only_docs_and_mixed_batches(trained_blank_nlp):
    nlp = trained_blank_nlp
    for text in BLANK_ONLY:
        doc = nlp(text)
        assert len(doc) >= 1 and list(doc.ents) == [] and doc._.bond_moe_expert is None
        assert list(doc.spans["bond_moe"]) == [] and all(t.ent_iob_ == "O" for t in doc)
    assert all(list(d.ents) == [] for d in nlp.pipe(BLANK_ONLY, batch_size=8))  # encoder skipped
    texts = [t for pair in BLANK_PAIRS for t in pair] + BLANK_ONLY + [""]
    batched = [(ents(d), d._.bond_moe_expert) for d in nlp.pipe(texts, batch_size=len(texts))]
    assert batched == [(ents(nlp(t)), nlp(t)._.bond_moe_expert) for t in texts]
    assert sum(len(e) for e, _ in batched) > 0


def test_blank_tokens_in_training_estep_and_teacher(trained_blank_nlp):
    """Blank tokens are never supervised, get no gradient, and never count in the passes."""
    nlp = trained_blank_nlp
    ner = nlp.get_pipe("bond_moe_ner")
    spaced = "Paris is\n\nbig .\t"
    ref = nlp.make_doc(spaced)
    ref.set_ents([ref.char_span(0, 5, label="LOC")], default="outside")
    ref.user_data["doc_id"] = "blank:0"
    eg = Example(nlp.make_doc(spaced), ref)
    (q, mask), = ner.targets([eg])
    assert [t.text for t in eg.predicted] == ["Paris", "is", "\n\n", "big", ".", "\t"]
    assert mask.tolist() == [True, True, False, True, True, False]
    scores, backprop = ner.model.begin_update([eg.predicted])
    _, grads = ner.get_loss([eg], scores)
    assert numpy.abs(grads[0][[2, 5]]).sum() == 0 and numpy.abs(grads[0][[0, 1, 3, 4]]).sum() > 0
    backprop(grads)  # no error from the encoder's backward pass
    corpus = [eg] + [Example(nlp.make_doc(t), nlp.make_doc(t)) for t in BLANK_ONLY] + \
        make_examples(nlp, prefix="plain")
    event = ner.reassign_experts(corpus, nlp=nlp, step=1)
    assert event["n_docs"] == len(corpus) and sum(event["loads"]) == len(corpus)
    teacher = ner.teacher
    try:
        event = ner.snapshot_teacher(corpus, nlp=nlp, step=1)
        n_visible = sum(len(_non_blank(e.predicted)) for e in corpus)
        assert event["n_tokens"] == n_visible
        (q, mask), = ner.targets([eg])
        assert not mask[[2, 5]].any()
        teacher_loss, _ = ner.get_loss([eg], scores)
        assert numpy.isfinite(teacher_loss)
    finally:  # the module's pipeline is shared by the other tests
        ner.teacher = Teacher(teacher.labeller, ner.combine, teacher.encode)


@pytest.mark.parametrize("inner", ["reduce_first.v1", "reduce_last.v1", "reduce_max.v1",
                                   "reduce_mean.v1"])
def test_empty_safe_pooling_gives_tokens_without_pieces_a_zero_vector(nlp, tiny_bert, inner):
    """A token the word-piece tokenizer drops entirely (here U+0301 alone, stripped as an
    accent by the uncased tokenizer) crashes `reduce_first.v1`; the wrapper pools it to 0."""
    from thinc.api import Ragged

    layers = spacy.registry.layers
    pooling = layers.get("spacy-bond-moe.empty_safe_pooling.v1")(layers.get(inner)())
    data = numpy.arange(10, dtype="f").reshape((5, 2))
    X = Ragged(data, numpy.asarray([2, 0, 3, 0], dtype="i"))
    Y, backprop = pooling(X, is_train=True)
    expected, _ = layers.get(inner)()(Ragged(data, numpy.asarray([2, 3], dtype="i")), False)
    assert Y[[0, 2]].tolist() == expected.tolist() and not Y[[1, 3]].any()
    dX = backprop(numpy.ones((4, 2), dtype="f"))
    assert dX.dataXd.shape == (5, 2) and dX.lengths.tolist() == [2, 0, 3, 0]
    assert dX.dataXd.sum() == pytest.approx(4.0)  # each non-empty token's gradient, once
    Y, _ = pooling(Ragged(numpy.zeros((0, 2), dtype="f"), numpy.asarray([0, 0], dtype="i")), False)
    assert Y.shape == (2, 2) and not Y.any()
    X_full = Ragged(data, numpy.asarray([2, 3], dtype="i"))
    assert pooling(X_full, False)[0].tolist() == expected.tolist()  # no empty row: unchanged
    tok2vec = trf_tok2vec_config(str(tiny_bert))
    tok2vec["pooling"] = {"@layers": "spacy-bond-moe.empty_safe_pooling.v1",
                          "pooling": {"@layers": inner}}
    add_ner(nlp, 2, tok2vec=tok2vec)
    nlp.initialize(lambda: make_examples(nlp))
    doc = nlp("Paris \u0301 is big .")
    assert [t.text for t in doc] == ["Paris", "\u0301", "is", "big", "."]


def test_spacy_apply_multiline_text_and_jsonl(trained_blank_nlp, tmp_path):
    """`spacy apply` over a multi-line text file and a JSONL of multi-paragraph texts."""
    import json
    import subprocess
    import sys

    from spacy.tokens import DocBin

    nlp = trained_blank_nlp
    nlp.to_disk(tmp_path / "model")
    texts = [a + "\n\n" + b for a, b in BLANK_PAIRS[:4]] + ["\t" + BLANK_PAIRS[4][1] + "  \n"]
    (tmp_path / "notes.txt").write_text("\n\n".join(texts), encoding="utf8")
    (tmp_path / "articles.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts),
                                             encoding="utf8")
    found = []
    for src, extra in (("notes.txt", []), ("articles.jsonl", ["--text-key", "text"])):
        out = tmp_path / (src + ".spacy")
        proc = subprocess.run([sys.executable, "-m", "spacy", "apply", str(tmp_path / "model"),
                               str(tmp_path / src), str(out), *extra],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        docs = list(DocBin().from_disk(out).get_docs(nlp.vocab))
        assert len(docs) == (1 if src == "notes.txt" else len(texts))
        assert all(not t.is_space for d in docs for e in d.ents for t in e)
        found.append([ents(d) for d in docs])
    assert found[1] == [ents(nlp(t)) for t in texts] and any(found[1])


def test_length_groups_budget_and_order():
    from spacy_bond_moe.architectures import length_groups

    lengths = [5, 1, 30, 2, 2, 0, 40, 3]
    groups = length_groups(lengths, budget=8)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(lengths)  # shortest first
    assert all(len(g) * max(max(lengths[i] for i in g), 1) <= 8 or len(g) == 1 for g in groups)
    assert [len(g) for g in groups] == [4, 1, 1, 1, 1]  # 0,1,2,2 (4 x 2 = 8) | 3 | 5 | 30 | 40
    assert length_groups([], 8) == []


def test_predict_in_length_groups_keeps_the_docs_order(trained_blank_nlp):
    """Grouping by length (any budget) gives each doc the probabilities of encoding it alone."""
    nlp = trained_blank_nlp
    ner = nlp.get_pipe("bond_moe_ner")
    texts = [t for pair in BLANK_PAIRS for t in pair] + ["Paris .", "Mary met John in Rome . " * 6]
    docs = [nlp.make_doc(t) for t in texts]
    alone = [ner.predict([doc])[0] for doc in docs]
    for budget in (1, 16, 10_000):
        ner.predict_tokens = budget
        for p, q in zip(ner.predict(docs), alone):
            assert numpy.allclose(p, q, atol=1e-5)
    ner.predict_tokens = 512


def test_length_groups_draw_from_the_global_random_stream_like_one_call(trained_blank_nlp):
    """spacy-transformers draws from `random` per forward pass and spaCy shuffles training
    batches with it: splitting a batch into groups must leave the stream as one call does."""
    import random

    nlp = trained_blank_nlp
    ner = nlp.get_pipe("bond_moe_ner")
    # shortest first: the first groups (an empty and a whitespace-only doc) call no encoder
    docs = [nlp.make_doc(t) for t in ["", "\n"]] + [nlp.make_doc(t) for pair in BLANK_PAIRS for t in pair]
    random.seed(3)
    ner.model.predict(docs)
    expected = random.random()
    ner.predict_tokens = 1  # one group per doc
    random.seed(3)
    ner.predict(docs)
    assert random.random() == expected
    ner.predict_tokens = 512


def test_corpus_passes_encode_in_length_groups_like_predict(trained_blank_nlp, monkeypatch):
    """E-step and teacher passes encode in groups of at most `predict_tokens` padded tokens
    (never a corpus batch padded to its longest doc) and score what `predict` gives."""
    from thinc.api import Model

    from spacy_bond_moe.losses import token_nll

    nlp = trained_blank_nlp
    ner = nlp.get_pipe("bond_moe_ner")
    texts = ["Paris .", "Mary met John in Rome . " * 6, "I like London and Berlin .", "Bob ."]
    corpus = []
    for text in texts:
        ref = nlp.make_doc(text)
        ref.set_ents([ref.char_span(0, 5, label="LOC")] if text.startswith("Paris") else [],
                     default="outside")
        corpus.append(Example(nlp.make_doc(text), ref))
    alone = {doc_key(eg.reference): ner.predict([eg.predicted])[0] for eg in corpus}
    calls = []
    predict = Model.predict

    def recording(model, docs):
        if model is ner.model or model is ner.teacher.model:
            calls.append([len(doc) for doc in docs])
        return predict(model, docs)

    monkeypatch.setattr(Model, "predict", recording)
    ner.predict_tokens = 8
    teacher = ner.teacher
    try:
        keys, costs, _ = ner.expert_costs(corpus, nlp=nlp)
        targets = {doc_key(eg.reference): t for eg, t in zip(corpus, ner.targets(corpus))}
        for key, row in zip(keys, costs):
            q, mask = targets[key]
            expected = token_nll(alone[key], q)[mask].mean(axis=0)
            assert numpy.allclose(row, expected, atol=1e-5)
        ner.teacher = Teacher(teacher.labeller, ner.combine, teacher.encode)
        ner.snapshot_teacher(corpus, nlp=nlp, step=1)
        for eg in corpus:
            q, _ = ner.teacher.targets[doc_key(eg.reference)]
            expected, _ = ner.teacher.pseudo_labels(ner.combine(alone[doc_key(eg.reference)]),
                                                    numpy.zeros(len(eg.predicted), dtype=bool))
            assert numpy.allclose(q.astype("float32"), expected, atol=1e-2)  # cached as float16
    finally:  # the module's pipeline is shared by the other tests
        ner.teacher = teacher
        ner.predict_tokens = 512
    assert calls and all(len(c) == 1 or len(c) * max(c) <= 8 for c in calls), calls
    assert sorted(n for c in calls for n in c) == sorted([len(eg.predicted) for eg in corpus] * 2)


def test_decoding_never_puts_a_blank_token_inside_an_entity(nlp):
    """Whatever the scores say ("New\\nYork" with I-LOC likely on both sides of the break)."""
    ner = add_ner(nlp, 1)
    nlp.initialize(lambda: make_examples(nlp))
    doc = nlp.make_doc("New\nYork")
    tags = ner.tags
    probs = numpy.zeros((3, 1, len(tags)), dtype="float32")  # float32 softmax underflows to 0
    probs[0, 0, tags.index("B-LOC")] = 1.0
    probs[1, 0, 0], probs[1, 0, tags.index("I-LOC")] = 0.6, 0.4  # scores from anywhere
    probs[2, 0, tags.index("I-LOC")] = 1.0
    ner.set_annotations([doc], [probs])
    assert all(not t.is_space for e in doc.ents for t in e)
    assert [(e.text, e.label_) for e in doc.ents][0] == ("New", "LOC")
