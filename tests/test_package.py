"""The packaged pipeline `en_bond_moe` in a fresh virtualenv (slow: builds a venv)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from .conftest import TRAIN_DATA, make_doc
from .test_training import SCHEDULE, spacy_cli

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [text for text, _ in TRAIN_DATA] + ["Angela Merkel met Emmanuel Macron in Paris .", ""]

PREDICT = """
import json, sys, spacy
nlp = spacy.load(sys.argv[1])
out = []
for doc in nlp.pipe(json.loads(sys.argv[2])):
    out.append({"ents": [[e.start_char, e.end_char, e.label_] for e in doc.ents],
                "scores": doc.spans["bond_moe"].attrs["scores"], "expert": doc._.bond_moe_expert})
print(json.dumps(out))
"""


def predictions(python: str, model: str, cwd: Path) -> list:
    """Predictions of `model` in a separate interpreter, run outside the source tree."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    proc = subprocess.run([python, "-c", PREDICT, model, json.dumps(TEXTS)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_packaged_pipeline_in_fresh_venv(tmp_path, tiny_bert):

    nlp = spacy.blank("en")
    docs = [make_doc(nlp, t, e, f"toy:{c}:{i}") for c in range(6) for i, (t, e) in enumerate(TRAIN_DATA)]
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "train.spacy")
    bert = tmp_path / "bert"
    shutil.copytree(tiny_bert, bert)
    out = tmp_path / "training"
    proc = spacy_cli("train", "configs/minilm.cfg", "-o", str(out), "--paths.train", str(tmp_path / "train.spacy"),
                     "--paths.dev", str(tmp_path / "train.spacy"), "--paths.transformer", str(bert), *SCHEDULE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = predictions(sys.executable, str(out / "model-last"), tmp_path)
    (tmp_path / "packages").mkdir()
    proc = spacy_cli("package", str(out / "model-last"), str(tmp_path / "packages"), "--name", "bond_moe",
                     "--version", "0.0.1", "--build", "none", "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    package = tmp_path / "packages" / "en_bond_moe-0.0.1"
    requirements = json.loads((package / "meta.json").read_text())["requirements"]
    assert any(r.startswith("spacy-bond-moe") for r in requirements)
    # Neither the training folder nor the transformer directory may be needed any more.
    shutil.rmtree(out)
    shutil.rmtree(bert)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True, timeout=900)
    subprocess.run(pip + [str(ROOT)], check=True, timeout=900)  # the plugin + its install_requires
    subprocess.run(pip + ["--no-deps", "--no-build-isolation", str(package)], check=True, timeout=300)
    got = predictions(str(venv / "bin" / "python"), "en_bond_moe", tmp_path)
    assert [g["ents"] for g in got] == [e["ents"] for e in expected]
    assert [g["expert"] for g in got] == [e["expert"] for e in expected]
    for g, e in zip(got, expected):
        assert g["scores"] == pytest.approx(e["scores"], abs=1e-5)
