"""`python -m spacy_bond_moe train`: the same run as `spacy train`, kill-safe folders,
`--resume` that ends with the uninterrupted run's scores, checks before the first step."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import spacy
import srsly
from spacy.tokens import DocBin

from spacy_bond_moe import loop

from .conftest import make_doc, write_toy_corpus

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = ["--training.max_steps", "40", "--training.eval_frequency", "8",
            "--training.before_update.estep_every", "6", "--training.before_update.teacher_start", "12",
            "--training.before_update.teacher_refresh", "6"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    nlp = spacy.blank("en")
    directory = write_toy_corpus(tmp_path_factory.mktemp("corpus"))
    DocBin().to_disk(directory / "empty.spacy")
    DocBin(docs=[nlp("no entities here .")]).to_disk(directory / "noents.spacy")
    return directory


def command(corpus: Path, out: Path, config: str = "cnn", extra: Tuple[str, ...] = (),
            runner: Tuple[str, ...] = ("-m", "spacy_bond_moe")) -> List[str]:
    return [sys.executable, *runner, "train", f"configs/{config}.cfg", "-o", str(out),
            "--paths.train", str(corpus / "train.spacy"), "--paths.dev", str(corpus / "dev.spacy"),
            *SCHEDULE, "--training.logger.events_path", str(out / "events.jsonl"), *extra]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def run(cmd: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env(), timeout=600)


def evals(out: Path) -> List[Tuple[int, float, float]]:
    """(step, score, loss) of every evaluation in the events file."""
    records = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    return [(r["step"], round(r["score"], 6), round(r["loss"], 5)) for r in records if r["event"] == "eval"]


def kill_after_state(cmd: List[str], out: Path, step: int) -> int:
    """Start `cmd`, SIGKILL it once its saved training state has reached `step`."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / loop.DIR_STATE / loop.STATE_FILE
    saved: Optional[int] = None
    while proc.poll() is None:
        try:
            saved = srsly.read_msgpack(state)["step"]
        except (ValueError, OSError, KeyError):
            saved = None
        if saved is not None and saved >= step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return srsly.read_msgpack(state)["step"]


