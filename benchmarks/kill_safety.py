"""Kill a training run at random instants and try to load its model-best: spaCy's own
loop (`spacy train`) against ours (`python -m spacy_bond_moe train`).

    python benchmarks/kill_safety.py [--encoder tiny|minilm] [--trials 20] [--seed 0]

The toy corpus, evaluated and checkpointed at every step, with a tiny random transformer
(small files: a save takes milliseconds) or the real MiniLM (88 MB per save). Each trial
waits until model-best first exists, sleeps a random 0-HORIZON s, sends SIGKILL and loads
model-best with `spacy.load`. Writes benchmarks/results/kill_safety__ENCODER.json (atomically).
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import spacy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import build_tiny_bert, write_toy_corpus  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HORIZON = 6.0  # seconds after the first model-best within which the kill falls
RUNNERS = {"spacy": ("-m", "spacy"), "ours": ("-m", "spacy_bond_moe")}


def command(runner: str, corpus: Path, out: Path, transformer: Optional[Path]) -> List[str]:
    """A training command; `transformer` None: the config's default encoder (MiniLM)."""
    encoder = [] if transformer is None else ["--paths.transformer", str(transformer)]
    return [sys.executable, *RUNNERS[runner], "train", "configs/minilm.cfg", "-o", str(out),
            "--paths.train", str(corpus / "train.spacy"), "--paths.dev", str(corpus / "dev.spacy"),
            *encoder, "--training.max_steps", "100000",
            "--training.eval_frequency", "1", "--training.patience", "0",
            "--training.before_update.teacher_start", "0", "--training.before_update.estep_every", "0"]


def loads(path: Path) -> Optional[str]:
    """None if `spacy.load(path)` works, else the error's first line."""
    try:
        spacy.load(path)
    except Exception as err:  # noqa: BLE001 - any failure to load is the finding
        return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
    return None


def kill_trials(corpus: Path, work: Path, transformer: Optional[Path], n_trials: int, runner: str,
                seed: int) -> Dict[str, Any]:
    """Run `n_trials` kills of `runner`; counts and the failures."""
    rng = random.Random(seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    failures: List[Dict[str, Any]] = []
    killed = 0
    for trial in range(n_trials):
        out = work / f"{runner}-{trial}"
        proc = subprocess.Popen(command(runner, corpus, out, transformer), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not (out / "model-best").exists():
            time.sleep(0.01)
        delay = rng.uniform(0.0, HORIZON)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        error = loads(out / "model-best")
        if error is not None:
            failures.append({"trial": trial, "delay_s": round(delay, 3), "error": error})
    return {"runner": runner, "trials": n_trials, "killed": killed,
            "model_best_failed": len(failures), "failures": failures}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoder", choices=["tiny", "minilm"], default="tiny")
    args = p.parse_args(argv)
    output = RESULTS / f"kill_safety__{args.encoder}.json"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = write_toy_corpus(work / "corpus")
        transformer = (build_tiny_bert(Path(tempfile.mkdtemp(dir=tmp))) if args.encoder == "tiny"
                       else None)
        runs = [kill_trials(corpus, work, transformer, args.trials, runner, args.seed)
                for runner in RUNNERS]
    encoder = ("a tiny random BERT (2 layers, width 16)" if args.encoder == "tiny"
               else "MiniLM-L6 (88 MB per checkpoint)")
    result = {"schema": 1, "encoder": args.encoder, "horizon_s": HORIZON, "seed": args.seed,
              "setup": f"{encoder}, toy corpus, eval + checkpoint every step; SIGKILL at a random "
                       "instant 0-HORIZON s after model-best first exists",
              "runs": runs, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = output.with_name(f".{output.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    os.replace(tmp_out, output)
    for run in runs:
        print(f"{run['runner']:6} trials {run['trials']} killed {run['killed']} "
              f"model-best failed to load {run['model_best_failed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
