"""Registered model architectures: a tok2vec encoder (shared or per expert) + K expert heads."""
import copy
from typing import Callable, List, Optional, Tuple

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Linear, Model
from thinc.types import Floats2d, Floats3d

from .util import set_fresh_ids

EXPERT_MODES = ("shared", "separate")


@registry.architectures("spacy-bond-moe.MoETagger.v1")
def build_moe_tagger_v1(
    tok2vec: Model[List[Doc], List[Floats2d]],
    n_experts: int = 3,
    expert_mode: str = "shared",
    nO: Optional[int] = None,
) -> Model[List[Doc], List[Floats3d]]:
    """K token classifiers over token vectors; outputs (n_tokens, K, n_tags) probabilities.

    tok2vec (Model[List[Doc], List[Floats2d]]): The token encoder.
    n_experts (int): K, the number of experts. K=1 is a plain softmax tagger.
    expert_mode (str): "shared" = one encoder and K heads; "separate" = K independent
        encoders (deep copies of `tok2vec`), each with its own head.
    nO (Optional[int]): Number of tags; set by the component from its labels.
    """
    if n_experts < 1:
        raise ValueError(f"n_experts must be >= 1, got {n_experts}")
    if expert_mode not in EXPERT_MODES:
        raise ValueError(f"expert_mode must be one of {EXPERT_MODES}, got {expert_mode!r}")
    if expert_mode == "shared":
        branches = [(tok2vec, build_expert_heads(n_experts, nO))]
    else:
        encoders = [tok2vec] + [set_fresh_ids(copy.deepcopy(tok2vec)) for _ in range(n_experts - 1)]
        branches = [(enc, build_expert_heads(1, nO)) for enc in encoders]
    layers = [layer for branch in branches for layer in branch]
    model: Model[List[Doc], List[Floats3d]] = Model(
        "moe_tagger",
        moe_tagger_forward,
        init=moe_tagger_init,
        layers=layers,
        dims={"nO": nO},
        attrs={"n_experts": n_experts, "expert_mode": expert_mode, "n_branches": len(branches)},
    )
    model.set_ref("tok2vec", tok2vec)
    model.set_ref("output_layer", branches[0][1])
    return model


def _branches(model: Model) -> List[Tuple[Model, Model]]:
    layers = model.layers
    return [(layers[i], layers[i + 1]) for i in range(0, len(layers), 2)]


def moe_tagger_init(model: Model, X: Optional[List[Doc]] = None, Y=None) -> None:
    n_tags = model.get_dim("nO") if model.has_dim("nO") else None
    for tok2vec, heads in _branches(model):
        if n_tags is not None:
            heads.set_dim("nO", n_tags)
        tok2vec.initialize(X=X)
        sample = None
        if X is not None:
            vectors = tok2vec.predict(X)
            if vectors:
                sample = model.ops.flatten(vectors)
        heads.initialize(X=sample)


def moe_tagger_forward(
    model: Model, docs: List[Doc], is_train: bool
) -> Tuple[List[Floats3d], Callable]:
    lengths = model.ops.asarray1i([len(doc) for doc in docs])
    outputs = []
    callbacks = []
    for tok2vec, heads in _branches(model):
        vectors, bp_tok2vec = tok2vec(docs, is_train)
        flat, bp_heads = heads(model.ops.flatten(vectors), is_train)
        outputs.append(flat)
        callbacks.append((bp_tok2vec, bp_heads, heads.attrs["n_experts"]))
    probs = outputs[0] if len(outputs) == 1 else model.ops.xp.concatenate(outputs, axis=1)

    def backprop(d_probs: List[Floats3d]) -> List[Doc]:
        d_flat = model.ops.flatten(d_probs)
        start = 0
        for bp_tok2vec, bp_heads, n_experts in callbacks:
            d_branch = d_flat[:, start : start + n_experts]
            start += n_experts
            if not d_branch.any():
                continue
            d_vectors = bp_heads(model.ops.xp.ascontiguousarray(d_branch))
            bp_tok2vec(model.ops.unflatten(d_vectors, lengths))
        return docs

    return model.ops.unflatten(probs, lengths), backprop


def build_expert_heads(n_experts: int, nO: Optional[int] = None) -> Model[Floats2d, Floats3d]:
    """K linear+softmax heads computed as one (K·nO) linear layer.

    The backward pass takes d(loss)/d(logits) (thinc's Softmax convention).
    """
    return Model(
        "expert_heads",
        expert_heads_forward,
        init=expert_heads_init,
        layers=[Linear()],
        dims={"nO": nO, "nI": None},
        attrs={"n_experts": n_experts},
    )


def expert_heads_init(model: Model, X: Optional[Floats2d] = None, Y=None) -> None:
    if X is not None:
        model.set_dim("nI", X.shape[1])
    linear = model.layers[0]
    linear.set_dim("nO", model.attrs["n_experts"] * model.get_dim("nO"))
    linear.set_dim("nI", model.get_dim("nI"))
    linear.initialize()


def expert_heads_forward(
    model: Model, X: Floats2d, is_train: bool
) -> Tuple[Floats3d, Callable]:
    n_experts = model.attrs["n_experts"]
    n_tags = model.get_dim("nO")
    logits, bp_linear = model.layers[0](X, is_train)
    probs = model.ops.softmax(logits.reshape((X.shape[0], n_experts, n_tags)), axis=-1)

    def backprop(d_logits: Floats3d) -> Floats2d:
        return bp_linear(d_logits.reshape((d_logits.shape[0], n_experts * n_tags)))

    return probs, backprop
