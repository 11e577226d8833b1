"""Token losses for one expert: soft cross-entropy and generalized cross-entropy.

Gradients are returned with respect to the expert's *logits* (thinc's Softmax
convention), so the expert heads pass them straight to their linear layer.
"""
from typing import Optional, Sequence, Tuple

from thinc.types import Floats2d, Floats3d
from thinc.util import get_array_module

_EPS = 1e-8


def soft_cross_entropy(
    probs: Floats2d, targets: Floats2d, mask: Floats2d
) -> Tuple[float, Floats2d]:
    """Summed -sum_c q_c log p_c over masked tokens.

    probs (Floats2d): (n, C) expert probabilities.
    targets (Floats2d): (n, C) target distributions (one-hot or soft).
    mask (Floats2d): (n, 1) 1.0 for supervised tokens, 0.0 elsewhere.
    RETURNS (Tuple[float, Floats2d]): the summed loss and d(loss)/d(logits).
    """
    xp = get_array_module(probs)
    loss = -(mask * targets * xp.log(probs + _EPS)).sum()
    d_logits = mask * (probs * targets.sum(axis=1, keepdims=True) - targets)
    return float(loss), d_logits


def generalized_cross_entropy(
    probs: Floats2d, targets: Floats2d, mask: Floats2d, q: float
) -> Tuple[float, Floats2d]:
    """Summed GCE (1 - (q·p)^a) / a of Zhang & Sabuncu (2018), a = q in (0, 1].

    For one-hot targets, the gradient is the cross-entropy gradient scaled by p_y^a:
    confidently wrong (likely noisy) labels pull less.
    """
    p_target = (targets * probs).sum(axis=1, keepdims=True) + _EPS
    powered = p_target**q
    loss = (mask * (1.0 - powered) / q).sum()
    d_logits = -mask * (powered / p_target) * probs * (targets - p_target)
    return float(loss), d_logits


def expert_loss(
    probs: Floats3d, expert: Optional[int], targets: Floats2d, mask: Floats2d,
    gce_q: float = 0.0,
) -> Tuple[float, Floats3d]:
    """Loss of one document routed to one expert; other experts get no gradient.

    probs (Floats3d): (n, K, C) per-expert probabilities of the document's tokens.
    expert (Optional[int]): The expert this document is assigned to; None shares it:
        the loss is the mean over all K experts, each receiving its part.
    gce_q (float): 0 for soft cross-entropy, else the GCE exponent.
    RETURNS (Tuple[float, Floats3d]): summed loss and (n, K, C) logit gradient.
    """
    n_experts = probs.shape[1]
    if expert is None:
        weights = [1.0 / n_experts] * n_experts
    else:
        weights = [1.0 if k == expert else 0.0 for k in range(n_experts)]
    return weighted_expert_loss(probs, weights, targets, mask, gce_q)


def weighted_expert_loss(
    probs: Floats3d, weights: Sequence[float], targets: Floats2d, mask: Floats2d,
    gce_q: float = 0.0,
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
        if gce_q > 0:
            loss, d_k = generalized_cross_entropy(probs[:, k, :], targets, mask, gce_q)
        else:
            loss, d_k = soft_cross_entropy(probs[:, k, :], targets, mask)
        total += float(weight) * loss
        d_probs[:, k, :] = float(weight) * d_k
    return total, d_probs
