"""Token losses for one expert: soft cross-entropy and generalized cross-entropy, the
registered distant-label losses, and the token NLL that the E-step costs are made of.

Gradients are returned with respect to the expert's *logits* (thinc's Softmax
convention), so the expert heads pass them straight to their linear layer.
"""
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Literal, Optional, Sequence, Tuple, Union

import numpy
from spacy.tokens import Doc
from spacy.util import registry
from thinc.types import Floats1d, Floats2d, Floats3d
from thinc.util import get_array_module

from .tags import capitalised_mask

EPS = 1e-12  # the one epsilon inside every log and division of the package
TokenLoss = Callable[[Floats2d, Floats2d, Floats2d], Tuple[float, Floats2d]]
UncertainO = Literal["none", "capitalised", "proper"]


def token_nll(probs: Union[Floats2d, Floats3d], targets: Floats2d) -> Union[Floats1d, Floats2d]:
    """-sum_c q_c log p_c per token: (n, C) targets against (n, C) or (n, K, C) probs."""
    xp = get_array_module(probs)
    if probs.ndim == 3:
        targets = targets[:, None, :]
    return -(targets * xp.log(probs + EPS)).sum(axis=-1)


def soft_cross_entropy(
    probs: Floats2d, targets: Floats2d, mask: Floats2d
) -> Tuple[float, Floats2d]:
    """Summed -sum_c q_c log p_c over masked tokens.

    probs (Floats2d): (n, C) expert probabilities.
    targets (Floats2d): (n, C) target distributions (one-hot or soft).
    mask (Floats2d): (n, 1) 1.0 for supervised tokens, 0.0 elsewhere.
    RETURNS (Tuple[float, Floats2d]): the summed loss and d(loss)/d(logits).
    """
    loss = (mask[:, 0] * token_nll(probs, targets)).sum()
    d_logits = mask * (probs * targets.sum(axis=1, keepdims=True) - targets)
    return float(loss), d_logits


def generalized_cross_entropy(
    probs: Floats2d, targets: Floats2d, mask: Floats2d, q: float
) -> Tuple[float, Floats2d]:
    """Summed GCE (1 - (q·p)^a) / a of Zhang & Sabuncu (2018), a = q in (0, 1].

    For one-hot targets, the gradient is the cross-entropy gradient scaled by p_y^a:
    confidently wrong (likely noisy) labels pull less.
    """
    p_target = (targets * probs).sum(axis=1, keepdims=True) + EPS
    powered = p_target**q
    loss = (mask * (1.0 - powered) / q).sum()
    d_logits = -mask * (powered / p_target) * probs * (targets - p_target)
    return float(loss), d_logits


def expert_loss(
    probs: Floats3d, expert: Optional[int], targets: Floats2d, mask: Floats2d,
    token_loss: TokenLoss = soft_cross_entropy,
) -> Tuple[float, Floats3d]:
    """Loss of one document routed to one expert; other experts get no gradient.

    probs (Floats3d): (n, K, C) per-expert probabilities of the document's tokens.
    expert (Optional[int]): The expert this document is assigned to; None shares it:
        the loss is the mean over all K experts, each receiving its part.
    token_loss (TokenLoss): one expert's summed loss and logit gradient.
    RETURNS (Tuple[float, Floats3d]): summed loss and (n, K, C) logit gradient.
    """
    n_experts = probs.shape[1]
    if expert is None:
        weights = [1.0 / n_experts] * n_experts
    else:
        weights = [1.0 if k == expert else 0.0 for k in range(n_experts)]
    return weighted_expert_loss(probs, weights, targets, mask, token_loss)


def weighted_expert_loss(
    probs: Floats3d, weights: Sequence[float], targets: Floats2d, mask: Floats2d,
    token_loss: TokenLoss = soft_cross_entropy,
) -> Tuple[float, Floats3d]:
    """Loss of one document spread over the experts: sum_k weights[k] * loss_k (soft M-step).

    weights (Sequence[float]): (K,) non-negative responsibilities (zero: no gradient).
    RETURNS (Tuple[float, Floats3d]): summed loss and (n, K, C) logit gradient.
    """
    xp = get_array_module(probs)
    d_probs = xp.zeros_like(probs)
    total = 0.0
    for k, weight in enumerate(weights):
        if weight <= 0:
            continue
        loss, d_k = token_loss(probs[:, k, :], targets, mask)
        total += float(weight) * loss
        d_probs[:, k, :] = float(weight) * d_k
    return total, d_probs


