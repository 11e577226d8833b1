"""Where does K=3 (shared encoder) spend more than K=1 per training step? An A/B profile.

    python benchmarks/profile_experts.py [--steps 20] [--config configs/minilm.cfg]

Builds both pipelines in ONE process and alternates their `nlp.update` calls on the same
batches (order swapped every step), so machine load hits both alike; each update runs under
its own cProfile. Prints the mean seconds per step of each and the functions whose own time
(tottime) grows most from K=1 to K=3. Writes benchmarks/results/profile_experts.json.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
COMPONENT = "bond_moe_ner"


def build(config: Path, train: Path, n_experts: int) -> Any:
    """An initialized pipeline, its examples, optimizer and dropout."""
    import spacy
    from spacy.training import Corpus
    from spacy.util import registry

    spacy.util.fix_random_seed(0)
    overrides = {"paths.train": str(train), "paths.dev": str(train),
                 f"components.{COMPONENT}.model.n_experts": n_experts}
    nlp = spacy.util.load_model_from_config(
        spacy.util.load_config(config, overrides=overrides, interpolate=False), auto_fill=True)
    examples = list(Corpus(str(train))(nlp))
    cfg = nlp.config.interpolate()
    optimizer = registry.resolve({"optimizer": cfg["training"]["optimizer"]})["optimizer"]
    nlp.initialize(lambda: examples, sgd=optimizer)
    return nlp, examples, optimizer, float(cfg["training"]["dropout"])


def own_times(profile: cProfile.Profile) -> Dict[str, float]:
    """Function -> total own time (tottime) in seconds."""
    stats = pstats.Stats(profile)
    return {f"{Path(f).name}:{line}({name})": v[2] for (f, line, name), v in stats.stats.items()}  # type: ignore[attr-defined]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "minilm.cfg")
    parser.add_argument("--train", type=Path, default=ROOT / "corpus" / "webpage" / "train.spacy")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_experts.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import write_json_atomic  # noqa: E402
    from speed import fixed_batches  # noqa: E402

    variants = {"k1": build(args.config, args.train, 1), "k3_shared": build(args.config, args.train, 3)}
    batches = fixed_batches(variants["k1"][1], args.warmup + args.steps, 0)
    seconds: Dict[str, List[float]] = {name: [] for name in variants}
    profiles = {name: cProfile.Profile() for name in variants}
    load_start = os.getloadavg()[0]
    for i, batch in enumerate(batches):
        order = list(variants) if i % 2 == 0 else list(reversed(list(variants)))
        for name in order:
            nlp, examples, optimizer, dropout = variants[name]
            by_key = {eg.reference.user_data.get("bond_moe_id"): eg for eg in examples}
            own = [by_key[eg.reference.user_data.get("bond_moe_id")] for eg in batch]
            profile = profiles[name] if i >= args.warmup else None
            start = time.perf_counter()
            if profile:
                profile.enable()
            nlp.update(own, drop=dropout, sgd=optimizer)
            if profile:
                profile.disable()
            if i >= args.warmup:
                seconds[name].append(time.perf_counter() - start)
    mean = {name: sum(v) / len(v) for name, v in seconds.items()}
    t1, t3 = own_times(profiles["k1"]), own_times(profiles["k3_shared"])
    growth = sorted(((t3.get(k, 0.0) - t1.get(k, 0.0)) / args.steps, k) for k in set(t1) | set(t3))[::-1][:15]
    result = {
        "command": "python benchmarks/profile_experts.py" + (f" --steps {args.steps}" if args.steps != 20 else ""),
        "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
        "steps": args.steps,
        "s_per_step": mean,
        "ratio_k1_over_k3": mean["k1"] / mean["k3_shared"],
        "top_own_time_growth_s_per_step": [{"function": k, "seconds": round(d, 4)} for d, k in growth],
        "loadavg": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    write_json_atomic(args.out, result)
    print(f"s/step: k1 {mean['k1']:.3f}, k3_shared {mean['k3_shared']:.3f}; "
          f"throughput ratio k3/k1 = {mean['k1'] / mean['k3_shared']:.3f}")
    for row in result["top_own_time_growth_s_per_step"]:
        print(f"  +{row['seconds']:.4f} s/step  {row['function']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
