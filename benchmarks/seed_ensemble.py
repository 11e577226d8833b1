"""Do pipelines trained on ALL the documents with different seeds pay as an ensemble?

    python benchmarks/seed_ensemble.py --name webpage__bond_grouped__1200steps \
        --data corpus/webpage/dev.spacy --data corpus/webpage/test.spacy \
        runs/bench/webpage__bond_grouped__seed{0,1,2}__1200steps/model-best

RoSTER's seed ensemble, post hoc: every member tags the gold split's text, the ensemble
averages the members' token mixtures (n, C) and decodes the average with the component's own
constrained Viterbi (`set_annotations`); scored by the component's scorer (`spacy evaluate`'s
figures). Reports each member alone, every sub-ensemble, all members, and how often two
members pick the same tag for a token. Members are trained independently (no shared weights,
unlike the K experts of one pipeline), so this is the ceiling of the mixture candidate
"members on all data, differing by seed" without training anything. Writes
benchmarks/results/ensemble__<name>__<split>.json per split.
"""
import argparse
import itertools
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy
import spacy
from spacy.language import Language
from spacy.tokens import Doc, DocBin
from spacy.training import Example

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import model_fingerprint, write_json_atomic  # noqa: E402

COMPONENT = "bond_moe_ner"


def blank_docs(nlp: Language, gold: Sequence[Doc]) -> List[Doc]:
    """The gold docs' texts tokenised by `nlp`, as `spacy evaluate` does (the scorer aligns
    them to the gold tokens), so that a member alone scores what its run JSON reports."""
    return [nlp.make_doc(d.text) for d in gold]


def mixtures_of(nlp: Language, gold: Sequence[Doc]) -> List[numpy.ndarray]:
    """Each gold doc's (n, C) mixture under one pipeline (upstream pipes applied first)."""
    pipe = nlp.get_pipe(COMPONENT)
    docs = blank_docs(nlp, gold)
    for name, proc in nlp.pipeline:
        if name == COMPONENT:
            break
        docs = list(proc.pipe(docs))
    return [pipe.combine(p) for p in pipe.predict(docs)]


def score(nlp: Language, gold: Sequence[Doc], mixtures: Sequence[numpy.ndarray]) -> Dict[str, float]:
    """Decode (n, C) mixtures with `nlp`'s component and score them against the gold docs."""
    pipe = nlp.get_pipe(COMPONENT)
    docs = blank_docs(nlp, gold)
    combine = pipe.cfg["combine"]
    pipe.cfg["combine"] = "mean"  # the (n, 1, C) input below is already the mixture
    try:
        pipe.set_annotations(docs, [m[:, None, :] for m in mixtures])
    finally:
        pipe.cfg["combine"] = combine
    scores = pipe.score([Example(d, g) for d, g in zip(docs, gold)])
    return {"p": round(100 * scores["ents_p"], 2), "r": round(100 * scores["ents_r"], 2),
            "f": round(100 * scores["ents_f"], 2)}


def agreement(a: Sequence[numpy.ndarray], b: Sequence[numpy.ndarray]) -> float:
    """Share of tokens where two members' mixtures have the same argmax tag."""
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b))
    return round(same / max(sum(len(x) for x in a), 1), 4)


def evaluate_split(members: Sequence[Tuple[Path, Language]], data: Path) -> Dict[str, Any]:
    """Every subset of the members scored on one gold split."""
    first = members[0][1]
    gold = list(DocBin().from_disk(data).get_docs(first.vocab))
    per_member = [mixtures_of(nlp, gold) for _, nlp in members]
    subsets: Dict[str, Dict[str, float]] = {}
    for size in range(1, len(members) + 1):
        for subset in itertools.combinations(range(len(members)), size):
            mean = [numpy.mean([per_member[i][d] for i in subset], axis=0) for d in range(len(gold))]
            subsets["+".join(str(i) for i in subset)] = score(first, gold, mean)
    n = len(members)
    singles = [subsets[str(i)]["f"] for i in range(n)]
    return {
        "data": str(data), "n_docs": len(gold),
        "subsets": subsets,
        "members_mean_f": round(float(numpy.mean(singles)), 2),
        "members_std_f": round(float(numpy.std(singles, ddof=1)), 2) if n > 1 else 0.0,
        "ensemble_f": subsets["+".join(str(i) for i in range(n))]["f"],
        "agreement": {f"{a}-{b}": agreement(per_member[a], per_member[b])
                      for a, b in itertools.combinations(range(n), 2)},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help="the members' pipeline directories")
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="a gold DocBin to score (repeat for several splits)")
    parser.add_argument("--name", required=True, help="result name: ensemble__<name>__<split>.json")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("an ensemble needs at least two member pipelines")
    members = [(path, spacy.load(path)) for path in args.models]
    tags = members[0][1].get_pipe(COMPONENT).tags
    for path, nlp in members[1:]:
        if nlp.get_pipe(COMPONENT).tags != tags:
            parser.error(f"{path}: its tags differ from {members[0][0]}'s; members must share labels")
    command = " ".join(["python benchmarks/seed_ensemble.py --name", args.name]
                       + [f"--data {d}" for d in args.data] + [str(m) for m in args.models])
    for data in args.data:
        result = {"command": command, "name": args.name,
                  "members": [{"model": str(path), "model_sha256": model_fingerprint(path)}
                              for path, _ in members],
                  **evaluate_split(members, data)}
        out = args.results / f"ensemble__{args.name}__{data.stem}.json"
        write_json_atomic(out, result)
        print(f"{data}: members {result['members_mean_f']} +- {result['members_std_f']}, "
              f"ensemble {result['ensemble_f']}, agreement {result['agreement']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