@dataclass
class DistantLoss:
    """The stage-I loss on distant labels: a token loss, and which "O" labels it trusts.

    o_drop (float): Fraction of distant "O" tokens left unsupervised at each update
        (missed entities are the distant labels' main noise), drawn anew each time.
    uncertain_o (UncertainO): Distant "O" labels never supervised: "capitalised": on
        capitalised tokens that are not stop words (`tags.capitalised_mask`); "proper": on
        those whose word is capitalised in the training corpus at least
        1 - `max_lower_share` of the time (names; not "Monday"-like common words that also
        occur in lower case: "Results", "SOCCER"); "none": all are supervised.
    max_lower_share (float): For "proper": the largest share of lower-case occurrences.
    """

    token_loss: TokenLoss
    o_drop: float = 0.0
    uncertain_o: UncertainO = "none"
    max_lower_share: float = 0.2
    rng: numpy.random.Generator = field(default_factory=lambda: numpy.random.default_rng(0))
    lower_share: Optional[Dict[str, float]] = None  # "proper": per lower-cased word, training only

    def initialize(self, docs: Iterable[Doc]) -> None:
        """Count how often each word of the training corpus is written in lower case."""
        if self.uncertain_o != "proper":
            return
        lower: Counter = Counter()
        total: Counter = Counter()
        for doc in docs:
            for token in doc:
                if token.is_alpha:
                    total[token.lower_] += 1
                    lower[token.lower_] += token.text[:1].islower()
        self.lower_share = {word: lower[word] / n for word, n in total.items()}

    def state(self) -> Dict[str, Any]:
        """The training-only casing table (for a resumed run)."""
        return {"lower_share": self.lower_share}

    def load_state(self, state: Dict[str, Any]) -> None:
        """Restore what `state` returned."""
        self.lower_share = state.get("lower_share")

    def supervised(
        self, tag_ids: numpy.ndarray, mask: numpy.ndarray, doc: Optional[Doc] = None
    ) -> numpy.ndarray:
        """The training mask after O-dropping (`tag_ids` 0 = "O"; `doc` has the tokens of
        `tag_ids`, needed for `uncertain_o`)."""
        if self.uncertain_o != "none":
            if doc is None or len(doc) != len(tag_ids):
                raise ValueError("[bond_moe_ner] uncertain_o needs the doc of the tag ids")
            uncertain = capitalised_mask(doc)
            if self.uncertain_o == "proper":
                if self.lower_share is None:
                    raise ValueError("[bond_moe_ner] uncertain_o = 'proper' needs the casing "
                                     "table of the training corpus: initialize the component")
                share = self.lower_share
                uncertain &= numpy.fromiter(
                    (share.get(t.lower_, 0.0) <= self.max_lower_share for t in doc),
                    dtype=bool, count=len(doc))
            mask = mask & ~((tag_ids == 0) & uncertain)
        if self.o_drop <= 0:
            return mask
        return mask & ~((tag_ids == 0) & (self.rng.random(len(tag_ids)) < self.o_drop))


def _check_o_drop(o_drop: float) -> None:
    if not 0.0 <= o_drop < 1.0:
        raise ValueError(f"[bond_moe_ner] o_drop must be in [0, 1), got {o_drop}")


def _gce(q: float) -> TokenLoss:
    if not 0.0 < q <= 1.0:
        raise ValueError(f"[bond_moe_ner] gce q must be in (0, 1], got {q}")

    def gce(probs: Floats2d, targets: Floats2d, mask: Floats2d) -> Tuple[float, Floats2d]:
        return generalized_cross_entropy(probs, targets, mask, q)

    return gce


@registry.misc("spacy-bond-moe.cross_entropy.v1")
def build_cross_entropy_v1(o_drop: float = 0.0) -> DistantLoss:
    """Cross-entropy on the distant labels (BOND's stage I)."""
    _check_o_drop(o_drop)
    return DistantLoss(soft_cross_entropy, o_drop)


def _check_max_lower_share(max_lower_share: float) -> None:
    if not 0.0 <= max_lower_share < 1.0:
        raise ValueError(f"[bond_moe_ner] max_lower_share must be in [0, 1), got {max_lower_share}")


@registry.misc("spacy-bond-moe.cross_entropy.v2")
def build_cross_entropy_v2(
    o_drop: float = 0.0, uncertain_o: UncertainO = "none", max_lower_share: float = 0.2
) -> DistantLoss:
    """v1, plus `uncertain_o`: distant "O" labels on capitalised ("capitalised") or
    name-like ("proper") tokens are left unsupervised (see `DistantLoss`)."""
    _check_o_drop(o_drop)
    _check_max_lower_share(max_lower_share)
    return DistantLoss(soft_cross_entropy, o_drop, uncertain_o, max_lower_share)


@registry.misc("spacy-bond-moe.gce.v1")
def build_gce_v1(q: float = 0.7, o_drop: float = 0.0) -> DistantLoss:
    """Generalized cross-entropy with exponent `q` in (0, 1] (RoSTER's noise-robust loss)."""
    token_loss = _gce(q)
    _check_o_drop(o_drop)
    return DistantLoss(token_loss, o_drop)


@registry.misc("spacy-bond-moe.gce.v2")
def build_gce_v2(
    q: float = 0.7, o_drop: float = 0.0, uncertain_o: UncertainO = "none",
    max_lower_share: float = 0.2,
) -> DistantLoss:
    """gce.v1, plus `uncertain_o` and `max_lower_share` as in cross_entropy.v2."""
    token_loss = _gce(q)
    _check_o_drop(o_drop)
    _check_max_lower_share(max_lower_share)
    return DistantLoss(token_loss, o_drop, uncertain_o, max_lower_share)
