"""RoSTER's noisy-label removal: distant labels the model contradicts are dropped from
stage I, refreshed periodically, never all of one type."""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Sequence

import numpy
from spacy.util import registry

from .tags import MISSING

# (n, C) model probabilities and (n,) distant tag ids per document, the tag names ->
# {"keep": (n,) bool masks, "removed": share removed per type, "reset": types kept whole}
LabelFilter = Callable[[Sequence[numpy.ndarray], Sequence[numpy.ndarray], Sequence[str]], Dict[str, Any]]


def type_groups(tags: Sequence[str]) -> List[str]:
    """The entity type of each BIO tag ("O" for "O"): B-X and I-X count as one type."""
    return [tag.split("-", 1)[1] if "-" in tag else tag for tag in tags]


@dataclass
class ConfidenceFilter:
    """Keep a distant label where the model gives its type (B-X + I-X, or O) a probability
    above `threshold`; a type that would lose more than `max_removed` of its labelled
    tokens keeps them all (RoSTER's safety reset). `remove = "o"` only ever removes distant
    O labels (the missed entities, distant supervision's main noise; RoSTER's binary loss
    keeps every distant entity too)."""

    threshold: float = 0.7
    max_removed: float = 0.9
    remove: Literal["any", "o"] = "any"

    def __call__(
        self, mixtures: Sequence[numpy.ndarray], labels: Sequence[numpy.ndarray], tags: Sequence[str]
    ) -> Dict[str, Any]:
        """Keep masks for documents' (n, C) model probabilities and (n,) distant tag ids
        (MISSING: no label); RETURNS {"keep": masks, "removed": per type, "reset": types}."""
        groups = type_groups(tags)
        names = sorted(set(groups), key=groups.index)
        member = numpy.asarray([[g == name for g in groups] for name in names], dtype="float32")
        type_of_tag = numpy.asarray([names.index(g) for g in groups])
        keeps: List[numpy.ndarray] = []
        types: List[numpy.ndarray] = []
        for probs, ids in zip(mixtures, labels):
            labelled = ids != MISSING
            t = numpy.full(ids.shape, -1)
            t[labelled] = type_of_tag[ids[labelled]]
            p_type = (probs @ member.T) if len(ids) else numpy.zeros((0, len(names)))
            keep = numpy.zeros(ids.shape, dtype=bool)
            keep[labelled] = p_type[numpy.flatnonzero(labelled), t[labelled]] > self.threshold
            if self.remove == "o":
                keep |= labelled & (t != names.index("O"))
            keeps.append(keep)
            types.append(t)
        all_types = numpy.concatenate(types) if types else numpy.zeros((0,), dtype=int)
        all_keep = numpy.concatenate(keeps) if keeps else numpy.zeros((0,), dtype=bool)
        removed: Dict[str, float] = {}
        reset: List[str] = []
        for i, name in enumerate(names):
            n_labelled = int((all_types == i).sum())
            if not n_labelled:
                continue
            share = 1.0 - float(all_keep[all_types == i].sum()) / n_labelled
            if share > self.max_removed:
                reset.append(name)
                share = 0.0
                for keep, t in zip(keeps, types):
                    keep[t == i] = True
            removed[name] = share
        return {"keep": keeps, "removed": removed, "reset": reset}


@registry.misc("spacy-bond-moe.confidence_filter.v1")
def build_confidence_filter_v1(
    threshold: float = 0.7, max_removed: float = 0.9, remove: Literal["any", "o"] = "any"
) -> ConfidenceFilter:
    """RoSTER's noisy-label removal (τ = 0.7, reset above 90% removed): see `ConfidenceFilter`."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"[bond_moe_ner] label filter threshold must be in (0, 1), got {threshold}")
    if not 0.0 <= max_removed <= 1.0:
        raise ValueError(f"[bond_moe_ner] label filter max_removed must be in [0, 1], got {max_removed}")
    return ConfidenceFilter(threshold, max_removed, remove)

