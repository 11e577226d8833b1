"""`bond_moe_ner`'s `inference = "int8"`: dynamic int8 copies of the PyTorch encoder at
prediction, never in training or serialisation."""
import warnings

import numpy
import pytest
import spacy
import torch
from thinc.api import ConfigValidationError

from spacy_bond_moe.architectures import predict_in_length_groups

from .conftest import TRAIN_DATA, cnn_moe_model, make_examples, trf_tok2vec_config

TEXTS = [text for text, _ in TRAIN_DATA]


def trf_nlp(tiny_bert, inference):
    nlp = spacy.blank("en")
    nlp.add_pipe("bond_moe_ner", config={"inference": inference, "model": {
        "@architectures": "spacy-bond-moe.MoETagger.v1", "n_experts": 2,
        "tok2vec": trf_tok2vec_config(str(tiny_bert))}})
    return nlp


def probs(nlp, exact=False):
    """The component's probabilities (with `exact`: the fp32 encoder's, whatever `inference`)."""
    pipe, docs = nlp.get_pipe("bond_moe_ner"), [nlp.make_doc(t) for t in TEXTS]
    out = predict_in_length_groups(pipe.model, docs, pipe.predict_tokens) if exact else pipe.predict(docs)
    return [pipe.model.ops.to_numpy(p) for p in out]


def encoder(nlp):
    tok2vec = nlp.get_pipe("bond_moe_ner").model.get_ref("tok2vec")
    return next(shim for node in tok2vec.walk() for shim in node.shims)


def n_int8_layers(module) -> int:
    return sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in module.modules())


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    """A tiny BERT pipeline trained a few steps, saved fp32; reloaded as fp32 and int8."""
    nlp = trf_nlp(tiny_bert, "fp32")
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    path = tmp_path_factory.mktemp("int8") / "model"
    nlp.to_disk(path)
    override = {"components": {"bond_moe_ner": {"inference": "int8"}}}
    return path, spacy.load(path), spacy.load(path, config=override)


def test_int8_predicts_close_to_fp32_with_quantized_layers_and_restores_the_encoder(trained):
    _, fp32, int8 = trained
    module = encoder(int8)._model
    state = {k: v.clone() for k, v in module.state_dict().items()}
    fast, exact = probs(int8), probs(fp32)
    assert encoder(int8)._model is module  # swapped back after predicting
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
    assert n_int8_layers(module) == 0
    copies = list(int8.get_pipe("bond_moe_ner")._int8._copies.values())
    assert len(copies) == 1 and copies[0][0] is module and n_int8_layers(copies[0][1]) > 0
    deviation = max(float(numpy.abs(a - b).max()) for a, b in zip(fast, exact))
    assert 0.0 < deviation < 0.05  # int8 ran (not bit-equal) and stays close
    for a, b in zip(fast, exact):
        assert a.shape == b.shape and numpy.allclose(a.sum(-1), 1.0, atol=1e-5)


def test_int8_survives_to_disk_and_its_saved_weights_are_the_fp32_ones(trained, tmp_path):
    _, fp32, int8 = trained
    list(int8.pipe(TEXTS))
    int8.to_disk(tmp_path / "again")
    again = spacy.load(tmp_path / "again")
    assert again.config["components"]["bond_moe_ner"]["inference"] == "int8"
    assert again.get_pipe("bond_moe_ner").inference == "int8"
    saved, exact = encoder(again)._model.state_dict(), encoder(fp32)._model.state_dict()
    assert saved.keys() == exact.keys() and all(torch.equal(saved[k], exact[k]) for k in saved)
    assert n_int8_layers(encoder(again)._model) == 0
    assert [[(e.text, e.label_) for e in d.ents] for d in again.pipe(TEXTS)] == \
        [[(e.text, e.label_) for e in d.ents] for d in int8.pipe(TEXTS)]


def test_an_update_drops_the_int8_copy_so_predictions_follow_the_new_weights(tiny_bert):
    nlp = trf_nlp(tiny_bert, "int8")
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    pipe = nlp.get_pipe("bond_moe_ner")
    before = probs(nlp)
    assert pipe._int8._copies
    nlp.update(examples, sgd=optimizer)
    assert not pipe._int8._copies
    after, exact = probs(nlp), probs(nlp, exact=True)
    moved = max(float(numpy.abs(a - b).max()) for a, b in zip(after, before))
    close = max(float(numpy.abs(a - b).max()) for a, b in zip(after, exact))
    assert close < moved


def test_int8_without_a_pytorch_encoder_warns_and_predicts_fp32():
    nlp = spacy.blank("en")
    nlp.add_pipe("bond_moe_ner", config={"inference": "int8", "model": cnn_moe_model(2)})
    nlp.initialize(lambda: make_examples(nlp))
    with pytest.warns(UserWarning, match=r"inference = \"int8\" has no effect: .*no PyTorch encoder"):
        fast = probs(nlp)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per pipeline
        probs(nlp)
    exact = probs(nlp, exact=True)
    assert all(numpy.array_equal(a, b) for a, b in zip(fast, exact))


def test_an_unknown_inference_is_rejected_by_the_config_system():
    nlp = spacy.blank("en")
    with pytest.raises(ConfigValidationError, match="inference"):
        nlp.add_pipe("bond_moe_ner", config={"inference": "fp16", "model": cnn_moe_model(2)})
