"""`spacy-bond-moe.CaseAwareTok2Vec.v1`: case-bearing features beside an uncased encoder."""
import numpy
import pytest
import spacy

from spacy_bond_moe.architectures import build_case_aware_tok2vec_v1
from spacy_bond_moe.em import doc_key

from .conftest import assert_roundtrip_predicts_the_same, make_examples, trf_tok2vec_config

FEATURES = {
    "@architectures": "spacy.MultiHashEmbed.v2", "width": 8, "attrs": ["SHAPE", "PREFIX", "SUFFIX"],
    "rows": [50, 100, 100], "include_static_vectors": False,
}
CNN = {
    "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 16,
    "depth": 1, "embed_size": 100, "window_size": 1, "maxout_pieces": 2, "subword_features": False,
}
# Whether an entity is there depends on capitalisation only.
CASED_DATA = [
    ("I like Apple .", [(7, 12, "ORG")]),
    ("I like apple .", []),
    ("we met Rose today .", [(7, 11, "PER")]),
    ("we met rose today .", []),
]


def case_aware(encoder: dict, mixer_width: int = 0, lr_scale: float = 1.0) -> dict:
    config = {"@architectures": "spacy-bond-moe.CaseAwareTok2Vec.v1", "encoder": encoder,
              "features": FEATURES, "features_lr_scale": lr_scale}
    if mixer_width:
        config["mixer"] = {"@architectures": "spacy.MaxoutWindowEncoder.v2", "width": mixer_width,
                           "window_size": 1, "maxout_pieces": 2, "depth": 1}
    return config


def add_ner(nlp, tok2vec: dict, n_experts: int = 1):
    model = {"@architectures": "spacy-bond-moe.MoETagger.v1", "n_experts": n_experts, "tok2vec": tok2vec}
    return nlp.add_pipe("bond_moe_ner", config={"model": model})


def train(nlp, ner, data, steps: int, learn_rate: float):
    spacy.util.fix_random_seed(0)
    examples = make_examples(nlp, data)
    optimizer = nlp.initialize(lambda: examples)
    optimizer.learn_rate = learn_rate
    ner.router.assignments = {doc_key(eg.reference): 0 for eg in examples}
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)


def ents(doc):
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


@pytest.mark.parametrize("mixer_width", [0, 24])
def test_case_aware_learns_what_an_uncased_encoder_cannot(tiny_bert, tmp_path, mixer_width):
    # The tiny BERT lower-cases: "Apple" and "apple" are the same input to it.
    plain_nlp, case_nlp = spacy.blank("en"), spacy.blank("en")
    plain = add_ner(plain_nlp, trf_tok2vec_config(str(tiny_bert)))
    case = add_ner(case_nlp, case_aware(trf_tok2vec_config(str(tiny_bert)), mixer_width))
    train(plain_nlp, plain, CASED_DATA, 60, 0.01)
    train(case_nlp, case, CASED_DATA, 60, 0.01)
    upper, lower = plain.predict([plain_nlp.make_doc(t) for t in ("I like Apple .", "I like apple .")])
    assert numpy.allclose(upper, lower, atol=1e-6)
    assert any(ents(plain_nlp(text)) != sorted(gold) for text, gold in CASED_DATA)
    for text, gold in CASED_DATA:
        assert ents(case_nlp(text)) == sorted(gold)
    width = case.model.get_ref("tok2vec").get_dim("nO")
    assert width == (mixer_width or 16 + 8)
    assert_roundtrip_predicts_the_same(case_nlp, tmp_path, [text for text, _ in CASED_DATA])


def test_features_lr_scale_scales_the_fresh_layers_only():
    nlp = spacy.blank("en")
    ner = add_ner(nlp, case_aware(CNN, mixer_width=24, lr_scale=10.0))
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    tok2vec = ner.model.get_ref("tok2vec")
    encoder_embed = next(n for n in tok2vec.layers[0].walk() if n.name.startswith("hashembed"))
    feature_embed = next(n for n in tok2vec.layers[1].walk() if n.name.startswith("hashembed"))
    mixer_maxout = next(n for n in tok2vec.layers[2].walk() if n.name == "maxout")
    before = [layer.get_param(p).copy() for layer, p in
              ((encoder_embed, "E"), (feature_embed, "E"), (mixer_maxout, "W"))]
    nlp.update(examples, sgd=optimizer)
    steps = [numpy.abs(layer.get_param(p) - b).max() for (layer, p), b in
             zip(((encoder_embed, "E"), (feature_embed, "E"), (mixer_maxout, "W")), before)]
    # Adam's first step moves each weight by about lr * lr_scale.
    assert steps[0] == pytest.approx(optimizer.learn_rate, rel=0.05)
    assert steps[1] == pytest.approx(optimizer.learn_rate * 10, rel=0.05)
    assert steps[2] == pytest.approx(optimizer.learn_rate * 10, rel=0.05)


def test_bad_features_lr_scale():
    with pytest.raises(ValueError, match="features_lr_scale must be > 0"):
        build_case_aware_tok2vec_v1(spacy.registry.resolve({"x": CNN})["x"],
                                    spacy.registry.resolve({"x": FEATURES})["x"],
                                    features_lr_scale=0.0)


def test_case_aware_around_a_length_grouped_encoder(tiny_bert, tmp_path):
    # configs/minilm_moe_case.cfg's nesting: the features beside a transformer encoded in groups.
    grouped = {"@architectures": "spacy-bond-moe.LengthGroupedTok2Vec.v1", "tokens": 8,
               "tok2vec": trf_tok2vec_config(str(tiny_bert))}
    nlp = spacy.blank("en")
    ner = add_ner(nlp, case_aware(grouped))
    train(nlp, ner, CASED_DATA, 60, 0.01)
    names = [node.name for node in ner.model.walk()]
    assert names.index("case_aware_tok2vec") < names.index("length_grouped_tok2vec")
    for text, gold in CASED_DATA:
        assert ents(nlp(text)) == sorted(gold)
    assert_roundtrip_predicts_the_same(nlp, tmp_path, [text for text, _ in CASED_DATA])
