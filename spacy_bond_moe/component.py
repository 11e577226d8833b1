"""The `bond_moe_ner` pipeline component: K experts, hard-EM routing, self-training."""
import time
from itertools import islice
from pathlib import Path
from typing import (
    Any, Callable, Dict, Iterable, Iterator, List, Literal, Optional, Sequence, Tuple, Union,
)

import numpy
import srsly
from spacy import util
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer, set_dropout_rate
from thinc.types import Floats3d

from . import em
from .architectures import (
    INFERENCE, LR_SCALE_ATTR, PREDICT_TOKENS, Inference, Int8Encoders, predict_in_length_groups,
)
from .denoise import LabelFilter
from .integrity import load_model_bytes, read_verified, write_model
from .losses import (
    EPS,
    DistantLoss,
    build_cross_entropy_v1,
    soft_cross_entropy,
    token_nll,
    weighted_expert_loss,
)
from .tags import (
    FORBIDDEN,
    MISSING,
    blank_mask,
    example_tag_ids,
    make_tags,
    tags_to_spans,
    transition_mask,
    viterbi_decode,
)
from .teacher import PseudoLabeller, Source, Targets, Teacher, build_soft_pseudo_labels_v1
from .util import bond_pipe_name

EXPERT_EXTENSION = "bond_moe_expert"
Combine = Literal["mean", "weighted"]

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy-bond-moe.MoETagger.v1"
n_experts = 3
expert_mode = "shared"

[model.tok2vec]
@architectures = "spacy.HashEmbedCNN.v2"
pretrained_vectors = null
width = 96
depth = 4
embed_size = 2000
window_size = 1
maxout_pieces = 3
subword_features = true
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]


def install_extensions() -> None:
    """Register `Doc._.bond_moe_expert` (idempotent; also run in worker processes)."""
    if not Doc.has_extension(EXPERT_EXTENSION):
        Doc.set_extension(EXPERT_EXTENSION, default=None)


