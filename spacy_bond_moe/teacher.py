"""The frozen teacher of BOND's self-training stage, its registered pseudo-labellers and
its cached targets."""
import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import registry
from thinc.api import Model
from thinc.types import Floats3d

from .em import doc_key
from .losses import EPS
from .tags import blank_mask

Targets = Tuple[numpy.ndarray, numpy.ndarray]  # (n, C) float32 distributions, (n,) bool mask
# (n, C) teacher mixture, (C,) corpus class frequencies -> targets and keep mask
PseudoLabeller = Callable[[numpy.ndarray, numpy.ndarray], Targets]
Encode = Callable[[Model, List[Doc]], List[Floats3d]]


def _torch_modules(model: Model):
    for node in model.walk():
        for shim in node.shims:
            torch_model = getattr(shim, "_model", None)
            if torch_model is not None and hasattr(torch_model, "state_dict"):
                yield torch_model


def freeze(model: Model) -> Model:
    """`model` with its PyTorch modules in eval mode and without gradients, in place."""
    for torch_model in _torch_modules(model):
        torch_model.eval()
        for param in torch_model.parameters():
            param.requires_grad_(False)
    return model


def snapshot(model: Model) -> Model:
    """A frozen deep copy of the student (never `Model.copy()`: it breaks transformers)."""
    return freeze(copy.deepcopy(model))


def refresh(teacher: Model, student: Model) -> None:
    """Copy the student's current weights into the teacher, in place."""
    for src, dst in zip(student.walk(), teacher.walk()):
        for name in src.param_names:
            if src.has_param(name):
                dst.set_param(name, src.get_param(name).copy())
    for src_torch, dst_torch in zip(_torch_modules(student), _torch_modules(teacher)):
        dst_torch.load_state_dict(src_torch.state_dict())


def class_frequencies(probs: numpy.ndarray) -> numpy.ndarray:
    """f_c = sum over tokens of p_c (BOND/DEC soft-label denominator)."""
    return probs.sum(axis=0)


