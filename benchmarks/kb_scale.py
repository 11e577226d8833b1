"""Scale check of the distant labeller: a knowledge base of 1,000,000 names.

    python benchmarks/kb_scale.py      # -> benchmarks/results/kb_scale.json

Writes a TSV of N distinct synthetic person names (Census first name + Census surname,
deterministic), plus the default KB packs, then times ``python -m spacy_bond_moe distant``
on the CoNLL03 train text (14,041 sentences) in a child process and records its wall time
and peak RSS (``os.wait4``). The KB and the output DocBin go to a temporary folder.
"""

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spacy_bond_moe.kb_packs import NAMES, _census_names  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from run import write_json_atomic  # noqa: E402


def synthetic_names(n: int) -> list:
    """`n` distinct "First Last" names from the Census lists, in a fixed pseudo-random order."""
    folder = Path(NAMES.load().__file__).parent
    firsts = sorted(set(_census_names(folder / "dist.male.first")) | set(_census_names(folder / "dist.female.first")))
    lasts = sorted(set(_census_names(folder / "dist.all.last")))
    if n > len(firsts) * len(lasts):
        raise ValueError(f"at most {len(firsts) * len(lasts)} distinct names")
    step = 7919  # prime, coprime with the grid size: visits every (first, last) pair once
    total = len(firsts) * len(lasts)
    return [f"{firsts[(k := (i * step) % total) % len(firsts)]} {lasts[k // len(firsts)]}" for i in range(n)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--text", type=Path, default=ROOT.parent / "shared" / "datasets" / "roster" / "conll" / "train_text.txt")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kb_scale.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        kb = Path(tmp) / "names.tsv"
        t0 = time.monotonic()
        names = synthetic_names(args.n)
        kb.write_text("".join(f"{name}\tPER\n" for name in names), encoding="utf8")
        gen_seconds = time.monotonic() - t0
        kb_mb = kb.stat().st_size / 2**20
        packs = Path(tmp) / "packs.jsonl"
        subprocess.run([sys.executable, "-m", "spacy_bond_moe", "build-kb", str(packs)], check=True,
                       stdout=subprocess.DEVNULL)
        cmd = [sys.executable, "-m", "spacy_bond_moe", "distant", str(args.text), str(Path(tmp) / "out.spacy"),
               "--kb", str(kb), "--kb", str(packs), "--format", "tokens", "--no-progress"]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        if status != 0:
            print(output, file=sys.stderr)
            return 1
        summary = json.loads((Path(tmp) / "out.spacy.summary.json").read_text())
    result = {
        "schema": 1,
        "command": "python benchmarks/kb_scale.py" + (f" --n {args.n}" if args.n != 1_000_000 else ""),
        "labeller_command": "python -m spacy_bond_moe distant train_text.txt out.spacy --kb names.tsv "
                            "--kb packs.jsonl --format tokens --no-progress",
        "n_synthetic_names": args.n,
        "kb_phrases_loaded": summary["kb"]["n_phrases"],
        "kb_file_mb": round(kb_mb, 1),
        "generate_seconds": round(gen_seconds, 2),
        "labeller_wall_seconds": round(wall, 2),
        "labeller_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "n_docs": summary["n_docs"],
        "n_tokens": summary["n_tokens"],
        "ents": summary["ents"],
        "hits": summary["hits"],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(args.out, result)
    print(output.strip())
    print(f"{args.n} names (+ packs): labelled {summary['n_docs']} docs in {wall:.1f}s, "
          f"peak RSS {usage.ru_maxrss / 1024:.0f} MB (load average {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
