"""Training speed-ups: length-bucketed batches, a frozen word-piece embedding table, and
length groups within a batch."""
import random
from collections import Counter

import numpy
import pytest
import spacy
import torch
from spacy.training import Example
from spacy.util import registry

from spacy_bond_moe.batching import length_buckets

from .conftest import TRAIN_DATA, make_examples, trf_tok2vec_config

LENGTHS = [5, 1, 30, 2, 8, 4, 17, 6, 9, 3, 12, 25, 7, 1, 40, 11, 2, 19, 13, 6, 3, 22, 5, 8, 14]


def seqs(lengths):
    return [list(range(n)) for n in lengths]


def padded(batches) -> int:
    return sum(max(len(x) for x in b) * len(b) for b in batches)


def test_every_item_once_in_batches_of_similar_length():
    items = seqs(LENGTHS)
    batches = list(length_buckets(items, size=4, buffer=3, fill="sentences"))
    assert Counter(id(x) for b in batches for x in b) == Counter(id(x) for x in items)
    # windows of 12, 12, 1 items: batches of 4 except the last window's
    assert sorted(len(b) for b in batches) == [1] + [4] * 6
    for start in (0, 12):  # inside a window, the batches cut one length-sorted run
        window = sorted(len(x) for x in items[start: start + 12])
        in_window = [b for b in batches if any(x is y for x in b for y in items[start: start + 12])]
        assert sorted(sorted(len(x) for x in b) for b in in_window) == \
            [window[i: i + 4] for i in range(0, 12, 4)]
    plain = [items[i: i + 4] for i in range(0, len(items), 4)]
    assert padded(batches) < padded(plain)


def test_token_filled_batches_weigh_tokens_evenly():
    items = seqs(LENGTHS * 8)
    random.Random(0).shuffle(items)
    batches = list(length_buckets(items, size=4, buffer=50))  # fill = "tokens"
    assert Counter(id(x) for b in batches for x in b) == Counter(id(x) for x in items)
    budget = 4 * sum(LENGTHS) / len(LENGTHS)
    assert all(len(b) == 1 or len(b) * max(len(x) for x in b) <= budget for b in batches)
    # about as many steps (these toy lengths are more skewed than our datasets: 5-16% more there)
    assert len(items) / 4 <= len(batches) <= 1.5 * len(items) / 4
    assert max(len(b) for b in batches) > 4  # short sentences share a batch
    sentences = list(length_buckets(items, size=4, buffer=50, fill="sentences"))
    spread = lambda bs: max(sum(map(len, b)) for b in bs) / min(sum(map(len, b)) for b in bs)
    assert spread(batches) < spread(sentences)  # tokens per step: closer to constant


def test_batches_depend_on_the_stream_order_only():
    items = seqs(LENGTHS)
    random.seed(1)
    first = [[len(x) for x in b] for b in length_buckets(items, 4, 3)]
    random.seed(2)
    again = [[len(x) for x in b] for b in length_buckets(items, 4, 3)]
    assert first == again
    shuffled = list(items)
    random.Random(0).shuffle(shuffled)
    assert [[len(x) for x in b] for b in length_buckets(shuffled, 4, 3)] != first


def test_registered_batcher_checks_its_settings():
    make = registry.batchers.get("spacy-bond-moe.length_buckets.v1")
    assert [len(b) for b in make(size=2, buffer=2, fill="sentences")(seqs([3, 1, 2]))] in ([2, 1], [1, 2])
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        make(size=0)
    with pytest.raises(ValueError, match="buffer must be an integer >= 1"):
        make(size=4, buffer="50")
    with pytest.raises(ValueError, match="fill must be one of"):
        make(fill="words")


def wrapped_nlp(tiny_bert, architecture, **settings):
    """A K=2 pipeline whose tiny-BERT tok2vec is wrapped by `spacy-bond-moe.<architecture>.v1`."""
    nlp = spacy.blank("en")
    nlp.add_pipe("bond_moe_ner", config={"model": {
        "@architectures": "spacy-bond-moe.MoETagger.v1", "n_experts": 2,
        "tok2vec": {"@architectures": f"spacy-bond-moe.{architecture}.v1", **settings,
                    "tok2vec": trf_tok2vec_config(str(tiny_bert))}}})
    return nlp


def frozen_nlp(tiny_bert, frozen):
    return wrapped_nlp(tiny_bert, "FrozenTorchParams", frozen=frozen)


