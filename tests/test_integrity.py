"""Safe, verified loading: digest of the weights, truncated/corrupt files, a pickle of code in
the transformer weights, labels that do not fit the weights."""
import os
import pickle

import pytest
import spacy
import srsly

from spacy_bond_moe.integrity import digest, digest_path

from .conftest import TRAIN_DATA, make_examples, trf_tok2vec_config


def saved_pipeline(path, tok2vec=None):
    nlp = spacy.blank("en")
    model = {"@architectures": "spacy-bond-moe.MoETagger.v1", "n_experts": 1}
    if tok2vec is not None:
        model["tok2vec"] = tok2vec
    nlp.add_pipe("bond_moe_ner", config={"model": model})
    nlp.initialize(lambda: make_examples(nlp))
    nlp.to_disk(path)
    return nlp, path / "bond_moe_ner" / "model"


def test_to_disk_writes_a_digest_and_loads_back(tmp_path):
    nlp, weights = saved_pipeline(tmp_path)
    assert digest_path(weights).read_text().strip() == digest(weights.read_bytes())
    reloaded = spacy.load(tmp_path)
    text = TRAIN_DATA[0][0]
    assert [e.text for e in reloaded(text).ents] == [e.text for e in nlp(text).ents]
    digest_path(weights).unlink()  # pipelines saved before the digest still load
    spacy.load(tmp_path)


def test_changed_bytes_are_refused_naming_the_file(tmp_path):
    _, weights = saved_pipeline(tmp_path)
    data = bytearray(weights.read_bytes())
    for i in range(100, len(data), len(data) // 50):  # 50 flipped bytes
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model does not match its digest model\.sha256"):
        spacy.load(tmp_path)


def test_truncated_weights_without_digest_give_one_line_naming_the_file(tmp_path):
    _, weights = saved_pipeline(tmp_path)
    weights.write_bytes(weights.read_bytes()[: 1000])
    digest_path(weights).unlink()
    with pytest.raises(ValueError, match=r"cannot load the weights in .*bond_moe_ner/model: ") as err:
        spacy.load(tmp_path)
    assert "\n" not in str(err.value)


class Payload:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_of_code_in_the_transformer_weights_is_refused(tmp_path, tiny_bert, monkeypatch):
    _, weights = saved_pipeline(tmp_path / "nlp", trf_tok2vec_config(str(tiny_bert)))
    marker = tmp_path / "pwned"
    msg = srsly.msgpack_loads(weights.read_bytes())
    replaced = 0
    for node_shims in msg["shims"]:
        for i, shim_bytes in enumerate(node_shims):
            shim = srsly.msgpack_loads(shim_bytes)
            shim["state"] = pickle.dumps(Payload(str(marker)))
            node_shims[i] = srsly.msgpack_dumps(shim)
            replaced += 1
    assert replaced == 1
    weights.write_bytes(srsly.msgpack_dumps(msg))
    digest_path(weights).write_text(digest(weights.read_bytes()))  # an attacker updates it too
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # even with torch's opt-out set
    with pytest.raises(ValueError, match=r"cannot load the weights in .*bond_moe_ner/model: Unpickling"):
        spacy.load(tmp_path / "nlp")
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # the environment is restored
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_labels_that_do_not_fit_the_weights(tmp_path):
    saved_pipeline(tmp_path)
    cfg_path = tmp_path / "bond_moe_ner" / "cfg"
    cfg = srsly.read_json(cfg_path)
    cfg["labels"] = cfg["labels"][:-1]
    srsly.write_json(cfg_path, cfg)
    with pytest.raises(ValueError, match=r"cfg lists 2 labels \(5 BIO tags\) but the weights have 7 outputs"):
        spacy.load(tmp_path)
