"""Do the K experts of a trained pipeline differ? Per-expert F1 and pairwise agreement.

    python benchmarks/expert_agreement.py runs/bench/webpage__bond_moe__seed0/model-best corpus/webpage/test.spacy

Decodes every expert ALONE (its own probabilities, the same constrained Viterbi as the
mixture) and the mixture, scores each against the gold docs (entity-level P/R/F1), and
measures how often two experts pick the same tag for a token (argmax) and the mean total-
variation distance between their token distributions. Identical experts (agreement ~1, TV ~0)
mean the mixture is one model. It also scores the paper code's evaluation for comparison: per
sentence, the expert whose probabilities fit the GOLD tags best (lowest mean NLL) is decoded
(algorithm.md §5.4). That "leaky oracle" reads the test labels: it is NOT a valid result, only a
measure of how much such an evaluation inflates a mixture. With `--train` (the distant train DocBin) it also runs one fair
E-step on the distant labels with the trained experts and counts, per expert, the documents it
would get and how many of them hold no entity (an expert full of entity-free documents learns
to predict "O" only). Writes JSON next to the other results.
"""

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy
import spacy
from spacy.tokens import Doc, DocBin
from spacy.training import Example

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spacy_bond_moe import em  # noqa: E402
from spacy_bond_moe.losses import EPS  # noqa: E402
from spacy_bond_moe.report import prf as entity_prf  # noqa: E402
from spacy_bond_moe.tags import (  # noqa: E402
    MISSING, example_tag_ids, tags_to_spans, transition_mask, viterbi_decode,
)

sys.path.insert(0, str(ROOT / "benchmarks"))
from run import model_fingerprint, write_json_atomic  # noqa: E402


def prf(pred: List[Set[Tuple[int, int, str]]], gold: List[Set[Tuple[int, int, str]]]) -> Dict[str, float]:
    """Entity-level micro P/R/F1 (the report's scorer), rounded for the JSON."""
    return {key: round(value, 4) for key, value in entity_prf(pred, gold).items()}


def gold_fit_expert(probs: numpy.ndarray, example: Example, tags: Sequence[str]) -> int:
    """The expert with the lowest mean NLL of the GOLD tags (the paper code's eval path)."""
    ids = example_tag_ids(example, {tag: i for i, tag in enumerate(tags)})
    keep = ids != MISSING
    if not keep.any():
        return 0
    fit = probs[keep][numpy.arange(int(keep.sum())), :, ids[keep]]  # (tokens, K)
    return int(numpy.log(fit + EPS).mean(axis=0).argmax())


def estep_view(nlp: Any, pipe: Any, train: Path) -> Dict[str, Any]:
    """Loads of one fair E-step on the distant train labels, and entity-free documents per expert."""
    refs = list(DocBin().from_disk(train).get_docs(nlp.vocab))
    examples = [Example(Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]), d)
                for d in refs]
    keys, costs, has_entity = pipe.expert_costs(examples, nlp=nlp, batch_size=64)
    experts = em.build_sinkhorn_assigner_v1()(costs).experts
    per_expert = []
    for k in range(pipe.n_experts):
        mine = experts == k
        per_expert.append({"docs": int(mine.sum()), "entity_free": int((~has_entity[mine]).sum()),
                           "mean_cost_entity_free": round(float(costs[~has_entity, k].mean()), 4)
                           if (~has_entity).any() else None})
    return {"train": str(train), "n_docs": len(keys), "n_docs_with_entities": int(has_entity.sum()),
            "per_expert": per_expert}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--component", default="bond_moe_ner")
    parser.add_argument("--train", type=Path, default=None,
                        help="distant train DocBin: also report one E-step's entity-free documents per expert")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/experts__<run dir name>__<data stem>.json")
    args = parser.parse_args(argv)
    nlp = spacy.load(args.model)
    pipe = nlp.get_pipe(args.component)
    gold_docs = list(DocBin().from_disk(args.data).get_docs(nlp.vocab))
    docs = [doc.copy() for doc in gold_docs]
    for name, proc in nlp.pipeline:
        if name == args.component:
            break
        docs = list(proc.pipe(docs))
    probs = [pipe.model.ops.to_numpy(p) for p in pipe.predict(docs)]  # (n, K, C) per doc
    tags = pipe.tags
    start, trans = transition_mask(tags)
    k = pipe.n_experts
    gold = [{(e.start, e.end, e.label_) for e in d.ents} for d in gold_docs]

    def decode(dist: numpy.ndarray, doc: Any) -> Set[Tuple[int, int, str]]:
        if len(doc) == 0:
            return set()
        path = viterbi_decode(numpy.log(dist + EPS), start, trans)
        return {(s.start, s.end, s.label_) for s in tags_to_spans(doc, path, tags)}

    scores = {f"expert_{i}": prf([decode(p[:, i], d) for p, d in zip(probs, docs)], gold) for i in range(k)}
    scores["mixture"] = prf([decode(pipe.combine(p), d) for p, d in zip(probs, docs)], gold)
    oracle_picks = [gold_fit_expert(p, Example(d, g), tags) for p, d, g in zip(probs, docs, gold_docs)]
    scores["leaky_oracle"] = prf([decode(p[:, j], d) for p, d, j in zip(probs, docs, oracle_picks)], gold)
    pairs = {}
    for a, b in itertools.combinations(range(k), 2):
        tokens = [(p[:, a], p[:, b]) for p in probs if len(p)]
        same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in tokens)
        n = sum(len(x) for x, _ in tokens)
        tv = sum(float(0.5 * numpy.abs(x - y).sum()) for x, y in tokens) / max(n, 1)
        pairs[f"{a}-{b}"] = {"argmax_agreement": round(same / max(n, 1), 4), "mean_tv_distance": round(tv, 4)}
    command = f"python benchmarks/expert_agreement.py {args.model} {args.data}"
    result: Dict[str, Any] = {"command": command + (f" --train {args.train}" if args.train else ""),
                              "model_sha256": model_fingerprint(args.model), "n_docs": len(docs),
                              "n_experts": k, "entity_scores": scores, "pairs": pairs}
    if args.train is not None:
        result["estep_view"] = estep_view(nlp, pipe, args.train)
    out = args.out or ROOT / "benchmarks" / "results" / f"experts__{args.model.parent.name}__{args.data.stem}.json"
    result["leaky_oracle_picks"] = [int(x) for x in numpy.bincount(oracle_picks, minlength=k)]
    write_json_atomic(out, result)
    for name, s in scores.items():
        print(f"{name:10} P {100 * s['p']:5.1f} R {100 * s['r']:5.1f} F1 {100 * s['f']:5.1f}")
    for pair, s in pairs.items():
        print(f"experts {pair}: argmax agreement {s['argmax_agreement']:.4f}, mean TV distance {s['mean_tv_distance']:.4f}")
    for i, e in enumerate(result.get("estep_view", {}).get("per_expert", [])):
        print(f"E-step on distant train labels, expert {i}: {e['docs']} docs, {e['entity_free']} entity-free, "
              f"mean cost on entity-free docs {e['mean_cost_entity_free']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
