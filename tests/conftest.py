"""Shared fixtures: toy corpora with doc ids, a tiny random BERT built offline."""
from pathlib import Path
from typing import Iterable, List, Tuple

import numpy
import pytest
import spacy
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.util import load_model_from_path

from spacy_bond_moe.em import DOC_ID_KEY

SHARED = Path(__file__).resolve().parents[2] / "shared"

TRAIN_DATA: List[Tuple[str, List[Tuple[int, int, str]]]] = [
    ("I like London and Berlin .", [(7, 13, "LOC"), (18, 24, "LOC")]),
    ("Bob Smith works at Acme .", [(0, 9, "PER"), (19, 23, "ORG")]),
    ("Paris is big .", [(0, 5, "LOC")]),
    ("Mary met John in Rome .", [(0, 4, "PER"), (9, 13, "PER"), (17, 21, "LOC")]),
]


def make_doc(nlp, text: str, ents, doc_id: str) -> Doc:
    doc = nlp.make_doc(text)
    doc.set_ents([doc.char_span(s, e, label=lab) for s, e, lab in ents], default="outside")
    doc.user_data[DOC_ID_KEY] = doc_id
    return doc


def make_examples(nlp, data=TRAIN_DATA, copies: int = 1, prefix: str = "toy") -> List[Example]:
    examples = []
    for c in range(copies):
        for i, (text, ents) in enumerate(data):
            ref = make_doc(nlp, text, ents, f"{prefix}:{c}:{i}")
            examples.append(Example(nlp.make_doc(text), ref))
    return examples


def cnn_moe_model(n_experts: int, width: int = 16, depth: int = 1, embed_size: int = 200) -> dict:
    """Config of a small MoETagger over a HashEmbedCNN tok2vec."""
    tok2vec = {
        "@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": width,
        "depth": depth, "embed_size": embed_size, "window_size": 1, "maxout_pieces": 2,
        "subword_features": True,
    }
    return {"@architectures": "spacy-bond-moe.MoETagger.v1", "n_experts": n_experts, "tok2vec": tok2vec}


def write_docbin(path: Path, docs: List[Doc]) -> Path:
    DocBin(docs=docs, store_user_data=True).to_disk(path)
    return path


def write_toy_corpus(directory: Path) -> Path:
    """train.spacy (TRAIN_DATA six times, 24 docs) and dev.spacy (4 docs) with doc ids."""
    nlp = spacy.blank("en")
    directory.mkdir(parents=True, exist_ok=True)
    train = [make_doc(nlp, t, e, f"toy:train:{c}:{i}") for c in range(6) for i, (t, e) in enumerate(TRAIN_DATA)]
    dev = [make_doc(nlp, t, e, f"toy:dev:{i}") for i, (t, e) in enumerate(TRAIN_DATA)]
    DocBin(docs=train, store_user_data=True).to_disk(directory / "train.spacy")
    DocBin(docs=dev, store_user_data=True).to_disk(directory / "dev.spacy")
    return directory


@pytest.fixture
def nlp():
    return spacy.blank("en")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 16-wide random BERT with a word-level vocabulary (no network)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def build_tiny_bert(directory: Path) -> Path:
    """Write the tiny random BERT of `tiny_bert` into `directory`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w.lower() for text, _ in TRAIN_DATA for w in text.split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf8")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(str(directory))
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(directory))
    return directory


def trf_tok2vec_config(name: str) -> dict:
    return {
        "@architectures": "spacy-transformers.Tok2VecTransformer.v3",
        "name": name,
        "tokenizer_config": {"use_fast": True},
        "get_spans": {"@span_getters": "spacy-transformers.strided_spans.v1", "window": 64, "stride": 48},
        "pooling": {"@layers": "reduce_first.v1"},
        "grad_factor": 1.0,
    }


def assert_roundtrip_predicts_the_same(nlp, path: Path, texts: Iterable[str]) -> None:
    """`nlp` saved to `path` and loaded back gives the same `bond_moe_ner` probabilities."""
    nlp.to_disk(path)
    reloaded = load_model_from_path(path)
    for text in texts:
        p1 = nlp.get_pipe("bond_moe_ner").predict([nlp.make_doc(text)])[0]
        p2 = reloaded.get_pipe("bond_moe_ner").predict([reloaded.make_doc(text)])[0]
        assert numpy.allclose(p1, p2, atol=1e-5)
