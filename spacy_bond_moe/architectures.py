"""Registered model architectures: a tok2vec encoder (shared or per expert) + K expert heads."""
import copy
import random
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Linear, Model
from thinc.types import Floats2d, Floats3d, Ints1d, Ragged

from .tags import blank_mask
from .util import require_int, set_fresh_ids

if TYPE_CHECKING:  # the annotation only; torch is imported where the encoder needs it
    import torch

# Encoders that read annotations an upstream component set on the very same Doc objects.
LISTENER_NAMES = ("tok2vec-listener", "transformer-listener")
# Padded tokens per encoder call at prediction: the best of 256-2048 for MiniLM on CoNLL03 test
# (2-core CPU), and no slower for the CNN encoder (benchmarks/README.md, "Inference speed").
PREDICT_TOKENS = 512

# Number format of the PyTorch encoder at prediction (`bond_moe_ner`'s `inference`).
Inference = Literal["fp32", "int8"]
INFERENCE = ("fp32", "int8")
ExpertMode = Literal["shared", "separate"]
EXPERT_MODES = ("shared", "separate")
# Model attr: a learning-rate multiplier for a layer and everything under it (see
# `BondMoENER.finish_update`).
LR_SCALE_ATTR = "bond_moe_lr_scale"


@registry.architectures("spacy-bond-moe.MoETagger.v1")
def build_moe_tagger_v1(
    tok2vec: Model[List[Doc], List[Floats2d]],
    n_experts: int = 3,
    expert_mode: ExpertMode = "shared",
    nO: Optional[int] = None,
) -> Model[List[Doc], List[Floats3d]]:
    """K token classifiers over token vectors; outputs (n_tokens, K, n_tags) probabilities.

    tok2vec (Model[List[Doc], List[Floats2d]]): The token encoder.
    n_experts (int): K, the number of experts. K=1 is a plain softmax tagger.
    expert_mode (str): "shared" = one encoder and K heads; "separate" = K independent
        encoders (deep copies of `tok2vec`), each with its own head.
    nO (Optional[int]): Number of tags; set by the component from its labels.
    """
    require_int("MoETagger", "n_experts", n_experts, 1)
    if expert_mode not in EXPERT_MODES:
        raise ValueError(f"expert_mode must be one of {EXPERT_MODES}, got {expert_mode!r}")
    if expert_mode == "shared":
        branches = [(tok2vec, build_expert_heads(n_experts, nO))]
    else:
        encoders = [tok2vec] + [set_fresh_ids(copy.deepcopy(tok2vec)) for _ in range(n_experts - 1)]
        branches = [(enc, build_expert_heads(1, nO)) for enc in encoders]
    return _moe_tagger(branches, expert_mode, nO)


def _moe_tagger(
    branches: Sequence[Tuple[Model, Model]], expert_mode: ExpertMode, nO: Optional[int]
) -> Model[List[Doc], List[Floats3d]]:
    """The tagger over (encoder, heads) branches; its experts are the branches' heads in order."""
    n_experts = sum(heads.attrs["n_experts"] for _, heads in branches)
    model: Model[List[Doc], List[Floats3d]] = Model(
        "moe_tagger",
        moe_tagger_forward,
        init=moe_tagger_init,
        layers=[layer for branch in branches for layer in branch],
        dims={"nO": nO},
        attrs={"n_experts": n_experts, "expert_mode": expert_mode, "n_branches": len(branches)},
    )
    model.set_ref("tok2vec", branches[0][0])
    model.set_ref("output_layer", branches[0][1])
    return model


