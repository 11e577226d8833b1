"""Hard-EM over documents: stable document keys, the registered expert assigners (fair
Sinkhorn-balanced or argmax) and the router that holds the E-step's training state."""
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence

import numpy
from spacy.tokens import Doc
from spacy.util import registry

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


ExpertScope = Literal["all", "entities"]
MStep = Literal["hard", "soft"]


@dataclass
class EStep:
    """One E-step's outcome: hard experts, soft weights (soft M-step only), residual."""

    experts: numpy.ndarray  # (N,) int64
    weights: Optional[numpy.ndarray]  # (N, K) rows summing to 1, or None
    residual: float  # Sinkhorn's marginal error (0.0 without Sinkhorn)


@dataclass
class Assigner:
    """How an E-step turns the (N, K) document x expert costs into routing.

    fair (bool): Sinkhorn-balanced transport plan rounded to equal loads (most confident
        documents first, until an expert holds ceil(N/K)); False: the plain argmin of
        the costs (collapse-prone; the paper's ablation). Ties break at random.
    lam (float): Sinkhorn's entropic temperature; without Sinkhorn, the temperature of the
        soft weights softmax(-costs / lam).
    scope (str): "all" scores every document; "entities" only documents whose targets hold
        an entity, the others are dealt evenly at random (else they fill one expert).
    m_step (str): "hard" trains each document on its expert; "soft" spreads its loss by
        its weights (rows of the Sinkhorn plan, or the softmax).
    """

    fair: bool
    lam: float
    max_iter: int
    tol: float
    scope: ExpertScope
    m_step: MStep

    def __call__(
        self, costs: numpy.ndarray, *, seed: int = 0, active: Optional[numpy.ndarray] = None
    ) -> EStep:
        """Route N documents; `active` (N,) bool limits scoring (None: all documents)."""
        n_docs, n_experts = costs.shape
        rows = numpy.ones((n_docs,), dtype=bool) if active is None else active
        experts = numpy.zeros((n_docs,), dtype="int64")
        if not rows.all():
            experts[~rows] = balanced_random(int((~rows).sum()), n_experts, seed)
        weights = numpy.full((n_docs, n_experts), 1.0 / n_experts) if self.m_step == "soft" else None
        residual = 0.0
        scored = costs[rows]
        if scored.shape[0]:
            jitter = numpy.random.default_rng(seed).uniform(0.0, 1e-9, size=scored.shape)
            if self.fair:
                plan = sinkhorn(scored, lam=self.lam, max_iter=self.max_iter, tol=self.tol)
                logits, residual = plan.plan_log, plan.residual
                experts[rows] = round_plan(logits + jitter)
            else:
                logits = -scored.astype("float64") / self.lam
                experts[rows] = (-scored + jitter).argmax(axis=1)
            if weights is not None:
                weights[rows] = numpy.exp(logits - log_sum_exp(logits, axis=1)[:, None])
        return EStep(experts, weights, residual)


def _check_assigner_args(lam: float, max_iter: int, tol: float) -> None:
    if lam <= 0:
        raise ValueError(f"[bond_moe_ner] assigner lam must be > 0, got {lam}")
    if max_iter < 1:
        raise ValueError(f"[bond_moe_ner] assigner max_iter must be >= 1, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"[bond_moe_ner] assigner tol must be > 0, got {tol}")


@registry.misc("spacy-bond-moe.sinkhorn_assigner.v1")
def build_sinkhorn_assigner_v1(
    lam: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    scope: ExpertScope = "all",
    m_step: MStep = "hard",
) -> Assigner:
    """The paper's fair E-step: Sinkhorn (temperature `lam`, at most `max_iter`
    iterations, marginal tolerance `tol`) and balanced rounding (see `Assigner`)."""
    _check_assigner_args(lam, max_iter, tol)
    return Assigner(True, lam, max_iter, tol, scope, m_step)


@registry.misc("spacy-bond-moe.argmax_assigner.v1")
def build_argmax_assigner_v1(
    temperature: float = 0.1, scope: ExpertScope = "all", m_step: MStep = "hard"
) -> Assigner:
    """The unbalanced E-step (w/o fair assignment): each document to its cheapest expert;
    `temperature` only shapes the soft M-step's weights (see `Assigner`)."""
    _check_assigner_args(temperature, 1, 1.0)
    return Assigner(False, temperature, 1, 1.0, scope, m_step)


class Router:
    """The E-step's training state: document -> expert, soft weights, expert loads.

    Never serialised: a loaded pipeline routes nothing (inference mixes all experts);
    the expert prior it yields is kept by the component's `cfg`.
    """

    def __init__(self, n_experts: int, assigner: Assigner) -> None:
        self.n_experts = n_experts
        self.assigner = assigner
        self.assignments: Dict[str, int] = {}
        self.responsibilities: Dict[str, numpy.ndarray] = {}
        self.prior: List[float] = [1.0 / n_experts] * n_experts

    def state(self) -> Dict[str, Any]:
        """The routing as msgpack-able data (for resuming a training run)."""
        return {"assignments": dict(self.assignments), "prior": list(self.prior),
                "responsibilities": dict(self.responsibilities)}

    def load_state(self, state: Dict[str, Any]) -> None:
        """Restore what `state` returned."""
        self.assignments = {str(k): int(v) for k, v in state["assignments"].items()}
        self.prior = [float(x) for x in state["prior"]]
        self.responsibilities = {str(k): numpy.asarray(v)
                                 for k, v in state["responsibilities"].items()}

    def deal(self, keys: Sequence[str]) -> None:
        """The initial routing: the sorted keys dealt evenly at random."""
        keys = sorted(set(keys))
        experts = balanced_random(len(keys), self.n_experts)
        self.assignments = dict(zip(keys, (int(k) for k in experts)))
        self.responsibilities = {}

    def expert_of(self, key: str) -> int:
        """The assigned expert of a document key (hash-based for unseen documents)."""
        expert = self.assignments.get(key)
        return hash_expert(key, self.n_experts) if expert is None else expert

    def weights_of(self, key: str) -> Optional[numpy.ndarray]:
        """The document's soft M-step weights (None: train its assigned expert)."""
        return self.responsibilities.get(key)

    def estep(
        self, keys: Sequence[str], costs: numpy.ndarray, has_entity: numpy.ndarray,
        step: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Re-route every document from its (N, K) costs; returns the event to log."""
        active = has_entity if self.assigner.scope == "entities" else None
        result = self.assigner(costs, seed=step or 0, active=active)
        changed = sum(1 for key, k in zip(keys, result.experts) if self.expert_of(key) != int(k))
        self.assignments = {key: int(k) for key, k in zip(keys, result.experts)}
        self.responsibilities = {} if result.weights is None else dict(zip(keys, result.weights))
        loads = numpy.bincount(result.experts, minlength=self.n_experts)
        self.prior = [float(x) for x in loads / loads.sum()]
        event: Dict[str, Any] = {
            "event": "estep",
            "step": step,
            "n_docs": len(keys),
            "n_docs_with_entities": int(has_entity.sum()),
            "loads": [int(x) for x in loads],
            "changed": changed,
            "sinkhorn_residual": result.residual,
            "mean_cost": [float(x) for x in costs.mean(axis=0)],
        }
        if result.weights is not None:  # how hard the soft M-step is: 1/K = shared, 1 = hard
            event["mean_max_responsibility"] = float(result.weights.max(axis=1).mean())
        return event


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