def soft_labels(
    probs: numpy.ndarray, freq: numpy.ndarray, power: float = 2.0, threshold: float = 0.9
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """BOND soft labels q ∝ p^power / f and the confidence mask max_c q > threshold.

    probs (ndarray): (n, C) teacher probabilities.
    freq (ndarray): (C,) class frequencies over the corpus (`class_frequencies`).
    RETURNS (Tuple[ndarray, ndarray]): (n, C) targets and (n,) boolean keep mask.
    """
    sharpened = probs**power / (freq[None, :] + EPS)
    targets = sharpened / (sharpened.sum(axis=1, keepdims=True) + EPS)
    return targets, targets.max(axis=1) > threshold


def hard_labels(probs: numpy.ndarray) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """One-hot argmax targets on every token."""
    targets = numpy.zeros_like(probs)
    targets[numpy.arange(probs.shape[0]), probs.argmax(axis=1)] = 1.0
    return targets, numpy.ones((probs.shape[0],), dtype=bool)


@registry.misc("spacy-bond-moe.soft_pseudo_labels.v1")
def build_soft_pseudo_labels_v1(power: float = 2.0, threshold: float = 0.9) -> PseudoLabeller:
    """BOND's soft labels q ∝ p^power / f, kept where max q > threshold (`soft_labels`)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"[bond_moe_ner] pseudo-label threshold must be in [0, 1), got {threshold}")
    if power <= 0:
        raise ValueError(f"[bond_moe_ner] pseudo-label power must be > 0, got {power}")

    def label(mixture: numpy.ndarray, freq: numpy.ndarray) -> Targets:
        return soft_labels(mixture, freq, power, threshold)

    return label


@registry.misc("spacy-bond-moe.hard_pseudo_labels.v1")
def build_hard_pseudo_labels_v1() -> PseudoLabeller:
    """BOND's hard labels: the teacher's argmax on every token (`hard_labels`)."""

    def label(mixture: numpy.ndarray, freq: numpy.ndarray) -> Targets:
        return hard_labels(mixture)

    return label


Combine = Callable[[Floats3d], numpy.ndarray]


@dataclass
class Source:
    """A trained pipeline's tagger adopted as the first teacher (distillation): where it
    was loaded from, its frozen model and its own encoding and mixture."""

    path: str
    model: Model
    encode: Encode
    combine: Combine


class Teacher:
    """The self-training state: frozen model, corpus class frequencies, cached targets.

    combine (Callable): one document's (n, K, C) expert probabilities -> (n, C) mixture.
    encode (Callable): (model, docs) -> each doc's (n, K, C) probabilities under `model`.
    Inactive until the first `snapshot`; `state`/`load_state` save and restore it for resuming.
    With a `source` (`adopt`), the first snapshot takes the source instead of the student; a
    later refresh copies the student and lets the source go.
    """

    def __init__(self, labeller: PseudoLabeller, combine: Combine, encode: Encode) -> None:
        self.labeller = labeller
        self.combine = combine
        self.encode = encode
        self.model: Optional[Model] = None
        self.freq: Optional[numpy.ndarray] = None
        self.targets: Dict[str, Targets] = {}
        self.step: Optional[int] = None
        self.source: Optional[Source] = None
        self.sourced = False  # whether `model` is the source's

    def adopt(self, source: Source) -> None:
        """Make `source` the teacher of the first snapshot (its model is frozen here)."""
        freeze(source.model)
        self.source = source

    @property
    def active(self) -> bool:
        return self.model is not None

    def age(self, step: int) -> Optional[int]:
        """Steps since the last snapshot, or None before the first."""
        return None if self.step is None else step - self.step

    def state(self) -> Dict[str, Any]:
        """The teacher as msgpack-able data (weights, frequencies, cached targets), for
        resuming a training run; inactive: the step and the adopted source's path, if any."""
        state: Dict[str, Any] = {"step": self.step}
        if self.source is not None:  # adopted, in use or still to come: its path suffices
            state["adopted"] = self.source.path
        if self.model is None:
            return state
        state["freq"] = self.freq
        state["targets"] = {key: {"q": q, "keep": keep} for key, (q, keep) in self.targets.items()}
        if self.sourced:  # the weights are the source pipeline's files
            state["source"] = True
        else:
            state["model"] = self.model.to_bytes()
        return state

    def load_state(self, state: Dict[str, Any], student: Model) -> None:
        """Restore what `state` returned; the teacher's network is the adopted source (which
        must be adopted first), or a copy of the student's given the saved weights."""
        adopted = state.get("adopted")
        if adopted is not None and (self.source is None or self.source.path != adopted):
            raise ValueError(f"[bond_moe_ner] the saved teacher is the pipeline {adopted}, "
                             "which was not adopted")
        if adopted is None:  # never adopted, or let go at a refresh
            self.source = None
        self.step = state["step"]
        self.sourced = bool(state.get("source"))
        if self.sourced:
            assert self.source is not None
            self.model = self.source.model
        elif "model" in state:
            self.model = freeze(snapshot(student).from_bytes(state["model"]))
        else:
            self.model, self.freq, self.targets = None, None, {}
            return
        self.freq = numpy.asarray(state["freq"])
        self.targets = {str(key): (numpy.asarray(t["q"]), numpy.asarray(t["keep"], dtype=bool))
                        for key, t in state["targets"].items()}

    def mixtures(self, docs: List[Doc]) -> List[numpy.ndarray]:
        """Each document's (n, C) mixture under the teacher."""
        assert self.model is not None
        if self.sourced:
            assert self.source is not None
            return [self.source.combine(p) for p in self.source.encode(self.model, docs)]
        return [self.combine(p) for p in self.encode(self.model, docs)]

    def snapshot(
        self, student: Model, batches: Iterable[Tuple[List[str], List[Doc]]], n_tags: int,
        step: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Freeze (or refresh) the teacher from the student (the first time: from the adopted
        source, if any) and cache its targets for the corpus, with corpus-level class
        frequencies; returns the event to log."""
        started = time.perf_counter()
        if self.model is None and self.source is not None:
            self.model, self.sourced = self.source.model, True
        elif self.model is None or self.sourced:
            self.model, self.sourced, self.source = snapshot(student), False, None
        else:
            refresh(self.model, student)
        keys: List[str] = []
        mixtures: List[numpy.ndarray] = []
        blanks: List[numpy.ndarray] = []
        for batch_keys, docs in batches:
            keys.extend(batch_keys)
            mixtures.extend(self.mixtures(docs))
            blanks.extend(blank_mask(doc) for doc in docs)
        tokens = [m[~blank] for m, blank in zip(mixtures, blanks)]  # blank tokens: not counted
        all_tokens = numpy.concatenate(tokens) if tokens else numpy.zeros((0, n_tags))
        self.freq = class_frequencies(all_tokens)
        self.targets = {}
        n_kept = 0
        for key, mixture, blank in zip(keys, mixtures, blanks):
            q, keep = self.pseudo_labels(mixture, blank)
            self.targets[key] = (q.astype("float16"), keep)
            n_kept += int(keep.sum())
        self.step = step
        return {
            "event": "teacher",
            "step": step,
            "source": self.source.path if self.sourced and self.source is not None else None,
            "n_docs": len(keys),
            "n_tokens": int(all_tokens.shape[0]),
            "kept_fraction": n_kept / max(all_tokens.shape[0], 1),
            "seconds": time.perf_counter() - started,
        }

    def pseudo_labels(self, mixture: numpy.ndarray, blank: numpy.ndarray) -> Targets:
        """Targets and keep mask of one document; blank tokens are never kept."""
        assert self.freq is not None
        q, keep = self.labeller(mixture, self.freq)
        return q, keep & ~blank

    def targets_for(self, examples: Sequence[Example]) -> List[Targets]:
        """Per-document targets: cached at the last snapshot, else predicted now (documents
        outside the snapshot corpus, or re-tokenised since)."""
        output: List[Optional[Targets]] = []
        missing = []
        for i, eg in enumerate(examples):
            cached = self.targets.get(doc_key(eg.reference))
            if cached is not None and cached[0].shape[0] == len(eg.predicted):
                output.append((cached[0].astype("float32"), cached[1]))
            else:
                output.append(None)
                missing.append(i)
        if missing:
            docs = [examples[i].predicted for i in missing]
            for i, doc, mixture in zip(missing, docs, self.mixtures(docs)):
                output[i] = self.pseudo_labels(mixture, blank_mask(doc))
        return output  # type: ignore[return-value]