def merge_taggers(taggers: Sequence[Model]) -> Model[List[Doc], List[Floats3d]]:
    """One "separate" tagger whose K experts are K trained single-expert taggers (their own
    layers, not copies): what `MoETagger.v1` with `expert_mode = "separate"` and
    `n_experts = K` builds, so the result saves and loads as that config."""
    for tagger in taggers:
        if tagger.attrs["n_experts"] != 1 or tagger.attrs["n_branches"] != 1:
            raise ValueError(f"merge_taggers: each tagger must have one expert, got "
                             f"{tagger.attrs['n_experts']}")
        if _is_listener(tagger.layers[0]):
            raise ValueError("merge_taggers: a tagger listening to a shared encoder cannot be merged")
    n_tags = {tagger.get_dim("nO") for tagger in taggers}
    if len(n_tags) != 1:
        raise ValueError(f"merge_taggers: the taggers have different numbers of tags: {sorted(n_tags)}")
    return _moe_tagger([(t.layers[0], t.layers[1]) for t in taggers], "separate", n_tags.pop())


def without_blanks(doc: Doc, blank: numpy.ndarray) -> Doc:
    """`doc` without its blank tokens (`tags.blank_mask`): the tokens of the same text
    with a single space where blank tokens were (what the encoder sees)."""
    words: List[str] = []
    spaces: List[bool] = []
    norms: List[str] = []  # token norms (tokenizer exceptions: "n't" -> "not"), not the lexemes'
    gap = False
    for token, is_blank in zip(doc, blank):
        if is_blank:
            gap = True
            continue
        if gap and spaces:
            spaces[-1] = True
        gap = False
        words.append(token.text)
        spaces.append(bool(token.whitespace_))
        norms.append(token.norm_)
    compact = Doc(doc.vocab, words=words, spaces=spaces)
    for token, norm in zip(compact, norms):
        token.norm_ = norm
    return compact


def encoder_inputs(docs: List[Doc], compact: bool) -> Tuple[List[Doc], List[Optional[Ints1d]]]:
    """The docs the encoder sees and, per doc with blank tokens, the indices of its
    other tokens (None: no blank token, the doc is encoded as it is).

    compact (bool): Encode docs with blank tokens without them (False for listener
        encoders, which must see the upstream component's own Doc objects).
    """
    inputs: List[Doc] = []
    kept: List[Optional[Ints1d]] = []
    for doc in docs:
        blank = blank_mask(doc)
        if not blank.any():
            inputs.append(doc)
            kept.append(None)
            continue
        kept.append(numpy.flatnonzero(~blank))
        inputs.append(without_blanks(doc, blank) if compact else doc)
    return inputs, kept


