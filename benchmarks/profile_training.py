"""Where does a training step spend its time? An interleaved A/B cProfile of two speed variants.

    python benchmarks/profile_training.py                                  # k1 vs k3_shared
    python benchmarks/profile_training.py --variants k1_before,k1_grouped_frozen --steps 20

Builds both pipelines (``benchmarks/speed.py`` variants: config, K, expert mode) in ONE process and
alternates their ``nlp.update`` calls on the same batches of the first variant's batcher (order
swapped every step), so machine load hits both alike; each update runs under its own cProfile.
Writes the mean seconds per step of each, the throughput ratio, each variant's own time (tottime)
per step by category (torch backward, Linear forward, attention forward, other torch kernels, the
optimizer, word-piece tokenization, the rest: Python in spaCy/thinc/transformers) and the functions
whose own time differs most, to ``benchmarks/results/profile__<A>__<B>.json``.
"""

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
COMPONENT = "bond_moe_ner"
# category: a test on (file, function name) of a pstats entry, first match wins
CATEGORIES: Tuple[Tuple[str, Any], ...] = (
    ("torch backward", lambda f, n: "run_backward" in n),
    ("Linear forward", lambda f, n: "_nn.linear" in n),
    ("attention forward", lambda f, n: "scaled_dot_product_attention" in n),
    ("optimizer", lambda f, n: "optimizers" in f or "adam" in n.lower()),
    ("word-piece tokenization", lambda f, n: "tokenization" in f or "tokenizers" in f
     or "encode_batch" in n),
    ("other torch kernels", lambda f, n: "torch" in n),
)
OTHER = "Python and the rest"


def build(name: str, config: Path, train: Path, seed: int) -> Tuple[Any, List[Any], Any, Any, float]:
    """An initialized pipeline of speed variant `name`: nlp, examples, optimizer, batcher, dropout."""
    import spacy
    from spacy.training import Corpus
    from spacy.util import registry

    from speed import VARIANTS, variant_config  # noqa: E402

    _, n_experts, mode = VARIANTS[name]
    spacy.util.fix_random_seed(seed)
    overrides: Dict[str, Any] = {"paths.train": str(train), "paths.dev": str(train)}
    if n_experts:
        overrides[f"components.{COMPONENT}.model.n_experts"] = n_experts
        overrides[f"components.{COMPONENT}.model.expert_mode"] = mode
    nlp = spacy.util.load_model_from_config(
        spacy.util.load_config(variant_config(name, config), overrides=overrides, interpolate=False),
        auto_fill=True)
    examples = list(Corpus(str(train))(nlp))
    cfg = nlp.config.interpolate()
    resolved = registry.resolve({"optimizer": cfg["training"]["optimizer"],
                                 "batcher": cfg["training"]["batcher"]})
    nlp.initialize(lambda: examples, sgd=resolved["optimizer"])
    return nlp, examples, resolved["optimizer"], resolved["batcher"], float(cfg["training"]["dropout"])


def own_times(profile: cProfile.Profile) -> Dict[Tuple[str, str], float]:
    """(file, function) -> total own time (tottime) in seconds."""
    stats = pstats.Stats(profile)
    out: Dict[Tuple[str, str], float] = {}
    for (file, line, name), v in stats.stats.items():  # type: ignore[attr-defined]
        key = (file, f"{Path(file).name}:{line}({name})")
        out[key] = out.get(key, 0.0) + v[2]
    return out


def categorize(times: Dict[Tuple[str, str], float], steps: int) -> Dict[str, float]:
    """Own seconds per step by category (CATEGORIES, then OTHER)."""
    out = {name: 0.0 for name, _ in CATEGORIES}
    out[OTHER] = 0.0
    for (file, function), seconds in times.items():
        name = next((c for c, test in CATEGORIES if test(file, function)), OTHER)
        out[name] += seconds / steps
    return {k: round(v, 4) for k, v in out.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="k1,k3_shared", help="A,B: two benchmarks/speed.py variants")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "minilm.cfg",
                        help="the config of variants without their own (k1, k3_shared, ...)")
    parser.add_argument("--train", type=Path, default=ROOT / "corpus" / "webpage" / "train.spacy")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/profile__<A>__<B>.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import write_json_atomic  # noqa: E402
    from speed import VARIANTS, fixed_batches  # noqa: E402

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if len(names) != 2 or len(set(names)) != 2 or any(VARIANTS.get(n, (0, 0))[1] == 0 for n in names):
        parser.error(f"--variants needs two different bond_moe_ner variants of speed.py "
                     f"(K >= 1), got {args.variants!r}")
    if args.steps < 1 or args.warmup < 0 or not args.train.is_file():
        parser.error("--steps must be >= 1, --warmup >= 0 and --train an existing file")
    variants = {name: build(name, args.config, args.train, args.seed) for name in names}
    first = variants[names[0]]
    batches = fixed_batches(first[1], args.warmup + args.steps, args.seed, first[3])
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    profiles = {name: cProfile.Profile() for name in names}
    load_start = os.getloadavg()[0]
    for i, batch in enumerate(batches):
        for name in (names if i % 2 == 0 else names[::-1]):
            nlp, examples, optimizer, _, dropout = variants[name]
            by_key = {eg.reference.user_data.get("bond_moe_id"): eg for eg in examples}
            own = [by_key[eg.reference.user_data.get("bond_moe_id")] for eg in batch]
            profile = profiles[name] if i >= args.warmup else None
            start = time.perf_counter()
            if profile:
                profile.enable()
            nlp.update(own, drop=dropout, sgd=optimizer)
            if profile:
                profile.disable()
                seconds[name].append(time.perf_counter() - start)
    a, b = names
    mean = {name: sum(v) / len(v) for name, v in seconds.items()}
    times = {name: own_times(profiles[name]) for name in names}
    diff = sorted(((times[b].get(k, 0.0) - times[a].get(k, 0.0)) / args.steps, k[1])
                  for k in set(times[a]) | set(times[b]))
    result = {
        "command": "python benchmarks/profile_training.py " + " ".join(
            (argv if argv is not None else sys.argv[1:])),
        "variants": names,
        "config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT) else str(args.config),
        "train": str(args.train.relative_to(ROOT)) if args.train.is_relative_to(ROOT) else str(args.train),
        "steps": args.steps,
        "s_per_step": {k: round(v, 4) for k, v in mean.items()},
        "throughput_b_over_a": round(mean[a] / mean[b], 3),
        "own_s_per_step_by_category": {name: categorize(times[name], args.steps) for name in names},
        "largest_savings_b_vs_a": [{"function": k, "seconds": round(d, 4)} for d, k in diff[:8]],
        "largest_growths_b_vs_a": [{"function": k, "seconds": round(d, 4)} for d, k in diff[::-1][:8]],
        "loadavg": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "note": "cProfile overhead is in both variants; own time = tottime",
    }
    out = args.out or ROOT / "benchmarks" / "results" / f"profile__{a}__{b}.json"
    write_json_atomic(out, result)
    print(f"s/step: {a} {mean[a]:.3f}, {b} {mean[b]:.3f}; throughput {b}/{a} = {mean[a] / mean[b]:.3f}")
    for name in names:
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                         result["own_s_per_step_by_category"][name].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
