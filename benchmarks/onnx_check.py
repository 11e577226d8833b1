"""Would a faster CPU inference engine pay? The raw MiniLM-L6 encoder on the same real sentences in
PyTorch (fp32, dynamic int8 Linear layers) and in ONNX Runtime (fp32 with its graph optimisations,
dynamic int8), words/s side by side, and each engine's largest deviation from PyTorch fp32.

    HF_HUB_OFFLINE=1 python benchmarks/onnx_check.py [--repeats 3] [--data corpus/conll03/test.spacy]

Needs `onnxruntime` and `onnx` (benchmark only, not a dependency of the plugin). Length-sorted
batches of 64 texts, `--repeats` timed passes after one warm-up, one process, one engine after the
other; words are spaCy tokenizer tokens. Writes `benchmarks/results/onnx_check__<data dir>.json`.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from inference_speed import read_texts  # noqa: E402
from run import git_info, machine_info, package_versions, rel, write_json_atomic  # noqa: E402

SCHEMA_VERSION = 1
BATCH = 64
SHIP_RATIO = 1.3  # issue 18: ship a faster path only if >= 1.3x at <= 0.5 F1 loss


def batches(tokenizer: Any, texts: List[str]) -> List[Dict[str, numpy.ndarray]]:
    ordered = sorted(texts, key=len)
    return [dict(tokenizer(ordered[i: i + BATCH], padding=True, truncation=True, max_length=128,
                           return_tensors="np"))
            for i in range(0, len(ordered), BATCH)]


def time_engine(run: Callable[[Dict[str, numpy.ndarray]], numpy.ndarray],
                inputs: List[Dict[str, numpy.ndarray]], repeats: int) -> List[float]:
    for batch in inputs:
        run(batch)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in inputs:
            run(batch)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: Optional[Sequence[str]] = None) -> int:
    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    from spacy_bond_moe.util import transformer_name_v1

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "corpus" / "conll03" / "test.spacy")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    machine = machine_info()
    texts, n_words = read_texts(args.data)
    name = transformer_name_v1()
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModel.from_pretrained(name).eval()
    inputs = batches(tokenizer, texts)
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def torch_run(encoder: Any) -> Callable[[Dict[str, numpy.ndarray]], numpy.ndarray]:
        def run(batch: Dict[str, numpy.ndarray]) -> numpy.ndarray:
            with torch.inference_mode():
                feed = {k: torch.from_numpy(batch[k]) for k in names}
                return encoder(**feed).last_hidden_state.numpy()
        return run

    int8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    engines: Dict[str, Callable[[Dict[str, numpy.ndarray]], numpy.ndarray]] = {
        "torch_fp32": torch_run(model), "torch_dynamic_int8": torch_run(int8)}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "minilm.onnx", Path(tmp) / "minilm.int8.onnx"
        sample = {k: torch.from_numpy(inputs[-1][k]) for k in names}
        axes = {k: {0: "batch", 1: "sequence"} for k in names + ["last_hidden_state"]}
        torch.onnx.export(model, (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
                          str(fp32_path), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        for key, path in (("onnxruntime_fp32", fp32_path), ("onnxruntime_int8", int8_path)):
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

            def run(batch: Dict[str, numpy.ndarray], session: Any = session) -> numpy.ndarray:
                return session.run(["last_hidden_state"], {k: batch[k] for k in names})[0]

            engines[key] = run
        reference = [engines["torch_fp32"](b) for b in inputs[::10]]
        rows: Dict[str, Any] = {}
        for key, run in engines.items():
            seconds = time_engine(run, inputs, args.repeats)
            rates = sorted(n_words / s for s in seconds)
            deviation = max(float(numpy.abs(run(b) - r)[b["attention_mask"].astype(bool)].max())
                            for b, r in zip(inputs[::10], reference))
            rows[key] = {"words_per_s": {"median": round(statistics.median(rates), 1),
                                         "min": round(rates[0], 1), "max": round(rates[-1], 1)},
                         "seconds": [round(s, 3) for s in seconds],
                         "max_abs_deviation_from_torch_fp32": deviation}
            print(f"{key:<22} {rows[key]['words_per_s']['median']:>8.0f} words/s  "
                  f"max |dev| {deviation:.2e}", flush=True)
    base = rows["torch_fp32"]["words_per_s"]["median"]
    for row in rows.values():
        row["ratio_to_torch_fp32"] = round(row["words_per_s"]["median"] / base, 3)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    data = {"schema": SCHEMA_VERSION, "benchmark": "onnx_check", "data": rel(args.data),
            "n_docs": len(texts), "n_words": n_words, "batch_size": BATCH, "repeats": args.repeats,
            "ship_if_ratio_at_least": SHIP_RATIO,
            "command": "HF_HUB_OFFLINE=1 python benchmarks/onnx_check.py " + " ".join(argv or sys.argv[1:]),
            "rows": rows, "machine": machine, "git": git_info(),
            "versions": {**package_versions(), "onnxruntime": onnxruntime.__version__}}
    out = args.out or ROOT / "benchmarks" / "results" / f"onnx_check__{args.data.resolve().parent.name}.json"
    write_json_atomic(out, data)
    print(f"[onnx_check] wrote {rel(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