def torch_params(nlp):
    tok2vec = nlp.get_pipe("bond_moe_ner").model.get_ref("tok2vec")
    module = next(shim._model for node in tok2vec.walk() for shim in node.shims)
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_frozen_parameters_stay_as_loaded_through_training_and_reload(tiny_bert, tmp_path):
    nlp = frozen_nlp(tiny_bert, ["embeddings.word_embeddings."])
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    before = torch_params(nlp)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    after = torch_params(nlp)
    frozen = "embeddings.word_embeddings.weight"
    assert torch.equal(before[frozen], after[frozen])
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert "embeddings.position_embeddings.weight" in moved and len(moved) > 10
    assert not any(frozen in str(key) for key in optimizer.mom1)  # no Adam state for it
    nlp.to_disk(tmp_path / "model")  # a reload rebuilds the torch module: still frozen
    reloaded = spacy.load(tmp_path / "model")
    loaded = torch_params(reloaded)
    assert torch.equal(loaded[frozen], before[frozen])
    assert [(e.text, e.label_) for e in reloaded(TRAIN_DATA[0][0]).ents] == \
        [(e.text, e.label_) for e in nlp(TRAIN_DATA[0][0]).ents]
    optimizer = reloaded.resume_training()
    reloaded.update([Example(reloaded.make_doc(e.reference.text), e.reference) for e in examples],
                    sgd=optimizer)
    assert torch.equal(torch_params(reloaded)[frozen], before[frozen])


def test_a_prefix_that_names_no_parameter_is_refused(tiny_bert):
    nlp = frozen_nlp(tiny_bert, ["encoder.layers.0."])
    with pytest.raises(ValueError, match=r"no PyTorch parameter starts with 'encoder.layers.0.'"):
        nlp.initialize(lambda: make_examples(nlp))
    with pytest.raises(ValueError, match="list of parameter-name prefixes"):
        frozen_nlp(tiny_bert, [])


def grouped_nlp(tiny_bert, tokens):
    return wrapped_nlp(tiny_bert, "LengthGroupedTok2Vec", tokens=tokens)


def test_length_grouped_tok2vec_gives_the_gradient_of_one_call(tiny_bert):
    """Grouping a training batch by length (many encoder calls) gives the outputs and the
    gradients of one call over the padded batch, and leaves `random` as one call does."""
    nlp = grouped_nlp(tiny_bert, 1_000_000)
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    ner = nlp.get_pipe("bond_moe_ner")
    grouped = ner.model.get_ref("tok2vec")
    module = next(shim._model for node in grouped.walk() for shim in node.shims)
    for layer in module.modules():  # no dropout: both passes must be comparable
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
        if hasattr(layer, "dropout_prob"):  # SDPA attention's own dropout
            layer.dropout_prob = 0.0
    texts = ["Paris .", "Mary met John in Rome and then Berlin , Madrid and London .", "Bob ."] + \
        [eg.reference.text for eg in examples]
    docs = [nlp.make_doc(t) for t in texts]

    def step(tokens):
        grouped.attrs["tokens"] = tokens
        module.zero_grad()
        random.seed(7)
        outputs, backprop = ner.model.begin_update(docs)
        after = random.random()
        backprop([ner.model.ops.xp.ones_like(o) * (i + 1) for i, o in enumerate(outputs)])
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        return outputs, grads, after

    one_out, one_grads, one_random = step(1_000_000)
    out, grads, after = step(12)  # budget of 12 padded tokens: several groups
    assert len(out) == len(docs) and all(o.shape == p.shape for o, p in zip(out, one_out))
    assert all(numpy.allclose(o, p, atol=1e-5) for o, p in zip(out, one_out))
    assert grads.keys() == one_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        assert torch.allclose(grad, one_grads[name], atol=1e-5, rtol=1e-4), name
    assert after == one_random
    predicted = ner.predict(docs)  # prediction passes through the wrapper
    assert all(numpy.allclose(p, o, atol=1e-5) for p, o in zip(predicted, one_out))


def test_length_grouped_tok2vec_trains_and_reloads(tiny_bert, tmp_path):
    nlp = grouped_nlp(tiny_bert, 16)
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    losses = {}
    for _ in range(3):
        nlp.update(examples, sgd=optimizer, losses=losses)
    assert losses["bond_moe_ner"] > 0
    nlp.to_disk(tmp_path / "model")
    reloaded = spacy.load(tmp_path / "model")
    assert reloaded.get_pipe("bond_moe_ner").model.get_ref("tok2vec").attrs["tokens"] == 16
    doc, ref = reloaded(TRAIN_DATA[0][0]), nlp(TRAIN_DATA[0][0])
    assert [(e.text, e.label_) for e in doc.ents] == [(e.text, e.label_) for e in ref.ents]


def test_length_grouped_tok2vec_refuses_bad_settings(tiny_bert):
    make = registry.architectures.get("spacy-bond-moe.LengthGroupedTok2Vec.v1")
    with pytest.raises(ValueError, match="tokens must be an integer >= 1"):
        grouped_nlp(tiny_bert, 0)
    listener = registry.architectures.get("spacy-transformers.TransformerListener.v1")(
        grad_factor=1.0, pooling=registry.layers.get("reduce_mean.v1")())
    with pytest.raises(ValueError, match="is a listener"):
        make(listener)
