"""Does `bond_moe_ner`'s `inference = "int8"` pay on trained pipelines? F1 on a gold split and
`nlp.pipe` words/s, fp32 against int8, for each MODEL:DATA pair.

    HF_HUB_OFFLINE=1 python benchmarks/int8_check.py MODEL:DATA [MODEL:DATA ...] [--repeats 3]

F1: spaCy's `Scorer` on the split's text re-tokenised by the pipeline (as `spacy evaluate`).
Speed: `nlp.pipe` over the split's texts at the pipeline's batch size, median of `--repeats`
timed passes after a warm-up (which also builds the int8 copy), one process, fp32 then int8.
Writes `benchmarks/results/int8_check.json`; the issue-18 rule: ship at >= 1.3x and <= 0.5 F1
points lost on every pair.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import spacy
from spacy.training import Corpus

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from inference_speed import read_texts, summary, timed  # noqa: E402
from run import git_info, machine_info, package_versions, rel, write_json_atomic  # noqa: E402

SCHEMA_VERSION = 1
SHIP_RATIO = 1.3
MAX_F1_LOSS = 0.5  # points
INT8 = {"components": {"bond_moe_ner": {"inference": "int8"}}}


def check(model: Path, data: Path, repeats: int) -> Dict[str, Any]:
    texts, n_words = read_texts(data)
    row: Dict[str, Any] = {"model": rel(model), "data": rel(data), "n_docs": len(texts),
                           "n_words": n_words}
    for name, config in (("fp32", {}), ("int8", INT8)):
        nlp = spacy.load(model, config=config)
        seconds = timed(lambda: list(nlp.pipe(texts)), repeats)
        scores = nlp.evaluate(list(Corpus(str(data))(nlp)))
        row[name] = {"f1": round(100 * scores["ents_f"], 2), "p": round(100 * scores["ents_p"], 2),
                     "r": round(100 * scores["ents_r"], 2), "batch_size": nlp.batch_size,
                     **summary(n_words, seconds)}
        print(f"{rel(model)} {name}: F1 {row[name]['f1']:.2f}, "
              f"{row[name]['words_per_s']['median']:.0f} words/s", flush=True)
    row["speedup"] = round(row["int8"]["words_per_s"]["median"] / row["fp32"]["words_per_s"]["median"], 3)
    row["f1_loss"] = round(row["fp32"]["f1"] - row["int8"]["f1"], 2)
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pairs", nargs="+", help="MODEL:DATA (a pipeline directory and a gold .spacy)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_check.json")
    args = p.parse_args(argv)
    machine = machine_info()
    rows = []
    for pair in args.pairs:
        model, sep, data = pair.partition(":")
        if not sep or not Path(model).is_dir() or not Path(data).is_file():
            p.error(f"{pair!r}: expected MODEL:DATA, a pipeline directory and a .spacy file")
        rows.append(check(Path(model), Path(data), args.repeats))
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    ships = all(r["speedup"] >= SHIP_RATIO and r["f1_loss"] <= MAX_F1_LOSS for r in rows)
    data = {"schema": SCHEMA_VERSION, "benchmark": "int8_check", "repeats": args.repeats,
            "ship_if_speedup_at_least": SHIP_RATIO, "ship_if_f1_loss_at_most": MAX_F1_LOSS,
            "ships": ships,
            "command": "HF_HUB_OFFLINE=1 python benchmarks/int8_check.py " + " ".join(argv or sys.argv[1:]),
            "rows": rows, "machine": machine, "git": git_info(), "versions": package_versions()}
    write_json_atomic(args.out, data)
    print(f"[int8_check] ships: {ships}; wrote {rel(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
