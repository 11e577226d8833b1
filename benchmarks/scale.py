"""Corpus-scale throughput and memory of the sharded commands on every engine.

    python benchmarks/scale.py            # -> benchmarks/results/scale.json (~45 min on 2 cores)

Tasks, each at two input sizes so that memory can be seen staying flat as the input grows:
- ``distant``: the labeller with the offline KB packs (``build-kb``), name propagation on (two
  passes, the default), over the CoNLL03 train text (14,041 sentences) repeated to N lines (every
  line its own doc id), 10,000 lines per shard;
- ``annotate_cnn``: ``annotate`` with a CNN ``bond_moe_ner`` pipeline (configs/cnn.cfg, trained for
  ``--cnn-steps`` steps on CoNLL03's distant labels here: a throughput model, not an accuracy one);
- ``annotate_minilm``: ``annotate`` with a trained MiniLM pipeline (``--minilm-model``), 1,000
  lines per shard.

Each (task, size, engine) is one run of the real command in a child process: local 1 process
(torch with its default threads), local 2 processes, Dask 2 workers and Ray 2 workers (one thread
per worker), each started fresh, so wall times include starting the engine and loading the KB or
pipeline once per worker. The parent samples the child's whole process tree every 0.1 s (Ray's
and Dask's daemons and workers are its descendants): peak RSS summed over the tree (shared pages
counted once per process, an upper bound) and the largest single process.
"""

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import ensure_corpus, git_info, machine_info, write_json_atomic  # noqa: E402

PYTHON = [sys.executable, "-m", "spacy_bond_moe"]
ENGINES: Dict[str, Tuple[str, int]] = {"local1": ("local", 1), "local2": ("local", 2),
                                       "dask2": ("dask", 2), "ray2": ("ray", 2)}
SHARD_SIZE = {"distant": 10000, "annotate_cnn": 10000, "annotate_minilm": 1000}
TASKS = ("distant", "annotate_cnn", "annotate_minilm")


def tree_rss_kb(root: int) -> Tuple[int, int, int]:
    """(sum of RSS over `root` and its descendants, largest single RSS, number of processes)."""
    children: Dict[int, List[int]] = {}
    rss: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as statm:
                rss[int(entry)] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, largest, count, todo = 0, 0, 0, [root]
    while todo:
        pid = todo.pop()
        if pid in rss:
            total, largest, count = total + rss[pid], max(largest, rss[pid]), count + 1
        todo.extend(children.get(pid, []))
    return total, largest, count


def measure(cmd: List[str], log: Path) -> Dict[str, Any]:
    """Run `cmd`, sampling its process tree's memory; wall time, peaks and its report line."""
    peak = {"tree_kb": 0, "process_kb": 0, "processes": 0}
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})

        def sample() -> None:
            while proc.poll() is None:
                total, largest, count = tree_rss_kb(proc.pid)
                peak["tree_kb"] = max(peak["tree_kb"], total)
                peak["process_kb"] = max(peak["process_kb"], largest)
                peak["processes"] = max(peak["processes"], count)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        sampler.join()
    wall = time.perf_counter() - start
    text = log.read_text()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}); see {log}:\n{text[-2000:]}")
    return {"wall_s": round(wall, 2),
            "peak_rss_tree_mb": round(peak["tree_kb"] / 1024, 1),
            "peak_rss_process_mb": round(peak["process_kb"] / 1024, 1),
            "max_processes": peak["processes"]}


def worker_costs(out: Path) -> Dict[str, Any]:
    """From the receipts of every pass (distant's name pass too): busy docs/s per worker (docs
    over the summed shard times), the per-worker setup (KB or pipeline load), the output."""
    shards = [s for path in (out / ".names" / "manifest.json", out / "manifest.json") if path.is_file()
              for s in json.loads(path.read_text())["shards"]]
    docs = sum(s["counts"]["n_docs"] for s in shards)
    busy = sum(s["seconds"] for s in shards)
    setups = [s["setup_seconds"] for s in shards if s["setup_seconds"] > 0]
    return {"busy_s": round(busy, 2), "per_worker_docs_per_s": round(docs / busy, 1),
            "setup_s": round(sum(setups) / max(len(setups), 1), 2), "n_setups": len(setups),
            "workers_seen": len({s["worker_pid"] for s in shards}),
            "output_mb": round(sum(s["output_bytes"] for s in shards) / 2**20, 2)}


def write_input(text: Path, n: int, path: Path) -> Path:
    """`n` lines: the lines of `text` repeated (line numbers make the doc ids distinct)."""
    lines = [line for line in text.read_text(encoding="utf8").splitlines() if line.strip()]
    with path.open("w", encoding="utf8") as out:
        for i in range(n):
            out.write(lines[i % len(lines)] + "\n")
    return path


