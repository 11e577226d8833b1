"""Inference words/s side by side on the same real sentences: the raw encoder, `bond_moe_ner`
(K=1 and K=3 shared) and spaCy's own `ner` with the same encoder, for MiniLM and the CNN.

    HF_HUB_OFFLINE=1 python benchmarks/inference_speed.py [--repeats 5] [--data corpus/conll03/test.spacy]

Every pipeline is built from its config and initialised on 200 training sentences (speed does
not depend on the weights), then `nlp.pipe` runs over the texts of `--data` at the config's own
`nlp.batch_size` and at 64, `--repeats` timed passes after one warm-up pass, in this process and
one pipeline after another (so the figures share the machine's state). The raw encoder is plain
`transformers` MiniLM-L6 on length-sorted batches of 64 texts under `torch.inference_mode`.
Words are spaCy tokenizer tokens. One JSON (median, min, max words/s per row, ratios to the raw
encoder and to spaCy `ner`, load average before/after) goes to
`benchmarks/results/inference_speed__<data dir>.json`; `benchmarks/report.py` shows it.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import spacy
from spacy.tokens import DocBin
from spacy.training import Example

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import git_info, machine_info, package_versions, rel, write_json_atomic  # noqa: E402

SCHEMA_VERSION = 1
PIPELINES = {  # name: (config, overrides)
    "bond_moe_minilm_k1": ("configs/minilm.cfg", {"components.bond_moe_ner.model.n_experts": 1}),
    "bond_moe_minilm_k3": ("configs/minilm.cfg", {}),
    "spacy_ner_minilm": ("configs/spacy_ner_minilm.cfg", {}),
    "bond_moe_cnn_k3": ("configs/cnn.cfg", {}),
    "spacy_ner_cnn": ("configs/spacy_ner_cnn.cfg", {}),
}
RATIOS = {  # ratio name: (numerator row, denominator row)
    "bond_moe_minilm_k3 / raw encoder": ("bond_moe_minilm_k3", "raw_encoder"),
    "bond_moe_minilm_k1 / raw encoder": ("bond_moe_minilm_k1", "raw_encoder"),
    "bond_moe_minilm_k3 / spacy_ner_minilm": ("bond_moe_minilm_k3", "spacy_ner_minilm"),
    "bond_moe_cnn_k3 / spacy_ner_cnn": ("bond_moe_cnn_k3", "spacy_ner_cnn"),
}


def timed(run: Callable[[], None], repeats: int) -> List[float]:
    """Seconds of `repeats` calls after one untimed warm-up call."""
    run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return seconds


def summary(n_words: int, seconds: Sequence[float]) -> Dict[str, Any]:
    rates = sorted(n_words / s for s in seconds)
    return {"words_per_s": {"median": round(statistics.median(rates), 1), "min": round(rates[0], 1),
                            "max": round(rates[-1], 1)}, "seconds": [round(s, 3) for s in seconds]}


def read_texts(path: Path) -> Tuple[List[str], int]:
    """The texts of a DocBin and their number of spaCy tokenizer tokens."""
    nlp = spacy.blank("en")
    texts = [d.text for d in DocBin().from_disk(path).get_docs(nlp.vocab)]
    return texts, sum(len(doc) for doc in nlp.tokenizer.pipe(texts))


def build(config: str, overrides: Dict[str, Any], train: Path) -> Any:
    cfg = spacy.util.load_config(ROOT / config, overrides=overrides, interpolate=True)
    nlp = spacy.util.load_model_from_config(cfg, auto_fill=True)
    refs = list(DocBin().from_disk(train).get_docs(nlp.vocab))[:200]
    nlp.initialize(lambda: [Example(nlp.make_doc(d.text), d) for d in refs])
    return nlp


def raw_encoder(texts: List[str]) -> Callable[[], None]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from spacy_bond_moe.util import transformer_name_v1

    name = transformer_name_v1()
    tokenizer, encoder = AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name).eval()
    ordered = sorted(texts, key=len)

    def run() -> None:
        with torch.inference_mode():
            for i in range(0, len(ordered), 64):
                batch = tokenizer(ordered[i : i + 64], padding=True, truncation=True, return_tensors="pt")
                encoder(**batch)

    return run


def ratio(rows: Dict[str, Any], top: str, bottom: str) -> Optional[float]:
    if top not in rows or bottom not in rows:
        return None
    return round(rows[top]["words_per_s"]["median"] / rows[bottom]["words_per_s"]["median"], 3)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "corpus" / "conll03" / "test.spacy")
    p.add_argument("--train", type=Path, default=ROOT / "corpus" / "conll03" / "train.spacy")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pipelines", default=",".join(PIPELINES))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    machine = machine_info()
    texts, n_words = read_texts(args.data)
    rows: Dict[str, Any] = {"raw_encoder": {"batch_size": 64, **summary(n_words, timed(raw_encoder(texts), args.repeats))}}
    for name in args.pipelines.split(","):
        config, overrides = PIPELINES[name]
        pipeline = build(config, overrides, args.train)
        for batch_size in sorted({pipeline.batch_size, 64}):
            row = f"{name}" if batch_size == pipeline.batch_size else f"{name} (batch 64)"
            seconds = timed(lambda: list(pipeline.pipe(texts, batch_size=batch_size)), args.repeats)
            rows[row] = {"config": config, "overrides": overrides, "batch_size": batch_size,
                         **summary(n_words, seconds)}
            print(f"{row:<36} {rows[row]['words_per_s']['median']:>9.0f} words/s", flush=True)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    data = {"schema": SCHEMA_VERSION, "benchmark": "inference_speed", "data": rel(args.data),
            "n_docs": len(texts), "n_words": n_words, "repeats": args.repeats,
            "command": "HF_HUB_OFFLINE=1 python benchmarks/inference_speed.py " + " ".join(argv or sys.argv[1:]),
            "rows": rows, "ratios": {k: ratio(rows, *v) for k, v in RATIOS.items()},
            "machine": machine, "git": git_info(), "versions": package_versions()}
    out = args.out or ROOT / "benchmarks" / "results" / f"inference_speed__{args.data.resolve().parent.name}.json"
    write_json_atomic(out, data)
    for key, value in data["ratios"].items():
        print(f"  {key:<40} {value}")
    print(f"[inference_speed] wrote {rel(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