def length_groups(lengths: Sequence[int], budget: int) -> List[List[int]]:
    """Indices grouped by length, shortest first; a group grows while its size times its
    longest length stays within `budget` tokens (at least one index per group)."""
    groups: List[List[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and (len(groups[-1]) + 1) * max(lengths[i], 1) <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def predict_in_length_groups(model: Model, docs: List[Doc], budget: int) -> List[Floats3d]:
    """`model.predict(docs)` in groups of similar length, in the docs' order: an encoder
    pads every call to its longest input, so mixed lengths in one call mostly compute
    padding (a listener encoder, bound to its upstream batch, gets the docs at once)."""
    if _is_listener(model.layers[0]):
        return model.predict(docs)
    output: List[Optional[Floats3d]] = [None] * len(docs)
    groups = length_groups([len(doc) for doc in docs], budget)
    for group, probs in _in_groups(docs, groups, model.predict):
        for i, p in zip(group, probs):
            output[i] = p
    return output  # type: ignore[return-value]


def _in_groups(
    docs: List[Doc], groups: List[List[int]], call: Callable[[List[Doc]], Any]
) -> List[Tuple[List[int], Any]]:
    """`call` on the docs of each group (`length_groups`): (indices, result) per group.

    spacy-transformers draws from Python's global `random` once per forward pass
    (`maybe_flush_pytorch_cache`), which also shuffles spaCy's training batches: the stream
    is left as one call would leave it (as after the first group that drew), so that how a
    batch is split never changes a training run."""
    results = []
    after_one_call = None
    for group in groups:
        before = random.getstate() if after_one_call is None else None
        results.append((group, call([docs[i] for i in group])))
        if before is not None and random.getstate() != before:
            after_one_call = random.getstate()
    if after_one_call is not None:
        random.setstate(after_one_call)
    return results


class Int8Encoders:
    """Dynamic int8 copies (torch's `quantize_dynamic`: int8 weights, activations quantized
    per call) of the `torch.nn.Linear` layers of every PyTorch encoder in a model, swapped in
    for prediction only: training, serialisation and the fp32 weights are untouched. A copy
    is made on first use and again whenever its shim holds another module (after a load);
    `clear` drops them after the weights change in place (an update)."""

    def __init__(self) -> None:
        self._copies: Dict[int, Tuple[Any, Any]] = {}  # id(shim): (fp32 module, int8 copy)
        self._warned = False

    def clear(self) -> None:
        self._copies.clear()

    def _shims(self, model: Model) -> List[Any]:
        import torch

        return [shim for node in model.walk() for shim in node.shims
                if isinstance(getattr(shim, "_model", None), torch.nn.Module)]

    def _warn(self, why: str) -> None:
        if not self._warned:
            warnings.warn(f"[bond_moe_ner] inference = \"int8\" has no effect: {why}; "
                          f"predicting in fp32", stacklevel=3)
            self._warned = True

    def _int8_copy(self, module: Any) -> Any:
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's deprecation notices, once per copy
                return torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(module), {torch.nn.Linear}, dtype=torch.qint8)
        except (AttributeError, RuntimeError) as err:
            raise RuntimeError(f"[bond_moe_ner] inference = \"int8\": this torch "
                               f"({torch.__version__}) cannot quantize the encoder ({err}); "
                               f"load the pipeline with inference = \"fp32\"") from None

    @contextmanager
    def swapped_in(self, model: Model) -> Iterator[None]:
        """Within the block, every CPU PyTorch encoder of `model` predicts with its int8 copy."""
        shims = self._shims(model)
        if not shims:
            self._warn("the model has no PyTorch encoder of its own (a CNN or a listener)")
        elif any(p.device.type != "cpu" for s in shims for p in s._model.parameters()):
            self._warn("int8 kernels run on CPU only and the encoder is on another device")
            shims = []
        for shim in shims:
            entry = self._copies.get(id(shim))
            if entry is None or entry[0] is not shim._model:
                self._copies[id(shim)] = (shim._model, self._int8_copy(shim._model))
        originals = [shim._model for shim in shims]
        try:
            for shim in shims:
                shim._model = self._copies[id(shim)][1]
            yield
        finally:
            for shim, module in zip(shims, originals):
                shim._model = module


def _is_listener(tok2vec: Model) -> bool:
    return any(node.name in LISTENER_NAMES for node in tok2vec.walk())


def _branches(model: Model) -> List[Tuple[Model, Model]]:
    layers = model.layers
    return [(layers[i], layers[i + 1]) for i in range(0, len(layers), 2)]


def moe_tagger_init(model: Model, X: Optional[List[Doc]] = None, Y=None) -> None:
    n_tags = model.get_dim("nO") if model.has_dim("nO") else None
    if X is not None:
        X = encoder_inputs(X, compact=not _is_listener(model.layers[0]))[0]
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
    """Blank tokens (whitespace, U+200B, ...) are not encoded (or, with a listener
    encoder, their encoding is ignored): their output is a fixed one-hot "O" for every
    expert, with no gradient."""
    n_experts = model.attrs["n_experts"]
    compact = not _is_listener(model.layers[0])
    inputs, kept = encoder_inputs(docs, compact)
    lengths = model.ops.asarray1i([len(doc) for doc in inputs])
    if not compact or int(lengths.sum()) > 0:
        probs, bp_encoded = _encode(model, inputs, lengths, is_train)
    else:  # nothing but blank tokens: the encoder has no input
        probs = model.ops.alloc3f(0, n_experts, model.get_dim("nO"))
        bp_encoded = None
    encoded = model.ops.unflatten(probs, lengths)
    outputs = [
        p if keep is None else _expand(model, p, keep, len(doc), compact)
        for doc, p, keep in zip(docs, encoded, kept)
    ]

    def backprop(d_outputs: List[Floats3d]) -> List[Doc]:
        if bp_encoded is not None:
            d_encoded = [
                d if keep is None else _gather(model, d, keep, compact)
                for d, keep in zip(d_outputs, kept)
            ]
            bp_encoded(model.ops.flatten(d_encoded))
        return docs

    return outputs, backprop


def _encode(
    model: Model, docs: List[Doc], lengths: Ints1d, is_train: bool
) -> Tuple[Floats3d, Callable[[Floats3d], None]]:
    """(n_tokens, K, C) probabilities of every branch over the docs' tokens, flattened."""
    outputs = []
    callbacks = []
    for tok2vec, heads in _branches(model):
        vectors, bp_tok2vec = tok2vec(docs, is_train)
        flat, bp_heads = heads(model.ops.flatten(vectors), is_train)
        outputs.append(flat)
        callbacks.append((bp_tok2vec, bp_heads, heads.attrs["n_experts"]))
    probs = outputs[0] if len(outputs) == 1 else model.ops.xp.concatenate(outputs, axis=1)

    def backprop(d_flat: Floats3d) -> None:
        start = 0
        for bp_tok2vec, bp_heads, n_experts in callbacks:
            d_branch = d_flat[:, start : start + n_experts]
            start += n_experts
            if not d_branch.any():
                continue
            d_vectors = bp_heads(model.ops.xp.ascontiguousarray(d_branch))
            bp_tok2vec(model.ops.unflatten(d_vectors, lengths))

    return probs, backprop


def _expand(model: Model, probs: Floats3d, keep: Ints1d, n_tokens: int, compact: bool) -> Floats3d:
    """A doc's output with one-hot "O" at its blank tokens."""
    full = model.ops.alloc3f(n_tokens, probs.shape[1], probs.shape[2])
    full[:, :, 0] = 1.0
    full[keep] = probs if compact else probs[keep]
    return full


def _gather(model: Model, d_full: Floats3d, keep: Ints1d, compact: bool) -> Floats3d:
    """The gradient of the encoded tokens (none flows to blank tokens)."""
    if compact:
        return model.ops.xp.ascontiguousarray(d_full[keep])
    d_encoded = model.ops.alloc3f(*d_full.shape)
    d_encoded[keep] = d_full[keep]
    return d_encoded


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


@registry.layers("spacy-bond-moe.empty_safe_pooling.v1")
def build_empty_safe_pooling_v1(pooling: Model[Ragged, Floats2d]) -> Model[Ragged, Floats2d]:
    """`pooling` (e.g. `reduce_first.v1`) over the word-pieces of each token, and a zero
    vector for a token without word-pieces (characters the word-piece tokenizer drops,
    such as U+200B), where thinc's `reduce_first/last/max` raise."""
    return Model("empty_safe_pooling", empty_safe_pooling_forward, layers=[pooling])


def empty_safe_pooling_forward(
    model: Model, X: Ragged, is_train: bool
) -> Tuple[Floats2d, Callable]:
    pooling = model.layers[0]
    nonempty = X.lengths > 0
    if bool(nonempty.all()):
        return pooling(X, is_train)
    Y = model.ops.alloc2f(X.lengths.shape[0], X.dataXd.shape[1])
    bp_inner = None
    if bool(nonempty.any()):
        pooled, bp_inner = pooling(Ragged(X.dataXd, X.lengths[nonempty]), is_train)
        Y[nonempty] = pooled

    def backprop(dY: Floats2d) -> Ragged:
        if bp_inner is None:
            return Ragged(model.ops.alloc2f(*X.dataXd.shape), X.lengths)
        return Ragged(bp_inner(model.ops.xp.ascontiguousarray(dY[nonempty])).dataXd, X.lengths)

    return Y, backprop


@registry.architectures("spacy-bond-moe.CaseAwareTok2Vec.v1")
def build_case_aware_tok2vec_v1(
    encoder: Model[List[Doc], List[Floats2d]],
    features: Model[List[Doc], List[Floats2d]],
    mixer: Optional[Model[List[Floats2d], List[Floats2d]]] = None,
    features_lr_scale: float = 1.0,
) -> Model[List[Doc], List[Floats2d]]:
    """Token vectors of `encoder` (e.g. a lower-casing transformer) concatenated with
    `features`, an embedding of case-bearing lexical attributes (`spacy.MultiHashEmbed.v2`
    with SHAPE, PREFIX, SUFFIX), optionally mixed by `mixer` (a residual window encoder
    over the concatenated width, such as `spacy.MaxoutWindowEncoder.v2`).

    features_lr_scale (float): Learning-rate multiplier of `features` and `mixer`
        (freshly initialised) relative to the encoder; `bond_moe_ner` applies it.
    """
    if features_lr_scale <= 0:
        raise ValueError(f"features_lr_scale must be > 0, got {features_lr_scale}")
    fresh = [features] if mixer is None else [features, mixer]
    for layer in fresh:
        layer.attrs[LR_SCALE_ATTR] = features_lr_scale
    model: Model[List[Doc], List[Floats2d]] = Model(
        "case_aware_tok2vec",
        case_aware_forward,
        init=case_aware_init,
        layers=[encoder, *fresh],
        dims={"nO": None},
    )
    model.set_ref("encoder", encoder)
    return model


def case_aware_init(model: Model, X: Optional[List[Doc]] = None, Y=None) -> None:
    encoder, features, *mixer = model.layers
    encoder.initialize(X=X)
    features.initialize(X=X)
    width = None
    if X is not None:
        sample = [x for x in X if len(x)][:8] or X[:1]
        concatenated = _hstack(model, encoder.predict(sample), features.predict(sample))
        if concatenated:
            width = concatenated[0].shape[1]
        if mixer:
            mixer[0].initialize(X=concatenated)
    elif mixer:
        mixer[0].initialize()
    if width is not None:
        model.set_dim("nO", width)


def case_aware_forward(
    model: Model, docs: List[Doc], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    encoder, features, *mixer = model.layers
    encoded, bp_encoder = encoder(docs, is_train)
    featured, bp_features = features(docs, is_train)
    split = encoded[0].shape[1] if docs else 0  # the encoder's columns come first
    vectors = _hstack(model, encoded, featured)
    bp_mixer = None
    if mixer:
        vectors, bp_mixer = mixer[0](vectors, is_train)

    def backprop(d_vectors: List[Floats2d]) -> List[Doc]:
        if bp_mixer is not None:
            d_vectors = bp_mixer(d_vectors)
        xp = model.ops.xp
        bp_encoder([xp.ascontiguousarray(d[:, :split]) for d in d_vectors])
        bp_features([xp.ascontiguousarray(d[:, split:]) for d in d_vectors])
        return docs

    return vectors, backprop


def _hstack(model: Model, left: List[Floats2d], right: List[Floats2d]) -> List[Floats2d]:
    return [model.ops.xp.hstack((a, b)) for a, b in zip(left, right)]


@registry.architectures("spacy-bond-moe.FrozenTorchParams.v1")
def build_frozen_torch_params_v1(
    tok2vec: Model[List[Doc], List[Floats2d]],
    frozen: List[str] = ["embeddings.word_embeddings."],
) -> Model[List[Doc], List[Floats2d]]:
    """`tok2vec` with the PyTorch parameters whose names start with one of `frozen` left
    untrained: no gradient, no optimizer state. The default freezes a BERT-style
    transformer's word-piece embedding table (11.7M of MiniLM-L6's 22.7M parameters,
    the largest dense gradient and Adam update of a step); "embeddings." or
    "encoder.layer.0." freeze more. Every prefix must name at least one parameter."""
    if not frozen or not all(isinstance(p, str) and p for p in frozen):
        raise ValueError(f"[FrozenTorchParams] frozen must be a list of parameter-name prefixes, "
                         f"got {frozen!r}")
    model: Model[List[Doc], List[Floats2d]] = Model(
        "frozen_torch_params",
        frozen_forward,
        init=frozen_init,
        layers=[tok2vec],
        dims={"nO": None},
        attrs={"frozen": list(frozen)},
    )
    return model


def _torch_params(model: Model) -> Iterator[Tuple[str, "torch.nn.Parameter"]]:
    """(name, tensor) of every PyTorch parameter inside the wrapped encoder's shims."""
    for node in model.layers[0].walk():
        for shim in node.shims:
            module = getattr(shim, "_model", None)
            if module is not None and hasattr(module, "named_parameters"):
                yield from module.named_parameters()


def _freeze(model: Model) -> None:
    """Switch off the gradients of the matching torch parameters (again after a load
    rebuilds the torch module)."""
    prefixes = tuple(model.attrs["frozen"])
    for name, tensor in _torch_params(model):
        if name.startswith(prefixes):
            tensor.requires_grad_(False)
            tensor.grad = None


def _init_wrapped(model: Model, X: Optional[List[Doc]] = None, Y=None) -> None:
    """Initialize a tok2vec wrapper's one inner layer and take over its width."""
    inner = model.layers[0]
    inner.initialize(X=X)
    if inner.has_dim("nO") is True:  # None: the dimension exists but is unset
        model.set_dim("nO", inner.get_dim("nO"))


def frozen_init(model: Model, X: Optional[List[Doc]] = None, Y=None) -> None:
    _init_wrapped(model, X)
    names = [name for name, _ in _torch_params(model)]
    for prefix in model.attrs["frozen"]:
        if not any(name.startswith(prefix) for name in names):
            sample = ", ".join(sorted({n.rsplit(".", 1)[0] for n in names})[:6]) or "none"
            raise ValueError(f"[FrozenTorchParams] no PyTorch parameter starts with {prefix!r} "
                             f"(the encoder's start with: {sample}, ...)")
    _freeze(model)


def frozen_forward(
    model: Model, docs: List[Doc], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    if is_train:
        _freeze(model)
    return model.layers[0](docs, is_train)


@registry.architectures("spacy-bond-moe.LengthGroupedTok2Vec.v1")
def build_length_grouped_tok2vec_v1(
    tok2vec: Model[List[Doc], List[Floats2d]],
    tokens: int = 1024,
) -> Model[List[Doc], List[Floats2d]]:
    """`tok2vec` called once per group of similar length within each training batch (at
    most `tokens` padded tokens a group, `length_groups`) and backpropagated group by
    group: the same batches and the same gradient as one call (float noise and dropout
    draws aside), without padding every sentence to the batch's longest. Prediction
    passes through (`predict` groups already). Inline encoders only, not listeners."""
    require_int("LengthGroupedTok2Vec", "tokens", tokens, 1)
    if _is_listener(tok2vec):
        raise ValueError("[LengthGroupedTok2Vec] tok2vec is a listener: its upstream component "
                         "encodes the whole batch, so there is nothing to group; wrap an inline "
                         "encoder instead")
    return Model(
        "length_grouped_tok2vec",
        length_grouped_forward,
        init=_init_wrapped,
        layers=[tok2vec],
        dims={"nO": None},
        attrs={"tokens": tokens},
    )


def length_grouped_forward(
    model: Model, docs: List[Doc], is_train: bool
) -> Tuple[List[Floats2d], Callable]:
    inner = model.layers[0]
    groups = length_groups([len(doc) for doc in docs], model.attrs["tokens"]) if is_train else []
    if len(groups) < 2:  # prediction, or a batch that fits one call
        return inner(docs, is_train)
    calls = _in_groups(docs, groups, lambda group: inner(group, is_train))
    vectors: List[Optional[Floats2d]] = [None] * len(docs)
    for indices, (group_vectors, _) in calls:
        for i, v in zip(indices, group_vectors):
            vectors[i] = v

    def backprop(d_vectors: List[Floats2d]) -> List[Doc]:
        for indices, (_, bp_group) in calls:
            bp_group([d_vectors[i] for i in indices])
        return docs

    return vectors, backprop  # type: ignore[return-value]
