"""The `bond_moe_ner` pipeline component: K experts, hard-EM routing, self-training."""
import time
from itertools import islice
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc, Span, SpanGroup
from spacy.training import Example, validate_examples, validate_get_examples
from spacy.vocab import Vocab
from thinc.api import Config, Model, Optimizer, set_dropout_rate
from thinc.types import Floats2d, Floats3d

from . import em, teacher as teacher_lib
from .losses import expert_loss, weighted_expert_loss
from .tags import (
    MISSING,
    example_tag_ids,
    make_tags,
    blank_mask,
    tags_to_spans,
    transition_mask,
    viterbi_decode,
)

EXPERT_EXTENSION = "bond_moe_expert"
COMBINE_MODES = ("mean", "weighted")
SELF_TRAINING_MODES = ("soft", "hard")
ESTEP_SCOPES = ("all", "entities")
M_STEPS = ("hard", "soft")

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

Targets = Tuple[numpy.ndarray, numpy.ndarray]  # (n, C) float32 distributions, (n,) bool mask


def install_extensions() -> None:
    """Register `Doc._.bond_moe_expert` (idempotent; also run in worker processes)."""
    if not Doc.has_extension(EXPERT_EXTENSION):
        Doc.set_extension(EXPERT_EXTENSION, default=None)


@Language.factory(
    "bond_moe_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type", "doc.spans"],
    default_config={
        "model": DEFAULT_MODEL,
        "spans_key": "bond_moe",
        "combine": "mean",
        "fair": True,
        "sinkhorn_lambda": 0.1,
        "sinkhorn_max_iter": 100,
        "sinkhorn_tol": 1e-6,
        "self_training": "soft",
        "sharpen_power": 2.0,
        "soft_threshold": 0.9,
        "gce_q": 0.0,
        "o_drop": 0.0,
        "head_lr_scale": 1.0,
        "estep_scope": "all",
        "shared_warmup": 0,
        "m_step": "hard",
        "scorer": {"@scorers": "spacy-bond-moe.ner_scorer.v1"},
    },
    default_score_weights={"ents_f": 1.0, "ents_p": 0.0, "ents_r": 0.0, "ents_per_type": None},
)
def make_bond_moe_ner(
    nlp: Language,
    name: str,
    model: Model[List[Doc], List[Floats3d]],
    spans_key: str,
    combine: str,
    fair: bool,
    sinkhorn_lambda: float,
    sinkhorn_max_iter: int,
    sinkhorn_tol: float,
    self_training: str,
    sharpen_power: float,
    soft_threshold: float,
    gce_q: float,
    o_drop: float,
    head_lr_scale: float,
    estep_scope: str,
    shared_warmup: int,
    m_step: str,
    scorer: Optional[Callable],
) -> "BondMoENER":
    """Create a BondMoENER component (see `BondMoENER` for the arguments)."""
    return BondMoENER(
        nlp.vocab,
        model,
        name,
        spans_key=spans_key,
        combine=combine,
        fair=fair,
        sinkhorn_lambda=sinkhorn_lambda,
        sinkhorn_max_iter=sinkhorn_max_iter,
        sinkhorn_tol=sinkhorn_tol,
        self_training=self_training,
        sharpen_power=sharpen_power,
        soft_threshold=soft_threshold,
        gce_q=gce_q,
        o_drop=o_drop,
        head_lr_scale=head_lr_scale,
        estep_scope=estep_scope,
        shared_warmup=shared_warmup,
        m_step=m_step,
        scorer=scorer,
    )


