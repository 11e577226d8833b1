"""Sharded, resumable corpus processing: `distant --shard-size` and `annotate` on every engine."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import spacy
import srsly
from spacy.tokens import DocBin
from spacy.training import Example
from typer.testing import CliRunner

from spacy_bond_moe import engines
from spacy_bond_moe.cli import app
from spacy_bond_moe.converters import DOC_ID_KEY
from spacy_bond_moe.shards import MANIFEST, ShardError, plan_shards, shard_lines

from .conftest import cnn_moe_model, make_doc

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["Boris Yeltsin", "Acme Corp", "London", "Berlin", "Mary Smith", "Yeltsin", "Paris"]
KB = "Boris Yeltsin\tPER\nAcme Corp\tORG\nLondon\tLOC\nBerlin\tLOC\nMary Smith\tPER\n"


def corpus_lines(n: int) -> List[str]:
    return [f"On day {i} {NAMES[i % 7]} met {NAMES[(i * 3 + 1) % 7]} in {NAMES[(i * 5 + 2) % 7]} ."
            for i in range(n)]


@pytest.fixture
def corpus(tmp_path: Path) -> Dict[str, Path]:
    text = tmp_path / "news.txt"
    text.write_text("\n".join(corpus_lines(230)) + "\n", encoding="utf8")
    kb = tmp_path / "kb.tsv"
    kb.write_text(KB, encoding="utf8")
    return {"text": text, "kb": kb, "dir": tmp_path}


def run_cli(*args: str) -> "CliRunner":
    return CliRunner().invoke(app, [str(a) for a in args])


def distant(corpus: Dict[str, Path], out: Path, *extra: str):
    return run_cli("distant", corpus["text"], out, "--kb", corpus["kb"], "--no-progress", *extra)


def shard_bytes(out: Path, suffix: str = ".spacy") -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob(f"shard-*{suffix}"))}


def test_plan_and_read_line_shards(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("\ufeffone\r\ntwo\n\nfour\nfive".encode("utf8"))
    shards = plan_shards([(path, "text")], 2)
    assert [(s.first, s.stop) for s in shards] == [(1, 3), (3, 5), (5, 6)]
    assert sum(s.length for s in shards) == path.stat().st_size
    lines = [pair for shard in shards for pair in shard_lines(shard)]
    assert lines == [(1, "one"), (2, "two"), (3, ""), (4, "four"), (5, "five")]
    path.write_bytes(b"one\r\ntwo\nTHREE\nfour\nfive")
    with pytest.raises(ShardError, match=r"in\.txt: lines 1-2 changed since the shards were planned"):
        list(shard_lines(shards[0]))
    path.write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(ShardError, match=r"in\.txt:2: not UTF-8"):
        list(shard_lines(plan_shards([(path, "text")], 5)[0]))


def test_sharded_distant_matches_one_docbin(corpus):
    one, sharded = corpus["dir"] / "one.spacy", corpus["dir"] / "sharded"
    assert distant(corpus, one).exit_code == 0
    result = distant(corpus, sharded, "--shard-size", "50")
    assert result.exit_code == 0, result.output
    assert "5 shards: 5 done, 0 already finished, 0 failed" in result.output
    nlp = spacy.blank("en")
    expected = [(d.user_data[DOC_ID_KEY], d.text, [(e.start, e.end, e.label_) for e in d.ents])
                for d in DocBin().from_disk(one).get_docs(nlp.vocab)]
    got = [(d.user_data[DOC_ID_KEY], d.text, [(e.start, e.end, e.label_) for e in d.ents])
           for path in sorted(sharded.glob("shard-*.spacy")) for d in DocBin().from_disk(path).get_docs(nlp.vocab)]
    assert got == expected
    assert any(label == "PER" and end - start == 1 for _, _, ents in got for start, end, label in ents)  # propagated
    manifest = json.loads((sharded / MANIFEST).read_text())
    summary = json.loads((corpus["dir"] / "one.spacy.summary.json").read_text())
    assert manifest["totals"]["ents"] == summary["ents"] and manifest["totals"]["n_docs"] == 230
    assert manifest["inputs"][0]["sha256"] and manifest["status"] == {"done": 5, "skipped": 0, "failed": 0}
    assert [s["counts"]["n_docs"] for s in manifest["shards"]] == [50, 50, 50, 50, 30]
    assert all(s["worker_peak_rss_mb"] > 50 for s in manifest["shards"])


def test_rerun_skips_finished_shards_and_redoes_damaged_ones(corpus):
    out = corpus["dir"] / "out"
    assert distant(corpus, out, "--shard-size", "50").exit_code == 0
    before = shard_bytes(out)
    (out / "shard-00001.spacy").unlink()
    (out / "shard-00003.spacy").write_bytes(b"truncated")
    result = distant(corpus, out, "--shard-size", "50")
    assert result.exit_code == 0
    assert "5 shards: 2 done, 3 already finished, 0 failed" in result.output
    assert shard_bytes(out) == before
    result = distant(corpus, out, "--shard-size", "50", "--exact-case")  # other settings: all redone
    assert "5 shards: 5 done, 0 already finished" in result.output
    result = distant(corpus, out, "--shard-size", "100")  # another plan: stale shards removed
    assert result.exit_code == 0 and "3 shards: 3 done" in result.output and "removed 4 stale" in result.output
    assert sorted(p.name for p in out.glob("shard-*.spacy")) == [f"shard-0000{i}.spacy" for i in range(3)]


MMAP_PROBE = """
import ctypes, json, sys
from spacy_bond_moe.shards import bound_allocator

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.mallinfo2.restype = [ctypes.c_void_p], Info
applied = bound_allocator() if sys.argv[1] == "bounded" else False
libc.free(libc.malloc(8 << 20))  # glibc's adaptive threshold now rises to 8 MiB
before = libc.mallinfo2().hblks
block = libc.malloc(2 << 20)
print(json.dumps({"applied": applied, "mmapped": libc.mallinfo2().hblks - before}))
libc.free(block)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize("mode", ["bounded", "adaptive"])
def test_shard_workers_return_large_buffers_to_the_system(mode):
    """After a large buffer is freed glibc serves the next ones from its heap, which fragments
    and grows shard after shard; in shard workers a 2 MiB buffer is still mapped (and unmapped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    proc = subprocess.run([sys.executable, "-c", MMAP_PROBE, mode], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == ({"applied": True, "mmapped": 1} if mode == "bounded" else {"applied": False, "mmapped": 0})
    env["MALLOC_MMAP_THRESHOLD_"] = str(4 << 20)  # the user's own setting wins
    proc = subprocess.run([sys.executable, "-c", MMAP_PROBE, "bounded"], capture_output=True, text=True, env=env)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["applied"] is False


@pytest.mark.slow
def test_killed_run_resumes_with_only_the_missing_shards(tmp_path):
    text, kb = tmp_path / "big.txt", tmp_path / "kb.tsv"
    text.write_text("\n".join(corpus_lines(6000)) + "\n", encoding="utf8")
    kb.write_text(KB, encoding="utf8")
    out, clean = tmp_path / "out", tmp_path / "clean"
    def command(folder: Path) -> List[str]:
        return [sys.executable, "-m", "spacy_bond_moe", "distant", str(text), str(folder), "--kb", str(kb),
                "--shard-size", "40", "--no-propagate", "--no-progress"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.glob("*.receipt.json"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(list(out.glob("*.receipt.json")))
    assert 3 <= n_done < 150, "the run was not killed mid-way"
    assert not (out / MANIFEST).exists()
    resumed = subprocess.run(command(out), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    skipped = int(resumed.stdout.split(" done, ")[1].split(" already")[0])
    assert skipped >= n_done
    assert not list(out.glob(".*.tmp"))
    assert subprocess.run(command(clean), env=env, capture_output=True).returncode == 0
    assert shard_bytes(out) == shard_bytes(clean) and len(shard_bytes(out)) == 150


def test_bad_input_fails_its_shard_alone(corpus):
    lines = [json.dumps({"id": f"d{i}", "text": line}) for i, line in enumerate(corpus_lines(120))]
    lines[75] = '{"id": "d75", "text": "unterminated'
    path = corpus["dir"] / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    out = corpus["dir"] / "out"
    args = ["distant", path, out, "--kb", corpus["kb"], "--shard-size", "40", "--no-progress", "--no-propagate"]
    result = run_cli(*args)
    assert result.exit_code == 1
    assert f"{path}:76: invalid JSON" in result.output and "1 shard(s) failed" in result.output
    assert sorted(p.name for p in out.glob("shard-*.spacy")) == ["shard-00000.spacy", "shard-00002.spacy"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["status"] == {"done": 2, "skipped": 0, "failed": 1}
    assert manifest["shards"][1]["status"] == "failed" and ":76: invalid JSON" in manifest["shards"][1]["error"]
    lines[75] = json.dumps({"id": "d75", "text": "London"}).ljust(len(lines[75]))  # same bytes after it
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    result = run_cli(*args)
    assert result.exit_code == 0 and "3 shards: 1 done, 2 already finished, 0 failed" in result.output


def test_sharded_cli_errors(corpus, monkeypatch):
    (corpus["dir"] / "file").write_text("x")
    result = distant(corpus, corpus["dir"] / "file", "--shard-size", "10")
    assert result.exit_code == 1 and "the output must be a folder" in result.output
    result = distant(corpus, corpus["dir"] / "o.spacy", "--n-process", "2")
    assert result.exit_code == 1 and "need sharded output (--shard-size N)" in result.output
    result = distant(corpus, corpus["dir"] / "o", "--shard-size", "10", "--engine", "ray", "--scheduler", "x:1")
    assert result.exit_code == 1 and "use it with --engine dask" in result.output
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    result = distant(corpus, corpus["dir"] / "o", "--shard-size", "10", "--engine", "dask")
    assert result.exit_code == 1 and "pip install 'spacy-bond-moe[dask]'" in result.output


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A small trained CNN bond_moe_ner pipeline (K=2)."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bond_moe_ner", config={"model": cnn_moe_model(2)})
    refs = [make_doc(nlp, f"Mary Smith met Acme Corp in London on day {i} .",
                     [(0, 10, "PER"), (15, 24, "ORG"), (28, 34, "LOC")], f"t{i}") for i in range(8)]
    examples = [Example(nlp.make_doc(d.text), d) for d in refs]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(10):
        nlp.update(examples, sgd=optimizer)
    path = tmp_path_factory.mktemp("pipeline") / "model"
    nlp.to_disk(path)
    return path


def test_annotate_jsonl_and_docbin(corpus, tiny_pipeline):
    out = corpus["dir"] / "ann"
    result = run_cli("annotate", tiny_pipeline, corpus["text"], out, "--shard-size", "100",
                     "--output-format", "jsonl", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "3 shards: 3 done" in result.output and "docs 230" in result.output
    records = [json.loads(line) for p in sorted(out.glob("shard-*.jsonl")) for line in p.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"news:{i}" for i in range(230)]
    assert records[0]["text"] == corpus_lines(1)[0]
    ents = [e for r in records for e in r["ents"]]
    assert ents and all(0 < e["score"] <= 1 and e["label"] in {"PER", "ORG", "LOC"} for e in ents)
    assert all(r["text"][e["start_char"]:e["end_char"]] == e["text"] for r in records for e in r["ents"])
    assert {r["expert"] for r in records} <= {0, 1}
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["totals"]["n_ents"] == len(ents) and manifest["settings"]["model_sha256"]
    docbins = corpus["dir"] / "ann_spacy"
    assert run_cli("annotate", tiny_pipeline, corpus["text"], docbins, "--shard-size", "100",
                   "--no-progress").exit_code == 0
    nlp = spacy.load(tiny_pipeline)
    docs = [d for p in sorted(docbins.glob("shard-*.spacy")) for d in DocBin().from_disk(p).get_docs(nlp.vocab)]
    assert [[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs] == \
        [[(e["start_char"], e["end_char"], e["label"]) for e in r["ents"]] for r in records]
    assert all("bond_moe" in d.spans for d in docs)


def engine_outputs(corpus, tiny_pipeline, name: str, engine: str, n: int, *extra: str) -> Dict[str, bytes]:
    label_dir, ann_dir = corpus["dir"] / f"label_{name}", corpus["dir"] / f"ann_{name}"
    result = distant(corpus, label_dir, "--shard-size", "50", "--engine", engine, "-n", str(n), *extra)
    assert result.exit_code == 0, result.output
    result = run_cli("annotate", tiny_pipeline, corpus["text"], ann_dir, "--shard-size", "50",
                     "--output-format", "jsonl", "--engine", engine, "-n", str(n), "--no-progress", *extra)
    assert result.exit_code == 0, result.output
    return {**shard_bytes(label_dir), **shard_bytes(ann_dir, ".jsonl")}


@pytest.mark.slow
def test_engines_give_byte_identical_shards(corpus, tiny_pipeline):
    """local 1 and 2 processes, Dask and Ray with 2 workers on loopback: the same bytes."""
    pytest.importorskip("dask.distributed")
    pytest.importorskip("ray.data")
    try:
        reference = engine_outputs(corpus, tiny_pipeline, "local1", "local", 1)
        assert len(reference) == 10
        for name, engine in (("local2", "local"), ("dask", "dask"), ("ray", "ray")):
            assert engine_outputs(corpus, tiny_pipeline, name, engine, 2) == reference, name
        manifest = srsly.read_json(corpus["dir"] / "label_ray" / MANIFEST)
        assert manifest["engine"] == "ray" and manifest["status"]["done"] == 5
    finally:
        engines.shutdown()


@pytest.mark.slow
def test_corpus_workflow_trains_on_a_folder_of_shards(corpus, tmp_path):
    """`weasel run corpus`: its distant-shards and train-shards scripts, on the toy corpus."""
    import shlex

    from weasel.util import load_project_config

    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "project.yml").write_text((ROOT / "project.yml").read_text())
    project = load_project_config(tmp_path / "proj")
    assert project["workflows"]["corpus"] == ["build-kb", "distant-shards", "train-shards", "annotate-corpus"]
    commands = {c["name"]: c for c in project["commands"]}
    label = shlex.split(commands["distant-shards"]["script"][0])
    assert label[label.index("--shard-size") + 1] == "10000" and label[label.index("--engine") + 1] == "local"
    shards = corpus["dir"] / "shards"
    assert distant(corpus, shards, "--shard-size", "60").exit_code == 0
    train = shlex.split(commands["train-shards"]["script"][0])
    assert train[train.index("--paths.train") + 1] == "corpus/distant_shards"
    out = tmp_path / "training"
    proc = subprocess.run(
        [sys.executable, "-m", "spacy_bond_moe", "train", "configs/cnn.cfg", "-o", str(out),
         "--paths.train", str(shards), "--paths.dev", str(shards / "shard-00003.spacy"),
         "--training.max_steps", "12", "--training.eval_frequency", "6"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model-best" / "bond_moe_ner").is_dir()
