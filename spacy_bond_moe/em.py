"""Hard-EM over documents: stable document keys, responsibilities and fair
(Sinkhorn-balanced) assignment of documents to experts."""
import hashlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy
from spacy.tokens import Doc

DOC_ID_KEY = "bond_moe_id"


def doc_key(doc: Doc) -> str:
    """A document's stable id: `doc.user_data["bond_moe_id"]`, else a text hash."""
    key = doc.user_data.get(DOC_ID_KEY)
    if key is not None:
        return str(key)
    return "text:" + hashlib.blake2b(doc.text.encode("utf8"), digest_size=16).hexdigest()


def hash_expert(key: str, n_experts: int) -> int:
    """Deterministic expert for a document missing from the assignment table."""
    digest = hashlib.blake2b(key.encode("utf8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_experts


def log_sum_exp(x: numpy.ndarray, axis: int) -> numpy.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return (top + numpy.log(numpy.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


@dataclass
class SinkhornResult:
    plan_log: numpy.ndarray
    residual: float
    n_iter: int


def sinkhorn(
    costs: numpy.ndarray,
    lam: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    prior: Optional[numpy.ndarray] = None,
) -> SinkhornResult:
    """Log-domain Sinkhorn on the kernel exp(-costs / lam).

    costs (ndarray): (N, K) document x expert costs (mean token NLL).
    prior (Optional[ndarray]): (K,) column marginals; uniform 1/K by default.
    RETURNS (SinkhornResult): log transport plan (rows sum to 1/N, columns to prior),
        the final column-marginal L1 error and the iterations run.
    """
    n_docs, n_experts = costs.shape
    if prior is None:
        prior = numpy.full((n_experts,), 1.0 / n_experts)
    log_r = numpy.log(1.0 / n_docs)
    log_c = numpy.log(prior)
    g = -costs.astype("float64") / lam
    u = numpy.zeros((n_docs,))
    v = numpy.zeros((n_experts,))
    residual = float("inf")
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        u = log_r - log_sum_exp(g + v[None, :], axis=1)
        v = log_c - log_sum_exp(g + u[:, None], axis=0)
        col = numpy.exp(log_sum_exp(g + u[:, None] + v[None, :], axis=0))
        row = numpy.exp(log_sum_exp(g + u[:, None] + v[None, :], axis=1))
        residual = float(numpy.abs(row - 1.0 / n_docs).sum() + numpy.abs(col - prior).sum())
        if residual < tol:
            break
    return SinkhornResult(g + u[:, None] + v[None, :], residual, n_iter)


def assign(
    costs: numpy.ndarray,
    fair: bool = True,
    lam: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    active: Optional[numpy.ndarray] = None,
) -> Tuple[numpy.ndarray, float]:
    """Hard E-step: one expert per document.

    fair=True solves the entropic transport problem with Sinkhorn (uniform marginals)
    and rounds the plan to a hard assignment with equal loads: documents take their
    most probable expert under the plan, most confident documents first, until that
    expert holds ceil(N/K) documents. (A plain argmax of an entropic plan is not
    balanced when cost differences are small against lam.) fair=False is the plain
    argmin of the costs (collapse-prone; kept for the ablation). Ties break at random.
    active (Optional[ndarray]): (N,) bool; only these documents are scored, the others
        are dealt evenly at random (None: all documents are active).
    RETURNS (Tuple[ndarray, float]): (N,) expert ids and the Sinkhorn residual (0.0
        when not fair).
    """
    n_docs, n_experts = costs.shape
    if active is not None and not active.all():
        experts = numpy.zeros((n_docs,), dtype="int64")
        experts[~active] = balanced_random(int((~active).sum()), n_experts, seed)
        experts[active], residual = assign(costs[active], fair, lam, max_iter, tol, seed)
        return experts, residual
    if n_docs == 0:
        return numpy.zeros((0,), dtype="int64"), 0.0
    rng = numpy.random.default_rng(seed)
    jitter = rng.uniform(0.0, 1e-9, size=costs.shape)
    if not fair:
        return (-costs + jitter).argmax(axis=1), 0.0
    result = sinkhorn(costs, lam=lam, max_iter=max_iter, tol=tol)
    return round_plan(result.plan_log + jitter), result.residual


def responsibilities(
    costs: numpy.ndarray,
    fair: bool = True,
    lam: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    active: Optional[numpy.ndarray] = None,
) -> numpy.ndarray:
    """Soft E-step: (N, K) expert weights per document, rows summing to 1.

    fair=True: the rows of the Sinkhorn plan (uniform marginals) renormalised; fair=False:
    softmax(-costs / lam). Documents outside `active` are spread uniformly.
    """
    n_docs, n_experts = costs.shape
    weights = numpy.full((n_docs, n_experts), 1.0 / n_experts)
    rows = numpy.ones((n_docs,), dtype=bool) if active is None else active
    if rows.any():
        if fair:
            logits = sinkhorn(costs[rows], lam=lam, max_iter=max_iter, tol=tol).plan_log
        else:
            logits = -costs[rows].astype("float64") / lam
        weights[rows] = numpy.exp(logits - log_sum_exp(logits, axis=1)[:, None])
    return weights


def round_plan(plan_log: numpy.ndarray) -> numpy.ndarray:
    """Greedy capacity-constrained rounding of a transport plan to hard assignments."""
    n_docs, n_experts = plan_log.shape
    capacity = numpy.full((n_experts,), -(-n_docs // n_experts))
    experts = numpy.full((n_docs,), -1, dtype="int64")
    order = numpy.argsort(-plan_log, axis=None, kind="stable")
    for doc, expert in zip(*numpy.unravel_index(order, plan_log.shape)):
        if experts[doc] < 0 and capacity[expert] > 0:
            experts[doc] = expert
            capacity[expert] -= 1
    return experts


def balanced_random(n_docs: int, n_experts: int, seed: int = 0) -> numpy.ndarray:
    """Initial assignment: a random permutation dealt round-robin (loads differ by <= 1)."""
    rng = numpy.random.default_rng(seed)
    experts = numpy.arange(n_docs) % n_experts
    rng.shuffle(experts)
    return experts
