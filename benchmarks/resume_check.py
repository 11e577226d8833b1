"""A real run interrupted and resumed against the same run uninterrupted: MiniLM K=1 BOND on
Webpage (the suite's `bond` system, seed 0), both with `python -m spacy_bond_moe train`.

    python benchmarks/resume_check.py [--dataset webpage] [--system bond] [--seed 0] [--kill-after 250]

The interrupted run is sent SIGKILL a few seconds after its evaluation at step `--kill-after`
(so after that step's training state was saved), then rerun with `--resume`. Writes benchmarks/results/resume_check__DATASET__SYSTEM.json with
the dev scores at every evaluation of both runs, the spaCy-loop run of the suite where there is
one, and whether they are identical.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import srsly

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import run as bench  # noqa: E402

from spacy_bond_moe.loop import DIR_STATE, STATE_FILE  # noqa: E402


def our_command(spec: "bench.RunSpec") -> List[str]:
    """The suite's command line for `spec`, with our training entry point."""
    cmd = bench.build_command(spec)
    assert cmd[1:4] == ["-m", "spacy", "train"]
    return [cmd[0], "-m", "spacy_bond_moe", *cmd[3:]]


def dev_curve(events: Path) -> List[Dict[str, Any]]:
    """Step, dev F1/P/R and training loss at every evaluation of an events file."""
    rows = []
    for line in events.read_text(encoding="utf8").splitlines():
        record = json.loads(line)
        if record["event"] == "eval":
            s = record["scores"]
            rows.append({"step": record["step"], "f": s["ents_f"], "p": s["ents_p"],
                         "r": s["ents_r"], "loss": record["loss"]})
    return rows


def last_eval_step(events: Path) -> int:
    """The step of the last evaluation logged in an events file (-1: none yet)."""
    if not events.is_file():
        return -1
    steps = [json.loads(line)["step"] for line in events.read_text(encoding="utf8").splitlines()
             if '"event": "eval"' in line]
    return steps[-1] if steps else -1


def timed(cmd: List[str], log: Path, kill_after: Optional[int] = None,
          run_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Run `cmd`; with `kill_after`, SIGKILL it a few seconds after the evaluation at that
    step was logged (the training state of that step is written right after the log)."""
    started = time.perf_counter()
    killed_at = None
    with log.open("a", encoding="utf8") as handle:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=bench.child_env(), stdout=handle,
                                stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if (kill_after is not None and run_dir is not None
                    and last_eval_step(run_dir / bench.EVENTS_LOG) >= kill_after):
                time.sleep(5.0)  # the state is saved and the run is into the next steps
                proc.send_signal(signal.SIGKILL)
                killed_at = srsly.read_msgpack(run_dir / DIR_STATE / STATE_FILE)["step"]
                break
            time.sleep(0.5)
        proc.wait()
    return {"returncode": proc.returncode, "seconds": round(time.perf_counter() - started, 1),
            "killed_with_state_at_step": killed_at}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="webpage")
    p.add_argument("--system", default="bond")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kill-after", type=int, default=250)
    args = p.parse_args(argv)
    results, runs = ROOT / "benchmarks" / "results", ROOT / "runs" / "resume_check"
    corpus = ROOT / "corpus"
    bench.ensure_corpus(args.dataset, corpus / args.dataset)
    curves: Dict[str, Any] = {}
    calls: Dict[str, Any] = {}
    for name in ("uninterrupted", "interrupted"):
        spec = bench.make_spec(args.dataset, args.system, args.seed, results, runs / name,
                               corpus, None)
        cmd = our_command(spec)
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        log = spec.run_dir / "stdout.log"
        log.write_text("", encoding="utf8")
        if name == "uninterrupted":
            calls[name] = [timed(cmd, log)]
        else:
            calls[name] = [timed(cmd, log, args.kill_after, spec.run_dir),
                           timed(cmd + ["--resume"], log)]
        if calls[name][-1]["returncode"] != 0:
            print(f"[resume_check] {name} failed: see {log}", file=sys.stderr)
            return 1
        curves[name] = dev_curve(spec.run_dir / bench.EVENTS_LOG)
        command = cmd
    suite = results / f"{bench.run_name(args.dataset, args.system, args.seed)}.json"
    spacy_loop = None
    if suite.is_file():
        spacy_loop = [{"step": row["step"], "f": row["ents_f"]}
                      for row in json.loads(suite.read_text())["curve"]]
    same = curves["uninterrupted"] == curves["interrupted"]
    result = {
        "schema": 1, "dataset": args.dataset, "system": args.system, "seed": args.seed,
        "command": " ".join(["python", *command[1:]]), "calls": calls, "identical": same,
        "curves": curves, "suite_spacy_train_curve": spacy_loop,
        "machine": bench.machine_info(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = results / f"resume_check__{args.dataset}__{args.system}.json"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    os.replace(tmp, out)
    print(f"identical dev scores at all {len(curves['uninterrupted'])} evaluations: {same} -> {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