def ensure_cnn(work: Path, steps: int) -> Path:
    """A CNN pipeline trained `steps` steps on CoNLL03's distant labels (kept in `work`)."""
    model = work / "cnn" / "model-last"
    if model.is_dir():
        return model
    corpus = ROOT / "corpus" / "conll03"
    ensure_corpus("conll03", corpus)
    subprocess.run(PYTHON + ["train", "configs/cnn.cfg", "-o", str(work / "cnn"),
                             "--paths.train", str(corpus / "train.spacy"), "--paths.dev", str(corpus / "dev.spacy"),
                             f"--training.max_steps={steps}", "--training.eval_frequency=100"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,200000", help="lines for distant and annotate_cnn")
    parser.add_argument("--minilm-sizes", default="2000,20000", help="lines for annotate_minilm")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--minilm-model", type=Path,
                        default=ROOT / "runs" / "bench" / "conll03__bond_moe_warmup__seed1" / "model-best")
    parser.add_argument("--cnn-steps", type=int, default=300)
    parser.add_argument("--text", type=Path,
                        default=ROOT.parent / "shared" / "datasets" / "roster" / "conll" / "train_text.txt")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "scale")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out (other engines or sizes) and add these")
    args = parser.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    machine["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    kb = work / "kb.jsonl"
    if not kb.is_file():
        subprocess.run(PYTHON + ["build-kb", str(kb)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    tasks = args.tasks.split(",")
    models = {}
    if "annotate_cnn" in tasks:
        models["annotate_cnn"] = ensure_cnn(work, args.cnn_steps)
    if "annotate_minilm" in tasks:
        if not args.minilm_model.is_dir():
            parser.error(f"--minilm-model {args.minilm_model} not found (train one with benchmarks/run.py)")
        models["annotate_minilm"] = args.minilm_model
    previous = json.loads(args.out.read_text()) if args.append and args.out.is_file() else {}
    rows: List[Dict[str, Any]] = [{"commit": previous["git"]["commit"], **row} for row in previous.get("rows", [])]
    commit = git_info()["commit"]
    for task in tasks:
        sizes = args.minilm_sizes if task == "annotate_minilm" else args.sizes
        for size in map(int, sizes.split(",")):
            data = work / f"input_{size}.txt"
            if not data.is_file():
                write_input(args.text, size, data)
            for name in args.engines.split(","):
                engine, workers = ENGINES[name]
                out = work / "out" / f"{task}_{size}_{name}"
                shutil.rmtree(out, ignore_errors=True)
                common = ["--format", "tokens", "--shard-size", str(SHARD_SIZE[task]), "--engine", engine,
                          "-n", str(workers), "--no-progress"]
                if task == "distant":
                    cmd = PYTHON + ["distant", str(data), str(out), "--kb", str(kb), *common]
                else:
                    cmd = PYTHON + ["annotate", str(models[task]), str(data), str(out), *common]
                print(f"[scale] {task} {size} {name}: {' '.join(cmd[2:])}", flush=True)
                row = {"task": task, "lines": size, "engine": name, "workers": workers,
                       **measure(cmd, work / f"{task}_{size}_{name}.log")}
                manifest = json.loads((out / "manifest.json").read_text())
                row["docs"] = manifest["totals"]["n_docs"]
                row["words"] = manifest["totals"].get("n_words") or manifest["totals"].get("n_tokens")
                row["docs_per_s"] = round(row["docs"] / row["wall_s"], 1)
                row["plan_s"] = manifest["timing"]["plan_s"]
                row["input_mb"] = round(data.stat().st_size / 2**20, 2)
                row.update(worker_costs(out))
                row["loadavg_1min"] = round(os.getloadavg()[0], 2)
                row["commit"] = commit
                rows.append(row)
                print(f"[scale]   {row['docs_per_s']} docs/s (wall), peak RSS tree {row['peak_rss_tree_mb']} MB, "
                      f"largest process {row['peak_rss_process_mb']} MB", flush=True)
                shutil.rmtree(out, ignore_errors=True)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    order = {name: i for i, name in enumerate(ENGINES)}
    rows.sort(key=lambda r: (TASKS.index(r["task"]), r["lines"], order.get(r["engine"], 99)))
    command = "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "schema": 1, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " && ".join([previous["command"], command]) if previous else command,
        "input": str(args.text), "kb": {"path": str(kb), "bytes": kb.stat().st_size,
                                        "patterns": sum(1 for _ in kb.open(encoding="utf8"))},
        "models": {task: str(path) for task, path in models.items()}, "shard_size": SHARD_SIZE,
        "rows": rows, "git": git_info(), "machine": machine,
    }
    write_json_atomic(args.out, result)
    print(f"[scale] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