@Language.factory(
    "bond_moe_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type", "doc.spans"],
    default_config={
        "model": DEFAULT_MODEL,
        "assigner": {"@misc": "spacy-bond-moe.sinkhorn_assigner.v1"},
        "pseudo_labeller": {"@misc": "spacy-bond-moe.soft_pseudo_labels.v1"},
        "distant_loss": {"@misc": "spacy-bond-moe.cross_entropy.v1"},
        "label_filter": None,
        "combine": "mean",
        "head_lr_scale": 1.0,
        "inference": "fp32",
        "spans_key": "bond_moe",
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_bond_moe_ner(
    nlp: Language,
    name: str,
    model: Model[List[Doc], List[Floats3d]],
    assigner: em.Assigner,
    pseudo_labeller: PseudoLabeller,
    distant_loss: DistantLoss,
    label_filter: Optional[LabelFilter],
    combine: Combine,
    head_lr_scale: float,
    inference: Inference,
    spans_key: str,
    scorer: Optional[Callable],
) -> "BondMoENER":
    """Create a BondMoENER component (see `BondMoENER` for the arguments)."""
    return BondMoENER(
        nlp.vocab, model, name, assigner=assigner, pseudo_labeller=pseudo_labeller,
        distant_loss=distant_loss, label_filter=label_filter, combine=combine,
        head_lr_scale=head_lr_scale, inference=inference, spans_key=spans_key, scorer=scorer,
    )


class BondMoENER(TrainablePipe):
    """Mixture-of-experts BIO tagger for distantly supervised NER (BOND-MoE).

    assigner (em.Assigner): The E-step (`spacy-bond-moe.sinkhorn_assigner.v1` or
        `spacy-bond-moe.argmax_assigner.v1`).
    pseudo_labeller (PseudoLabeller): The teacher's targets in self-training
        (`spacy-bond-moe.soft_pseudo_labels.v1` or `spacy-bond-moe.hard_pseudo_labels.v1`).
    distant_loss (DistantLoss): Stage I's loss on the distant labels
        (`spacy-bond-moe.cross_entropy.v1` or `spacy-bond-moe.gce.v1`).
    label_filter (Optional[LabelFilter]): Stage I's noisy-label removal
        (`spacy-bond-moe.confidence_filter.v1`), run by the schedule callback every
        `filter_every` steps; None: every distant label is used.
    combine (str): "mean" averages the experts' probabilities; "weighted" weights them
        by the share of training documents each expert was assigned at the last E-step.
    head_lr_scale (float): Learning-rate multiplier of the expert heads relative to the
        encoder (randomly initialised heads over a pretrained encoder learn faster).
    inference (str): "fp32", or "int8": `predict` (hence `nlp(...)`, `nlp.pipe` and the dev
        scores during training) runs the PyTorch encoder's Linear layers as dynamic int8
        copies (CPU only; the weights stay fp32, and training, the E-step and the teacher
        always use them). Part of the config, so it survives `to_disk` and `spacy package`;
        switch a trained pipeline with `spacy.load(path, config={"components":
        {"bond_moe_ner": {"inference": "int8"}}})`.
    spans_key (str): `doc.spans` key of the confidence span group.

    Training-only state (never serialised): `router` (routing of training documents),
    `teacher` (self-training), `kept_labels` (the label filter's masks per document) and
    `route_updates`, which the schedule callback (`spacy-bond-moe.em_schedule.v3`)
    switches off for a shared stage I.
    `predict_tokens` (not serialised either): the padded-token budget of one encoder call
    at prediction (a GPU may want more).
    """

    def __init__(
        self,
        vocab: Vocab,
        model: Model[List[Doc], List[Floats3d]],
        name: str = "bond_moe_ner",
        *,
        assigner: Optional[em.Assigner] = None,
        pseudo_labeller: Optional[PseudoLabeller] = None,
        distant_loss: Optional[DistantLoss] = None,
        label_filter: Optional[LabelFilter] = None,
        combine: Combine = "mean",
        head_lr_scale: float = 1.0,
        inference: Inference = "fp32",
        spans_key: str = "bond_moe",
        scorer: Optional[Callable] = None,
    ) -> None:
        if combine not in ("mean", "weighted"):
            raise ValueError(f"[bond_moe_ner] combine must be 'mean' or 'weighted', got {combine!r}")
        if inference not in INFERENCE:
            raise ValueError(f"[bond_moe_ner] inference must be one of {', '.join(INFERENCE)}, "
                             f"got {inference!r}")
        if head_lr_scale <= 0:
            raise ValueError(f"[bond_moe_ner] head_lr_scale must be > 0, got {head_lr_scale}")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        self.head_lr_scale = head_lr_scale
        self._inference = inference
        self._int8 = Int8Encoders()
        n_experts = model.attrs["n_experts"]
        self.cfg: Dict[str, Any] = {
            "labels": [],
            "spans_key": spans_key,
            "combine": combine,
            "expert_prior": [1.0 / n_experts] * n_experts,
        }
        self.router = em.Router(n_experts, assigner or em.build_sinkhorn_assigner_v1())
        self.teacher = Teacher(pseudo_labeller or build_soft_pseudo_labels_v1(), self.combine,
                               self._encode)
        self.distant_loss = distant_loss or build_cross_entropy_v1()
        self.label_filter = label_filter
        self.kept_labels: Dict[str, numpy.ndarray] = {}
        self.route_updates = True
        self.predict_tokens = PREDICT_TOKENS
        self.resumed_at: Optional[int] = None
        self._events: List[Dict[str, Any]] = []
        install_extensions()

    # ----------------------------------------------------------------- labels
    @property
    def inference(self) -> str:
        """The factory's `inference` (read-only: the saved config holds it)."""
        return self._inference

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.cfg["labels"])

    @property
    def label_data(self) -> List[str]:
        return list(self.labels)

    @property
    def tags(self) -> List[str]:
        return make_tags(self.labels)

    @property
    def n_experts(self) -> int:
        return self.model.attrs["n_experts"]

    def add_label(self, label: str) -> int:
        if not isinstance(label, str):
            raise ValueError(f"[bond_moe_ner] labels must be strings, got {label!r}")
        if not label.strip():
            raise ValueError(f"[bond_moe_ner] labels must be non-empty, got {label!r}")
        if label in self.labels:
            return 0
        self._allow_extra_label()
        self.cfg["labels"].append(label)
        self.vocab.strings.add(label)
        return 1

    def _allow_extra_label(self) -> None:
        if self.model.has_dim("nO") and self.model.get_dim("nO") is not None:
            raise ValueError(
                f"[bond_moe_ner] cannot add a label to an initialized component "
                f"(labels: {list(self.labels)}); re-initialize with the new label set"
            )

    def _require_labels(self) -> None:
        if not self.labels:
            raise ValueError(
                "[bond_moe_ner] no entity labels: pass `labels` to initialize "
                "([initialize.components.bond_moe_ner] labels = [...]) or give training "
                "examples with entities"
            )

    # ------------------------------------------------------------- initialize
    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
        teacher: Optional[Path] = None,
    ) -> None:
        """Set labels, size the heads, deal the training documents to experts and let the
        distant loss read the corpus (`uncertain_o = "proper"` counts its casing).

        teacher (Optional[Path]): A trained pipeline (e.g. a `merge` of seeds) whose
            `bond_moe_ner` is the first teacher of self-training instead of the student's
            snapshot: the student is distilled from it (`adopt_teacher`).
        """
        validate_get_examples(get_examples, "BondMoENER.initialize")
        examples = list(get_examples())
        if labels is not None:
            for label in labels:
                self.add_label(label)
        else:
            for label in sorted({ent.label_ for eg in examples for ent in eg.reference.ents}):
                self.add_label(label)
        self._require_labels()
        self.model.set_dim("nO", len(self.tags))
        sample = [eg.predicted for eg in islice(examples, 10)]
        self.model.initialize(X=sample or None)
        self._int8.clear()
        self.router.deal([em.doc_key(eg.reference) for eg in examples])
        self.distant_loss.initialize(eg.predicted for eg in examples)
        if teacher is not None:
            self.adopt_teacher(teacher)

    def adopt_teacher(self, path: Union[str, Path]) -> None:
        """Load the pipeline at `path` and make its `bond_moe_ner` (any K, its own mixture)
        the teacher of the first snapshot; its BIO tags must be this component's."""
        path = Path(path)
        if not (path / "config.cfg").is_file():
            raise ValueError(f"[bond_moe_ner] teacher {path}: not a saved spaCy pipeline (no config.cfg)")
        source_nlp = util.load_model(path)
        pipe = source_nlp.get_pipe(bond_pipe_name(source_nlp, path))
        if list(pipe.tags) != list(self.tags):
            raise ValueError(f"[bond_moe_ner] teacher {path}: its labels {list(pipe.labels)} "
                             f"differ from this component's {list(self.labels)}")
        self.teacher.adopt(Source(str(path), pipe.model, pipe._encode, pipe.combine))

    # ---------------------------------------------------------------- predict
    def predict(self, docs: Iterable[Doc]) -> List[Floats3d]:
        """(n_tokens, K, C) probabilities per doc, encoded in groups of similar length
        (`architectures.predict_in_length_groups`, at most `predict_tokens` padded tokens),
        with the encoder's int8 copy when `inference` is "int8"."""
        docs = list(docs)
        if self._inference == "int8" and any(len(doc) for doc in docs):
            with self._int8.swapped_in(self.model):
                return self._encode(self.model, docs)
        return self._encode(self.model, docs)

    def _encode(self, model: Model, docs: List[Doc]) -> List[Floats3d]:
        """fp32 (n_tokens, K, C) probabilities of `model` (the student, or the teacher's
        copy) in length groups: the encoding shared by `predict` and the corpus passes."""
        if not any(len(doc) for doc in docs):
            n_tags = len(self.tags)
            return [model.ops.alloc3f(len(doc), self.n_experts, n_tags) for doc in docs]
        return predict_in_length_groups(model, docs, self.predict_tokens)

    def combine(self, probs: Floats3d) -> numpy.ndarray:
        """Mixture over experts of one document's (n, K, C) probabilities -> (n, C)."""
        probs = self.model.ops.to_numpy(probs)
        if self.cfg["combine"] == "weighted":
            weights = numpy.asarray(self.cfg["expert_prior"], dtype=probs.dtype)
            return numpy.einsum("nkc,k->nc", probs, weights / weights.sum())
        return probs.mean(axis=1)

    def set_annotations(self, docs: Iterable[Doc], scores: List[Floats3d]) -> None:
        """Decode valid BIO spans into `doc.ents`, with scores in `doc.spans[spans_key]`."""
        tags = self.tags
        start, trans = transition_mask(tags)
        key = self.cfg["spans_key"]
        for doc, probs in zip(docs, scores):
            blank = blank_mask(doc)
            if blank.all():  # empty, or nothing but whitespace
                doc.set_ents([], default="outside")
                doc.spans[key] = SpanGroup(doc, name=key, attrs={"scores": []}, spans=[])
                doc._.set(EXPERT_EXTENSION, None)
                continue
            per_expert = self.model.ops.to_numpy(probs)
            mixture = self.combine(per_expert)
            log_probs = numpy.log(mixture + EPS)
            log_probs[blank, 1:] = FORBIDDEN  # a blank token is never inside an entity
            path = viterbi_decode(log_probs, start, trans)
            spans = tags_to_spans(doc, path, tags)
            doc.set_ents(spans, default="outside")
            tokens = numpy.arange(len(doc))
            path_probs = mixture[tokens, path]
            confidences = [float(path_probs[s.start : s.end].mean()) for s in spans]
            doc.spans[key] = SpanGroup(doc, name=key, attrs={"scores": confidences}, spans=spans)
            expert_fit = numpy.log(per_expert[tokens, :, path] + EPS).mean(axis=0)
            doc._.set(EXPERT_EXTENSION, int(expert_fit.argmax()))

    def __call__(self, doc: Doc) -> Doc:
        install_extensions()
        return super().__call__(doc)

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        install_extensions()
        return super().pipe(stream, batch_size=batch_size)

    # ----------------------------------------------------------------- update
    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Spread each document's loss over the experts (`expert_weights`) and backpropagate."""
        if losses is None:
            losses = {}
        losses.setdefault(self.name, 0.0)
        validate_examples(examples, "BondMoENER.update")
        examples = list(examples)
        if not any(len(eg.predicted) for eg in examples):
            return losses
        set_dropout_rate(self.model, drop)
        scores, backprop = self.model.begin_update([eg.predicted for eg in examples])
        loss, d_scores = self.get_loss(examples, scores)
        backprop(d_scores)
        if sgd not in (None, False):
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def finish_update(self, sgd: Optimizer) -> None:
        """Apply the gradients; the expert heads' learning rate is scaled by
        `head_lr_scale`, that of a layer with the `LR_SCALE_ATTR` attr (and its sublayers)
        by that value (thinc's per-call `lr_scale`)."""
        scales: Dict[int, float] = {}
        for layer in self.model.walk():
            if layer.name == "expert_heads":
                scales.update((node.id, self.head_lr_scale) for node in layer.walk())
            elif LR_SCALE_ATTR in layer.attrs:
                scales.update((node.id, layer.attrs[LR_SCALE_ATTR]) for node in layer.walk())
        for node in self.model.walk():
            for shim in node.shims:
                shim.finish_update(sgd)
            scale = scales.get(node.id, 1.0)
            for name in node.param_names:
                if node.has_grad(name):
                    param, _ = sgd((node.id, name), node.get_param(name), node.get_grad(name),
                                   lr_scale=scale)
                    node.set_param(name, param)
        self._int8.clear()  # the encoder's weights changed in place

    def get_loss(
        self, examples: Iterable[Example], scores: List[Floats3d]
    ) -> Tuple[float, List[Floats3d]]:
        """Mean loss over supervised tokens, each document on its expert(s): the distant
        loss in stage I, soft cross-entropy on the teacher's targets in stage II."""
        examples = list(examples)
        targets = self.targets(examples, train=True)
        token_loss = soft_cross_entropy if self.teacher.active else self.distant_loss.token_loss
        xp = self.model.ops.xp
        total = 0.0
        n_supervised = 0
        grads = []
        for eg, probs, (q, mask) in zip(examples, scores, targets):
            weights = self.expert_weights(em.doc_key(eg.reference))
            mask_arr = xp.asarray(mask.astype("float32")[:, None])
            loss, d_probs = weighted_expert_loss(probs, weights, xp.asarray(q), mask_arr, token_loss)
            total += loss
            n_supervised += int(mask.sum())
            grads.append(d_probs)
        norm = max(n_supervised, 1)
        if numpy.isnan(total):
            raise ValueError("[bond_moe_ner] NaN loss: check the learning rate and the input data")
        return total / norm, [g / norm for g in grads]

    def expert_weights(self, key: str) -> numpy.ndarray:
        """(K,) share of a training document's loss per expert: uniform while updates are
        not routed (shared stage I), the soft M-step's weights, else its expert only."""
        if not self.route_updates:
            return numpy.full((self.n_experts,), 1.0 / self.n_experts)
        weights = self.router.weights_of(key)
        if weights is None:
            weights = numpy.zeros((self.n_experts,))
            weights[self.router.expert_of(key)] = 1.0
        return weights

    def targets(self, examples: Sequence[Example], *, train: bool = False) -> List[Targets]:
        """Per-document (targets, mask): the teacher's pseudo-labels once it is active,
        else the distant labels the label filter kept (O-dropped when training)."""
        if self.teacher.active:
            return self.teacher.targets_for(examples)
        n_tags = len(self.tags)
        tag_ids = {tag: i for i, tag in enumerate(self.tags)}
        output = []
        for eg in examples:
            ids = example_tag_ids(eg, tag_ids)
            mask = ids != MISSING
            q = numpy.zeros((len(ids), n_tags), dtype="float32")
            q[numpy.nonzero(mask)[0], ids[mask]] = 1.0
            kept = self.kept_labels.get(em.doc_key(eg.reference))
            if kept is not None and kept.shape == mask.shape:
                mask = mask & kept
            if train:
                mask = self.distant_loss.supervised(ids, mask, eg.predicted)
            output.append((q, mask))
        return output

    # ------------------------------------------------------------ EM + teacher
    def _corpus_batches(
        self, examples: Iterable[Example], nlp: Optional[Language], batch_size: int
    ) -> Iterator[Tuple[List[str], List[Example]]]:
        """Length-sorted batches (less encoder padding) of a corpus, one example per
        document key, with upstream pipes applied to the predicted docs."""
        upstream = []
        if nlp is not None:
            for _, proc in nlp.pipeline:
                if proc is self:
                    break
                upstream.append(proc)
        unique: Dict[str, Example] = {}
        for eg in examples:
            unique.setdefault(em.doc_key(eg.reference), eg)
        items = sorted(unique.items(), key=lambda item: len(item[1].predicted))
        for i in range(0, len(items), batch_size):
            keys = [key for key, _ in items[i : i + batch_size]]
            batch = [eg for _, eg in items[i : i + batch_size]]
            docs = [eg.predicted for eg in batch]
            for proc in upstream:
                docs = list(proc.pipe(docs))
            yield keys, [Example(doc, eg.reference) for doc, eg in zip(docs, batch)]

    def expert_costs(
        self, examples: Iterable[Example], *, nlp: Optional[Language] = None, batch_size: int = 64
    ) -> Tuple[List[str], numpy.ndarray, numpy.ndarray]:
        """Mean token NLL of each document's current targets under each expert.

        RETURNS (Tuple[List[str], ndarray, ndarray]): document keys, the (N, K) cost matrix
            (all-zero rows for documents without supervised tokens) and (N,) flags: do the
            document's targets hold an entity.
        """
        keys: List[str] = []
        rows: List[numpy.ndarray] = []
        has_entity: List[bool] = []
        for batch_keys, batch in self._corpus_batches(examples, nlp, batch_size):
            probs = self._encode(self.model, [eg.predicted for eg in batch])
            for p, (q, mask) in zip(probs, self.targets(batch)):
                nll = token_nll(self.model.ops.to_numpy(p), q)  # (n, K)
                n_kept = int(mask.sum())
                rows.append(nll[mask].sum(axis=0) / n_kept if n_kept else numpy.zeros(self.n_experts))
                has_entity.append(bool((q[mask].argmax(axis=-1) != 0).any()))
            keys.extend(batch_keys)
        costs = numpy.asarray(rows, dtype="float64").reshape((len(rows), self.n_experts))
        return keys, costs, numpy.asarray(has_entity, dtype=bool)

    def reassign_experts(
        self,
        examples: Iterable[Example],
        *,
        nlp: Optional[Language] = None,
        batch_size: int = 64,
        step: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Corpus-level E-step: score every document under every expert and re-route
        the documents with the assigner (`router.estep`).

        RETURNS (Dict[str, Any]): the logged event (loads, changed docs, residual, time).
        """
        started = time.perf_counter()
        keys, costs, has_entity = self.expert_costs(examples, nlp=nlp, batch_size=batch_size)
        if not keys:
            raise ValueError("[bond_moe_ner] E-step over an empty corpus: check the E-step corpus path")
        event = self.router.estep(keys, costs, has_entity, step)
        self.cfg["expert_prior"] = list(self.router.prior)
        event["seconds"] = time.perf_counter() - started
        self._events.append(event)
        return event

    def snapshot_teacher(
        self,
        examples: Iterable[Example],
        *,
        nlp: Optional[Language] = None,
        batch_size: int = 64,
        step: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Freeze (or refresh) the teacher from the student and cache its pseudo-labels
        for the corpus (`teacher.snapshot`). RETURNS the logged event."""
        batches = ((keys, [eg.predicted for eg in batch])
                   for keys, batch in self._corpus_batches(examples, nlp, batch_size))
        event = self.teacher.snapshot(self.model, batches, len(self.tags), step)
        self._events.append(event)
        return event

    def filter_labels(self, examples: Iterable[Example], *, nlp: Optional[Language] = None,
                      batch_size: int = 64, step: Optional[int] = None) -> Dict[str, Any]:
        """Re-run the label filter over the corpus with the current model: which distant
        labels stage I keeps (`kept_labels`). RETURNS the logged event."""
        if self.label_filter is None:
            raise ValueError("[bond_moe_ner] filter_every > 0 needs a label_filter: set "
                             "[components.bond_moe_ner.label_filter] (e.g. spacy-bond-moe.confidence_filter.v1)")
        started = time.perf_counter()
        tag_ids = {tag: i for i, tag in enumerate(self.tags)}
        keys: List[str] = []
        mixtures: List[numpy.ndarray] = []
        labels: List[numpy.ndarray] = []
        for batch_keys, batch in self._corpus_batches(examples, nlp, batch_size):
            keys.extend(batch_keys)
            mixtures.extend(self.combine(p) for p in self.predict([eg.predicted for eg in batch]))
            labels.extend(example_tag_ids(eg, tag_ids) for eg in batch)
        result = self.label_filter(mixtures, labels, self.tags)
        self.kept_labels = dict(zip(keys, result["keep"]))
        n_labelled = sum(int((ids != MISSING).sum()) for ids in labels)
        n_kept = sum(int(keep.sum()) for keep in result["keep"])
        event = {
            "event": "label_filter",
            "step": step,
            "n_docs": len(keys),
            "n_labelled": n_labelled,
            "removed_fraction": 1.0 - n_kept / max(n_labelled, 1),
            "removed_per_type": result["removed"],
            "reset_types": result["reset"],
            "seconds": time.perf_counter() - started,
        }
        self._events.append(event)
        return event

    # ------------------------------------------------------ training state
    def training_state(self) -> Dict[str, Any]:
        """The training-only state that `to_disk` leaves out (routing, teacher, kept
        labels), as msgpack-able data, so that an interrupted run can resume."""
        return {
            "router": self.router.state(),
            "teacher": self.teacher.state(),
            "kept_labels": dict(self.kept_labels),
            "route_updates": self.route_updates,
            "distant_loss": self.distant_loss.state(),
        }

    def load_training_state(self, state: Dict[str, Any]) -> None:
        """Restore what `training_state` returned (the weights come from `from_disk`)."""
        self.router.load_state(state["router"])
        adopted = state["teacher"].get("adopted")
        if adopted is not None and self.teacher.source is None:  # `initialize` did not run
            self.adopt_teacher(adopted)
        self.teacher.load_state(state["teacher"], self.model)
        self.kept_labels = {str(k): numpy.asarray(v, dtype=bool)
                            for k, v in state["kept_labels"].items()}
        self.route_updates = bool(state["route_updates"])
        self.distant_loss.load_state(state.get("distant_loss", {}))
        self.cfg["expert_prior"] = list(self.router.prior)  # cfg.json rounds it

    # ---------------------------------------------------------- serialization
    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """As TrainablePipe.to_disk, plus `model.sha256`, the digest of the weights."""
        self._validate_serialization_attrs()
        serialize = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "vocab": lambda p: self.vocab.to_disk(p, exclude=exclude),
            "model": lambda p: write_model(self.model, p),
        }
        util.to_disk(path, serialize, exclude)

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "BondMoENER":
        """As TrainablePipe.from_disk, with the weights checked against their digest, read by
        torch's weights-only unpickler and matched with the labels; errors name the file."""
        self._validate_serialization_attrs()
        deserialize = {
            "cfg": lambda p: self.cfg.update(srsly.read_json(p)),
            "vocab": lambda p: self.vocab.from_disk(p, exclude=exclude),
            "model": lambda p: load_model_bytes(self.model, read_verified(p), str(p)),
        }
        util.from_disk(path, deserialize, exclude)
        self._check_weights_fit_labels(str(path))
        self._int8.clear()
        return self

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "BondMoENER":
        """As TrainablePipe.from_bytes, with the weights-only unpickler and the label check."""
        self._validate_serialization_attrs()
        deserialize = {
            "cfg": lambda b: self.cfg.update(srsly.json_loads(b)),
            "vocab": lambda b: self.vocab.from_bytes(b, exclude=exclude),
            "model": lambda b: load_model_bytes(self.model, b, f"the bytes of {self.name}"),
        }
        util.from_bytes(bytes_data, deserialize, exclude)
        self._check_weights_fit_labels(f"the bytes of {self.name}")
        self._int8.clear()
        return self

    def _check_weights_fit_labels(self, source: str) -> None:
        n_out = self.model.get_dim("nO") if self.model.has_dim("nO") else None
        if n_out is not None and n_out != len(self.tags):
            raise ValueError(
                f"[bond_moe_ner] {source}: cfg lists {len(self.labels)} labels ({len(self.tags)} "
                f"BIO tags) but the weights have {n_out} outputs: cfg and model do not belong together"
            )

    def pop_events(self) -> List[Dict[str, Any]]:
        """Return and clear the E-step / teacher events since the last call."""
        events, self._events = self._events, []
        return events