def test_train_is_spacy_train(corpus, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "spacy"
    assert run(command(corpus, ours)).returncode == 0
    proc = run(command(corpus, theirs, runner=("-m", "spacy")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert evals(ours) == evals(theirs)
    assert len(evals(ours)) == 6
    assert (ours / loop.DIR_STATE / loop.STATE_FILE).is_file()
    assert srsly.read_msgpack(ours / loop.DIR_STATE / loop.STATE_FILE)["finished"]
    assert not list(ours.glob(".*"))  # no partial or old folder left


PROPER_O = ("--components.bond_moe_ner.distant_loss",
            '{"@misc":"spacy-bond-moe.cross_entropy.v2","uncertain_o":"proper"}')


@pytest.mark.parametrize("config,kill_at,loss", [("cnn", 16, ()), ("cnn", 24, ()), ("minilm", 16, ()),
                                                 ("minilm_fast", 16, ()), ("cnn", 8, PROPER_O)])
def test_resumed_run_ends_like_the_uninterrupted_one(corpus, tmp_path, tiny_bert, config, kill_at, loss):
    """minilm_fast: bucketed batches (re-read when the epoch is resumed) and frozen weights;
    PROPER_O: the distant loss's casing table (training-only state) is resumed in stage I."""
    extra = ("--paths.transformer", str(tiny_bert)) if config.startswith("minilm") else ()
    extra += loss
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    proc = run(command(corpus, whole, config, extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = kill_after_state(command(corpus, resumed, config, extra), resumed, kill_at)
    proc = run(command(corpus, resumed, config, (*extra, "--resume")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Resuming from step {saved}" in proc.stdout
    assert evals(resumed) == evals(whole)  # every evaluation: score and loss
    texts = ["Mary met John in Rome .", "Paris is big ."]
    a, b = spacy.load(whole / "model-last"), spacy.load(resumed / "model-last")
    for doc_a, doc_b in zip(a.pipe(texts), b.pipe(texts)):
        assert [(e.text, e.label_) for e in doc_a.ents] == [(e.text, e.label_) for e in doc_b.ents]
        assert doc_a.spans["bond_moe"].attrs["scores"] == doc_b.spans["bond_moe"].attrs["scores"]
    proc = run(command(corpus, resumed, config, (*extra, "--resume")))
    assert proc.returncode == 0 and "Nothing to resume" in proc.stdout


def test_resume_refuses_other_overrides_and_missing_state(corpus, tmp_path):
    out = tmp_path / "out"
    proc = run(command(corpus, out, extra=("--resume",)))
    assert proc.returncode == 1 and "nothing to resume" in proc.stderr
    kill_after_state(command(corpus, out), out, 8)
    proc = run(command(corpus, out, extra=("--resume", "--training.dropout", "0.3")))
    assert proc.returncode == 1
    assert "the config or its overrides differ from the interrupted run's in [training]" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,message", [
    (("--paths.dev", "{c}/empty.spacy"), "empty.spacy has no documents"),
    (("--paths.dev", "{c}/noents.spacy"), "noents.spacy (1 documents) has no entities"),
    (("--paths.train", "{c}/noents.spacy"), "[bond_moe_ner] no entity labels"),
    (("--paths.train", "{c}/noents.spacy", "--initialize.components",
      '{{"bond_moe_ner": {{"labels": ["PER", "LOC"]}}}}'),
     "noents.spacy (1 documents) has no entities: there is nothing to learn"),
    (("--paths.teacher", "{c}"), "teacher {c}: not a saved spaCy pipeline (no config.cfg)"),
    (("--components.bond_moe_ner.model.n_experts", '"3"'), "n_experts must be an integer >= 1, got '3' (str)"),
    (("--components.bond_moe_ner.model.n_experts", "0"), "n_experts must be an integer >= 1, got 0"),
    (("--components.bond_moe_ner.assigner.lam", "0"), "assigner lam must be > 0, got 0"),
    (("--components.bond_moe_ner.pseudo_labeller.threshold", "1.5"), "threshold must be in [0, 1), got 1.5"),
    (("--training.before_update.estep_every", "-1"), "estep_every must be an integer >= 0, got -1"),
])
def test_bad_runs_stop_before_training_with_one_line(corpus, tmp_path, override, message):
    out = tmp_path / "out"
    extra = tuple(value.format(c=corpus) for value in override)
    proc = run(command(corpus, out, extra=extra))
    assert proc.returncode == 1
    assert message.format(c=corpus) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (out / "model-best").exists() and not (out / "model-last").exists()


def test_spacy_train_also_stops_on_an_empty_dev_set(corpus, tmp_path):
    """The check runs in the schedule callback at step 0, so `spacy train` has it too (with
    spaCy's traceback around the message)."""
    out = tmp_path / "out"
    cmd = command(corpus, out, extra=("--paths.dev", str(corpus / "empty.spacy")), runner=("-m", "spacy"))
    proc = run(cmd)
    assert proc.returncode != 0 and "empty.spacy has no documents" in proc.stderr
    assert not (out / "model-best").exists()


def test_expert_mode_is_checked_by_the_config_system(corpus, tmp_path):
    proc = run(command(corpus, tmp_path / "out", extra=("--components.bond_moe_ner.model.expert_mode", "bogus")))
    assert proc.returncode == 1 and "'bogus' is not typing.Literal['shared', 'separate']" in proc.stdout


def test_dev_labels_unseen_in_train_warn(corpus, tmp_path):
    nlp = spacy.blank("en")
    dev = DocBin(docs=[make_doc(nlp, "Mary works at Acme .", [(14, 18, "ORG")], "toy:dev:org")],
                 store_user_data=True)
    train = DocBin(docs=[make_doc(nlp, "Mary met John .", [(0, 4, "PER"), (9, 13, "PER")], f"toy:t:{i}")
                         for i in range(4)], store_user_data=True)
    dev.to_disk(tmp_path / "dev.spacy")
    train.to_disk(tmp_path / "train.spacy")
    cmd = command(tmp_path, tmp_path / "out")
    cmd[cmd.index("--training.max_steps") + 1] = "2"
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning: dev labels never seen in" in proc.stderr and ": ORG (their recall will be 0)" in proc.stderr


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir_keeps_a_complete_folder(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(loop, "_exchange", lambda a, b: False)
    target = tmp_path / "model-best"
    for version in ("one", "two", "three"):
        loop.write_dir(target, lambda p: (p.mkdir(), (p / "v").write_text(version)))
        assert (target / "v").read_text() == version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-best"]


def test_recover_dir_undoes_a_kill_between_the_two_renames(tmp_path):
    target = tmp_path / "model-best"
    old, partial = tmp_path / ".model-best.old", tmp_path / ".model-best.partial"
    old.mkdir()
    (old / "v").write_text("previous")
    partial.mkdir()  # the new folder, written but never moved in
    loop.recover_dir(target)
    assert (target / "v").read_text() == "previous" and not old.exists() and not partial.exists()


@pytest.mark.slow
def test_kill_at_random_instants_always_leaves_a_loadable_model_best(corpus, tmp_path, tiny_bert):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kill_safety

    result = kill_safety.kill_trials(corpus, tmp_path, tiny_bert, n_trials=20, runner="ours", seed=0)
    assert result["trials"] == 20 and result["killed"] >= 15
    assert result["model_best_failed"] == 0, result