class BondMoENER(TrainablePipe):
    """Mixture-of-experts BIO tagger for distantly supervised NER (BOND-MoE).

    spans_key (str): `doc.spans` key of the confidence span group.
    combine (str): "mean" averages the experts' probabilities; "weighted" weights them
        by the share of training documents each expert was assigned at the last E-step.
    fair (bool): Balance the E-step with Sinkhorn (False: plain argmax, for ablations).
    sinkhorn_lambda, sinkhorn_max_iter, sinkhorn_tol: Sinkhorn entropic temperature on
        the mean token NLL, iteration cap and marginal tolerance.
    self_training (str): Teacher targets, "soft" (q ∝ p^power/f, kept where max q >
        soft_threshold) or "hard" (argmax).
    gce_q (float): > 0 trains the distant labels with generalized cross-entropy.
    o_drop (float): Fraction of distant "O" tokens left unsupervised at each update.
    head_lr_scale (float): Learning-rate multiplier of the expert heads relative to the
        encoder (randomly initialised heads over a pretrained encoder learn faster).
    estep_scope (str): "all" scores every document in the E-step; "entities" scores only
        documents whose current targets contain an entity and deals the entity-free
        ones evenly at random, anew at each E-step (otherwise they fill one expert,
        which learns "O" only).
    shared_warmup (int): Calls of `update` (= optimizer steps unless gradients are
        accumulated) during which every document trains every expert (its loss averaged
        over the K experts) and E-steps are skipped; routing by E-step starts after them
        (0: routed from the first update; `teacher_start`: a shared stage I).
    m_step (str): "hard" trains each document on its assigned expert; "soft" spreads its
        loss over the experts by its E-step responsibilities (rows of the Sinkhorn plan if
        `fair`, else softmax(-cost / sinkhorn_lambda)).
    """

    def __init__(
        self,
        vocab: Vocab,
        model: Model[List[Doc], List[Floats3d]],
        name: str = "bond_moe_ner",
        *,
        spans_key: str = "bond_moe",
        combine: str = "mean",
        fair: bool = True,
        sinkhorn_lambda: float = 0.1,
        sinkhorn_max_iter: int = 100,
        sinkhorn_tol: float = 1e-6,
        self_training: str = "soft",
        sharpen_power: float = 2.0,
        soft_threshold: float = 0.9,
        gce_q: float = 0.0,
        o_drop: float = 0.0,
        head_lr_scale: float = 1.0,
        estep_scope: str = "all",
        shared_warmup: int = 0,
        m_step: str = "hard",
        scorer: Optional[Callable] = None,
    ) -> None:
        if combine not in COMBINE_MODES:
            raise ValueError(f"[bond_moe_ner] combine must be one of {COMBINE_MODES}, got {combine!r}")
        if self_training not in SELF_TRAINING_MODES:
            raise ValueError(
                f"[bond_moe_ner] self_training must be one of {SELF_TRAINING_MODES}, got {self_training!r}"
            )
        if not 0.0 <= o_drop < 1.0:
            raise ValueError(f"[bond_moe_ner] o_drop must be in [0, 1), got {o_drop}")
        if head_lr_scale <= 0:
            raise ValueError(f"[bond_moe_ner] head_lr_scale must be > 0, got {head_lr_scale}")
        if estep_scope not in ESTEP_SCOPES:
            raise ValueError(
                f"[bond_moe_ner] estep_scope must be one of {ESTEP_SCOPES}, got {estep_scope!r}"
            )
        if m_step not in M_STEPS:
            raise ValueError(f"[bond_moe_ner] m_step must be one of {M_STEPS}, got {m_step!r}")
        if shared_warmup < 0:
            raise ValueError(f"[bond_moe_ner] shared_warmup must be >= 0, got {shared_warmup}")
        if not 0.0 <= gce_q <= 1.0:
            raise ValueError(f"[bond_moe_ner] gce_q must be in [0, 1], got {gce_q}")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.scorer = scorer
        n_experts = model.attrs["n_experts"]
        self.cfg: Dict[str, Any] = {
            "labels": [],
            "spans_key": spans_key,
            "combine": combine,
            "fair": fair,
            "sinkhorn_lambda": sinkhorn_lambda,
            "sinkhorn_max_iter": sinkhorn_max_iter,
            "sinkhorn_tol": sinkhorn_tol,
            "self_training": self_training,
            "sharpen_power": sharpen_power,
            "soft_threshold": soft_threshold,
            "gce_q": gce_q,
            "o_drop": o_drop,
            "head_lr_scale": head_lr_scale,
            "estep_scope": estep_scope,
            "shared_warmup": shared_warmup,
            "m_step": m_step,
            "expert_prior": [1.0 / n_experts] * n_experts,
        }
        # Training-only state: never serialised.
        self._assignments: Dict[str, int] = {}
        self._responsibilities: Dict[str, numpy.ndarray] = {}  # m_step = "soft"
        self._teacher: Optional[Model] = None
        self._teacher_freq: Optional[numpy.ndarray] = None
        self._teacher_targets: Dict[str, Targets] = {}
        self._teacher_step: Optional[int] = None
        self._events: List[Dict[str, Any]] = []
        self._n_updates = 0
        self._rng = numpy.random.default_rng(0)
        install_extensions()

    # ----------------------------------------------------------------- labels
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
    ) -> None:
        """Set labels, size the heads and deal the training documents to experts."""
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
        keys = sorted({em.doc_key(eg.reference) for eg in examples})
        experts = em.balanced_random(len(keys), self.n_experts)
        self._assignments = dict(zip(keys, (int(k) for k in experts)))

    # ---------------------------------------------------------------- predict
    def predict(self, docs: Iterable[Doc]) -> List[Floats3d]:
        docs = list(docs)
        if not any(len(doc) for doc in docs):
            n_tags = len(self.tags)
            return [self.model.ops.alloc3f(len(doc), self.n_experts, n_tags) for doc in docs]
        return self.model.predict(docs)

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
            if blank_mask(doc).all():  # empty, or nothing but whitespace
                doc.set_ents([], default="outside")
                doc.spans[key] = SpanGroup(doc, name=key, attrs={"scores": []}, spans=[])
                doc._.set(EXPERT_EXTENSION, None)
                continue
            per_expert = self.model.ops.to_numpy(probs)
            mixture = self.combine(per_expert)
            path = viterbi_decode(numpy.log(mixture + 1e-12), start, trans)
            spans = tags_to_spans(doc, path, tags)
            doc.set_ents(spans, default="outside")
            tokens = numpy.arange(len(doc))
            path_probs = mixture[tokens, path]
            confidences = [float(path_probs[s.start : s.end].mean()) for s in spans]
            doc.spans[key] = SpanGroup(doc, name=key, attrs={"scores": confidences}, spans=spans)
            expert_fit = numpy.log(per_expert[tokens, :, path] + 1e-12).mean(axis=0)
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
        """Route each document's loss to its assigned expert and backpropagate."""
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
        self._n_updates += 1
        if sgd not in (None, False):
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def finish_update(self, sgd: Optimizer) -> None:
        """Apply the gradients; the expert heads' learning rate is scaled by
        `head_lr_scale` (thinc's per-call `lr_scale`)."""
        heads = {node.id for layer in self.model.walk() if layer.name == "expert_heads"
                 for node in layer.walk()}
        for node in self.model.walk():
            for shim in node.shims:
                shim.finish_update(sgd)
            scale = self.cfg["head_lr_scale"] if node.id in heads else 1.0
            for name in node.param_names:
                if node.has_grad(name):
                    param, _ = sgd((node.id, name), node.get_param(name), node.get_grad(name),
                                   lr_scale=scale)
                    node.set_param(name, param)

    def get_loss(
        self, examples: Iterable[Example], scores: List[Floats3d]
    ) -> Tuple[float, List[Floats3d]]:
        """Mean loss over supervised tokens, each document on its assigned expert."""
        examples = list(examples)
        targets = self.targets(examples, train=True)
        total = 0.0
        n_supervised = 0
        grads = []
        shared = self.in_shared_warmup
        for eg, probs, (q, mask) in zip(examples, scores, targets):
            key = em.doc_key(eg.reference)
            gce_q = self.cfg["gce_q"] if self._teacher is None else 0.0
            xp = self.model.ops.xp
            mask_arr = xp.asarray(mask.astype("float32")[:, None])
            weights = None if shared else self._responsibilities.get(key)
            if weights is not None:
                loss, d_probs = weighted_expert_loss(probs, weights, xp.asarray(q), mask_arr, gce_q)
            else:
                expert = None if shared else self.expert_of(key)
                loss, d_probs = expert_loss(probs, expert, xp.asarray(q), mask_arr, gce_q)
            total += loss
            n_supervised += int(mask.sum())
            grads.append(d_probs)
        norm = max(n_supervised, 1)
        if numpy.isnan(total):
            raise ValueError("[bond_moe_ner] NaN loss: check the learning rate and the input data")
        return total / norm, [g / norm for g in grads]

    @property
    def in_shared_warmup(self) -> bool:
        """Whether updates still train every expert on every document (`shared_warmup`)."""
        return self._n_updates < self.cfg.get("shared_warmup", 0)

    def expert_of(self, key: str) -> int:
        """Assigned expert of a document key (hash-based for unseen documents)."""
        expert = self._assignments.get(key)
        return em.hash_expert(key, self.n_experts) if expert is None else expert

    def targets(self, examples: Sequence[Example], *, train: bool = False) -> List[Targets]:
        """Per-document (targets, mask): teacher pseudo-labels once a teacher exists,
        else the distant labels (with O-dropping when training)."""
        if self._teacher is not None:
            return self._teacher_targets_for(examples)
        n_tags = len(self.tags)
        tag_ids = {tag: i for i, tag in enumerate(self.tags)}
        output = []
        for eg in examples:
            ids = example_tag_ids(eg, tag_ids)
            mask = ids != MISSING
            q = numpy.zeros((len(ids), n_tags), dtype="float32")
            q[numpy.nonzero(mask)[0], ids[mask]] = 1.0
            if train and self.cfg["o_drop"] > 0:
                dropped = (ids == 0) & (self._rng.random(len(ids)) < self.cfg["o_drop"])
                mask = mask & ~dropped
            output.append((q, mask))
        return output

    def _teacher_targets_for(self, examples: Sequence[Example]) -> List[Targets]:
        output: List[Optional[Targets]] = []
        missing = []
        for i, eg in enumerate(examples):
            cached = self._teacher_targets.get(em.doc_key(eg.reference))
            if cached is not None and cached[0].shape[0] == len(eg.predicted):
                output.append((cached[0].astype("float32"), cached[1]))
            else:
                output.append(None)
                missing.append(i)
        if missing:
            docs = [examples[i].predicted for i in missing]
            for i, doc, probs in zip(missing, docs, self._teacher_mixtures(docs)):
                output[i] = self._pseudo_labels(probs, blank_mask(doc))
        return output  # type: ignore[return-value]

    def _teacher_mixtures(self, docs: List[Doc]) -> List[numpy.ndarray]:
        assert self._teacher is not None
        if not any(len(doc) for doc in docs):
            return [numpy.zeros((0, len(self.tags)), dtype="float32") for _ in docs]
        return [self.combine(p) for p in self._teacher.predict(docs)]

    def _pseudo_labels(self, mixture: numpy.ndarray, blank: numpy.ndarray) -> Targets:
        """Teacher targets and keep mask; blank tokens are never kept."""
        if self.cfg["self_training"] == "hard":
            q, keep = teacher_lib.hard_labels(mixture)
        else:
            assert self._teacher_freq is not None
            q, keep = teacher_lib.soft_labels(
                mixture, self._teacher_freq, self.cfg["sharpen_power"], self.cfg["soft_threshold"]
            )
        return q, keep & ~blank

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
    ) -> Tuple[List[str], numpy.ndarray]:
        """Mean token NLL of each document's current targets under each expert.

        RETURNS (Tuple[List[str], ndarray]): document keys and the (N, K) cost matrix
            (all-zero rows for documents without supervised tokens).
        """
        keys, costs, _ = self._score_corpus(examples, nlp, batch_size)
        return keys, costs

    def _score_corpus(
        self, examples: Iterable[Example], nlp: Optional[Language], batch_size: int
    ) -> Tuple[List[str], numpy.ndarray, numpy.ndarray]:
        """Keys, (N, K) costs and (N,) flags: do the document's targets hold an entity."""
        keys: List[str] = []
        rows: List[numpy.ndarray] = []
        has_entity: List[bool] = []
        for batch_keys, batch in self._corpus_batches(examples, nlp, batch_size):
            probs = self.predict([eg.predicted for eg in batch])
            for p, (q, mask) in zip(probs, self.targets(batch)):
                p = self.model.ops.to_numpy(p)
                nll = -(q[:, None, :] * numpy.log(p + 1e-12)).sum(axis=-1)  # (n, K)
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
        """Corpus-level E-step: score every document under every expert, balance the
        scores with Sinkhorn (if `fair`) and assign each document to its best expert.

        RETURNS (Dict[str, Any]): the logged event (loads, changed docs, residual, time);
            empty, and nothing scored, during the shared warm-up.
        """
        if self.in_shared_warmup:
            return {}
        started = time.perf_counter()
        keys, costs, has_entity = self._score_corpus(examples, nlp, batch_size)
        if not keys:
            raise ValueError("[bond_moe_ner] E-step over an empty corpus: check the E-step corpus path")
        active = has_entity if self.cfg.get("estep_scope", "all") == "entities" else None
        experts, residual = em.assign(
            costs,
            fair=self.cfg["fair"],
            lam=self.cfg["sinkhorn_lambda"],
            max_iter=self.cfg["sinkhorn_max_iter"],
            tol=self.cfg["sinkhorn_tol"],
            seed=step or 0,
            active=active,
        )
        changed = sum(1 for key, k in zip(keys, experts) if self.expert_of(key) != int(k))
        self._assignments = {key: int(k) for key, k in zip(keys, experts)}
        soft = None
        if self.cfg.get("m_step", "hard") == "soft":
            soft = em.responsibilities(
                costs, fair=self.cfg["fair"], lam=self.cfg["sinkhorn_lambda"],
                max_iter=self.cfg["sinkhorn_max_iter"], tol=self.cfg["sinkhorn_tol"], active=active,
            )
            self._responsibilities = dict(zip(keys, soft))
        loads = numpy.bincount(experts, minlength=self.n_experts)
        self.cfg["expert_prior"] = [float(x) for x in loads / loads.sum()]
        event = {
            "event": "estep",
            "step": step,
            "n_docs": len(keys),
            "n_docs_with_entities": int(has_entity.sum()),
            "loads": [int(x) for x in loads],
            "changed": changed,
            "sinkhorn_residual": residual,
            "mean_cost": [float(x) for x in costs.mean(axis=0)],
            "seconds": time.perf_counter() - started,
        }
        if soft is not None:  # how hard the soft M-step is: 1/K = shared, 1.0 = hard routing
            event["mean_max_responsibility"] = float(soft.max(axis=1).mean())
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
        for the corpus, with corpus-level class frequencies for the soft labels."""
        started = time.perf_counter()
        if self._teacher is None:
            self._teacher = teacher_lib.snapshot(self.model)
        else:
            teacher_lib.refresh(self._teacher, self.model)
        keys: List[str] = []
        mixtures: List[numpy.ndarray] = []
        blanks: List[numpy.ndarray] = []
        for batch_keys, batch in self._corpus_batches(examples, nlp, batch_size):
            keys.extend(batch_keys)
            docs = [eg.predicted for eg in batch]
            mixtures.extend(self._teacher_mixtures(docs))
            blanks.extend(blank_mask(doc) for doc in docs)
        n_tags = len(self.tags)
        tokens = [m[~blank] for m, blank in zip(mixtures, blanks)]  # blank tokens: not counted
        all_tokens = numpy.concatenate(tokens) if tokens else numpy.zeros((0, n_tags))
        self._teacher_freq = teacher_lib.class_frequencies(all_tokens)
        self._teacher_targets = {}
        n_kept = 0
        for key, mixture, blank in zip(keys, mixtures, blanks):
            q, keep = self._pseudo_labels(mixture, blank)
            self._teacher_targets[key] = (q.astype("float16"), keep)
            n_kept += int(keep.sum())
        self._teacher_step = step
        event = {
            "event": "teacher",
            "step": step,
            "n_docs": len(keys),
            "n_tokens": int(all_tokens.shape[0]),
            "kept_fraction": n_kept / max(all_tokens.shape[0], 1),
            "seconds": time.perf_counter() - started,
        }
        self._events.append(event)
        return event

    @property
    def teacher(self) -> Optional[Model]:
        """The frozen teacher model (None before self-training starts)."""
        return self._teacher

    def teacher_age(self, step: int) -> Optional[int]:
        """Steps since the last teacher refresh, or None without a teacher."""
        return None if self._teacher_step is None else step - self._teacher_step

    def pop_events(self) -> List[Dict[str, Any]]:
        """Return and clear the E-step / teacher events since the last call."""
        events, self._events = self._events, []
        return events

