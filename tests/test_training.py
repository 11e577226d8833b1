"""`spacy train` / `spacy evaluate` end to end, configs, registry, logger."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import spacy

from .conftest import write_toy_corpus

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["cnn", "minilm", "minilm_grouped_frozen", "bond_moe_paper", "roberta", "spacy_ner_minilm", "spacy_ner_cnn"]
MISC = ["spacy-bond-moe.transformer_name.v1", "spacy-bond-moe.sinkhorn_assigner.v1",
        "spacy-bond-moe.argmax_assigner.v1", "spacy-bond-moe.soft_pseudo_labels.v1",
        "spacy-bond-moe.hard_pseudo_labels.v1", "spacy-bond-moe.cross_entropy.v1",
        "spacy-bond-moe.gce.v1"]


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory) -> Path:
    return write_toy_corpus(tmp_path_factory.mktemp("corpus"))


def spacy_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "spacy", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


SCHEDULE = ["--training.max_steps", "24", "--training.eval_frequency", "8",
            "--training.before_update.estep_every", "6", "--training.before_update.teacher_start", "12",
            "--training.before_update.teacher_refresh", "6"]


def events_flag(out: Path) -> list:
    return ["--training.logger.events_path", str(out / "bond_moe_events.jsonl")]


def check_run(out: Path, proc: subprocess.CompletedProcess, first_estep: int = 6) -> None:
    """`first_estep`: 6 when routed from the start, 12 (= teacher_start) with a shared stage I."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"[bond_moe] E-step @ step {first_estep}:" in proc.stdout
    assert all(f"E-step @ step {s}:" not in proc.stdout for s in range(1, first_estep))
    assert "[bond_moe] teacher refreshed @ step 12" in proc.stdout
    events = [json.loads(line) for line in (out / "bond_moe_events.jsonl").read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert kinds == {"estep", "teacher", "eval"}
    steps = [e["step"] for e in events if e["event"] == "teacher"]
    assert steps == [12, 18, 24]
    evals = [e for e in events if e["event"] == "eval"]
    assert evals[-1]["teacher_age"] == 0 and "ents_f" in evals[-1]["scores"]
    assert (out / "model-best" / "bond_moe_ner" / "model").exists()


def test_spacy_train_cnn_and_evaluate(toy_corpus, tmp_path):
    out = tmp_path / "out"
    proc = spacy_cli("train", "configs/cnn.cfg", "-o", str(out), "--paths.train",
                     str(toy_corpus / "train.spacy"), "--paths.dev", str(toy_corpus / "dev.spacy"),
                     *SCHEDULE, *events_flag(out))
    check_run(out, proc)
    metrics = tmp_path / "metrics.json"
    proc = spacy_cli("evaluate", str(out / "model-last"), str(toy_corpus / "dev.spacy"), "--output", str(metrics))
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(metrics.read_text())
    assert {"ents_p", "ents_r", "ents_f", "ents_per_type"} <= set(scores)
    nlp = spacy.load(out / "model-last")
    doc = nlp("Mary met John in Rome .")
    assert "bond_moe" in doc.spans and doc._.bond_moe_expert in {0, 1, 2}


def test_spacy_train_tiny_transformer(toy_corpus, tmp_path, tiny_bert):
    out = tmp_path / "out"
    proc = spacy_cli("train", "configs/minilm.cfg", "-o", str(out), "--paths.train",
                     str(toy_corpus / "train.spacy"), "--paths.dev", str(toy_corpus / "dev.spacy"),
                     "--paths.transformer", str(tiny_bert), *SCHEDULE, *events_flag(out))
    check_run(out, proc, first_estep=12)  # the default: a shared stage I until the teacher
    nlp = spacy.load(out / "model-last")
    assert nlp("Paris is big .")._.bond_moe_expert in {0, 1, 2}


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_valid(name, toy_corpus, tmp_path, tiny_bert):
    paths = ["--paths.train", str(toy_corpus / "train.spacy"), "--paths.dev", str(toy_corpus / "dev.spacy")]
    if not name.endswith("cnn"):
        paths += ["--paths.transformer", str(tiny_bert)]
    proc = spacy_cli("debug", "config", f"configs/{name}.cfg", *paths)
    assert proc.returncode == 0 and "Config is valid" in proc.stdout, proc.stdout + proc.stderr
    filled = tmp_path / "filled.cfg"
    proc = spacy_cli("init", "fill-config", f"configs/{name}.cfg", str(filled))
    assert proc.returncode == 0, proc.stderr
    assert spacy.util.load_config(filled)["nlp"]["pipeline"]


def test_registered_names_resolve():
    from spacy.util import registry

    assert registry.architectures.get("spacy-bond-moe.MoETagger.v1")
    assert registry.callbacks.get("spacy-bond-moe.em_schedule.v1")
    assert registry.callbacks.get("spacy-bond-moe.em_schedule.v2")
    assert registry.loggers.get("spacy-bond-moe.ConsoleLogger.v1")
    assert registry.layers.get("spacy-bond-moe.empty_safe_pooling.v1")
    for name in MISC:
        assert registry.misc.get(name)
    assert "bond_moe_ner" in spacy.blank("en").factory_names


def test_entry_points_declared():
    from importlib.metadata import entry_points

    groups = {g: {ep.name for ep in entry_points(group=g)} for g in
              ("spacy_factories", "spacy_architectures", "spacy_callbacks", "spacy_loggers",
               "spacy_misc", "thinc_layers", "spacy_batchers")}
    assert "bond_moe_ner" in groups["spacy_factories"]
    assert {"spacy-bond-moe.MoETagger.v1", "spacy-bond-moe.CaseAwareTok2Vec.v1",
            "spacy-bond-moe.FrozenTorchParams.v1", "spacy-bond-moe.LengthGroupedTok2Vec.v1"} <= \
        groups["spacy_architectures"]
    assert "spacy-bond-moe.length_buckets.v1" in groups["spacy_batchers"]
    assert {"spacy-bond-moe.em_schedule.v1", "spacy-bond-moe.em_schedule.v2"} <= groups["spacy_callbacks"]
    assert "spacy-bond-moe.ConsoleLogger.v1" in groups["spacy_loggers"]
    assert set(MISC) <= groups["spacy_misc"]
    assert "spacy-bond-moe.empty_safe_pooling.v1" in groups["thinc_layers"]


def test_transformer_name_defaults_to_embedded_minilm():
    from spacy_bond_moe.util import transformer_name_v1

    path = Path(transformer_name_v1())
    assert (path / "config.json").exists() and (path / "vocab.txt").exists()
    assert transformer_name_v1("roberta-base") == "roberta-base"


def test_training_from_python_writes_the_events_file(toy_corpus, tmp_path):
    """`spacy.cli.train.train(...)` from Python logs events like `spacy train` (no argv)."""
    from spacy.cli.train import train

    out = tmp_path / "out"
    overrides = {"paths.train": str(toy_corpus / "train.spacy"), "paths.dev": str(toy_corpus / "dev.spacy"),
                 "training.logger.events_path": str(out / "events.jsonl"),
                 **{k.lstrip("-"): int(v) for k, v in zip(SCHEDULE[::2], SCHEDULE[1::2])}}
    train(ROOT / "configs" / "cnn.cfg", out, overrides=overrides)
    kinds = {json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()}
    assert kinds == {"estep", "teacher", "eval"}


def test_sub_config_blocks_swap_and_bad_choices_on_the_command_line(toy_corpus):
    paths = ["--paths.train", str(toy_corpus / "train.spacy"), "--paths.dev", str(toy_corpus / "dev.spacy")]
    swapped = ["--components.bond_moe_ner.assigner", '{"@misc": "spacy-bond-moe.argmax_assigner.v1"}',
               "--components.bond_moe_ner.pseudo_labeller", '{"@misc": "spacy-bond-moe.hard_pseudo_labels.v1"}',
               "--components.bond_moe_ner.distant_loss", '{"@misc": "spacy-bond-moe.gce.v1", "q": 0.7}']
    proc = spacy_cli("debug", "config", "configs/cnn.cfg", *paths, *swapped)
    assert proc.returncode == 0 and "Config is valid" in proc.stdout, proc.stdout + proc.stderr
    proc = spacy_cli("debug", "config", "configs/cnn.cfg", *paths, "--components.bond_moe_ner.assigner.scope", "docs")
    assert proc.returncode != 0
    assert "assigner -> scope" in proc.stdout + proc.stderr and "'all', 'entities'" in proc.stdout + proc.stderr
