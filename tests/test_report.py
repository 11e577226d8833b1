"""`report` (HTML + PNGs of a training run) and `suggest-kb` (KB additions and suspects)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import srsly
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_bond_moe.cli import app
from spacy_bond_moe.converters import DOC_ID_KEY

from .conftest import make_doc
from .test_training import SCHEDULE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny CNN training run (24 steps) with its events file, on a toy corpus."""
    from .conftest import write_toy_corpus

    root = tmp_path_factory.mktemp("run")
    corpus = write_toy_corpus(root / "corpus")
    out = root / "training"
    proc = subprocess.run(
        [sys.executable, "-m", "spacy", "train", "configs/cnn.cfg", "-o", str(out), "--paths.train",
         str(corpus / "train.spacy"), "--paths.dev", str(corpus / "dev.spacy"), *SCHEDULE,
         "--training.logger.events_path", str(out / "bond_moe_events.jsonl")],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_report_of_a_training_run(trained, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(trained), "--data", str(trained.parent / "corpus" / "dev.spacy"),
                                      "-o", str(out), "--n-docs", "2"])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["dev_curve.png", "experts.png", "experts_alone.png", "per_type.png", "teacher.png"]
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == pngs
    assert all((out / name).stat().st_size > 5000 for name in pngs)
    meta = srsly.read_json(trained / "model-best" / "meta.json")
    assert f"<td>entities</td><td>{100 * meta['performance']['ents_p']:.2f}</td>" in page
    assert f"<td>{100 * meta['performance']['ents_f']:.2f}</td>" in page
    events = [json.loads(line) for line in (trained / "bond_moe_events.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    best = max(evals, key=lambda e: e["scores"]["ents_f"])
    assert f"Best dev F1 {100 * best['scores']['ents_f']:.2f} at step {best['step']}" in page
    assert "<td>12</td><td>" in page  # the teacher refresh at step 12 in its table
    assert page.count('class="entities"') == 4  # 2 documents, model and labels each
    assert "expert 0" in page and "mixture" in page and "Token argmax agreement" in page


@pytest.mark.slow
def test_report_errors(tmp_path, trained):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "no model-best/ or model-last/" in result.output
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler")
    nlp.to_disk(tmp_path / "model-best")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "has no bond_moe_ner component" in result.output
    result = CliRunner().invoke(app, ["report", str(trained), "--data", str(tmp_path / "missing.spacy"),
                                      "-o", str(tmp_path / "r")])
    assert result.exit_code == 1 and "missing.spacy: cannot read DocBin" in result.output


def test_suggest_kb_finds_the_missing_entity(tmp_path):
    """The 'model' knows Zorblat Industries and Acme; the KB only has Acme and a bad pattern."""
    model = spacy.blank("en")
    ruler = model.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "ORG", "pattern": "Zorblat Industries"}, {"label": "ORG", "pattern": "Acme"},
                        {"label": "LOC", "pattern": "Paris"}, {"label": "ORG", "pattern": "NATO"}])
    model.to_disk(tmp_path / "model")
    kb = tmp_path / "kb.tsv"
    kb.write_text("Acme\tORG\nMay\tPER\nParis\tLOC\n")
    nlp = spacy.blank("en")
    texts = [("Zorblat Industries hired Acme in May .", [(25, 29, "ORG"), (33, 36, "PER")]),
             ("NATO met NATO .", [(0, 4, "ORG"), (9, 13, "ORG")]),
             ("In May , Zorblat Industries left Paris .", [(3, 6, "PER"), (33, 38, "LOC")]),
             ("Zorblat Industries grew in Paris in May .", [(27, 32, "LOC"), (36, 39, "PER")]),
             ("Nobody else .", [])]
    docs = [make_doc(nlp, text, ents, f"d{i}") for i, (text, ents) in enumerate(texts)]
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "corpus.spacy")
    out = tmp_path / "new.jsonl"
    result = CliRunner().invoke(app, ["suggest-kb", str(tmp_path / "model"), str(tmp_path / "corpus.spacy"),
                                      "--kb", str(kb), "-o", str(out), "--min-count", "2"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [{"label": "ORG", "pattern": "Zorblat Industries", "source": "suggest-kb", "count": 3,
                        "confidence": 1.0}]
    rows = [line.split("\t") for line in (tmp_path / "new.tsv").read_text().splitlines()]
    assert rows[0][:3] == ["kind", "text", "label"]
    assert rows[1][:4] == ["add", "Zorblat Industries", "ORG", "3"]
    assert "[[Zorblat Industries]] hired Acme in May ." in rows[1][6]  # NATO: labelled already, not suggested
    assert rows[2][:6] == ["suspect", "May", "PER", "3", "", "0/3"]  # the model never tags May
    assert len(rows) == 3  # Paris: the model agrees, no suspect
    from spacy_bond_moe.distant import read_kb

    assert [(e.label, e.pattern) for e in read_kb(out)] == [("ORG", "Zorblat Industries")]
    again = tmp_path / "again.jsonl"
    CliRunner().invoke(app, ["suggest-kb", str(tmp_path / "model"), str(tmp_path / "corpus.spacy"),
                             "--kb", str(kb), "-o", str(again), "--min-count", "2"])
    assert again.read_bytes() == out.read_bytes()  # deterministic


@pytest.mark.slow
def test_suggest_kb_with_confidences_of_a_trained_pipeline(trained, tmp_path):
    kb = tmp_path / "kb.tsv"
    kb.write_text("London\tLOC\n")
    corpus = tmp_path / "unlabelled.spacy"  # the toy corpus without its labels: every prediction is new
    docs = list(DocBin().from_disk(trained.parent / "corpus" / "train.spacy").get_docs(spacy.blank("en").vocab))
    for doc in docs:
        doc.ents = []
    DocBin(docs=docs, store_user_data=True).to_disk(corpus)
    out = tmp_path / "s.jsonl"
    result = CliRunner().invoke(app, ["suggest-kb", str(trained / "model-best"), str(corpus), "--kb", str(kb),
                                      "-o", str(out), "--min-count", "1", "--min-confidence", "0"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["pattern"].lower() != "london" for r in records)
    assert all(0 < r["confidence"] <= 1 for r in records)
    assert [(-r["count"], -r["confidence"], r["pattern"]) for r in records] == \
        sorted((-r["count"], -r["confidence"], r["pattern"]) for r in records)
    docs = list(DocBin().from_disk(corpus).get_docs(spacy.blank("en").vocab))
    assert docs[0].user_data[DOC_ID_KEY]
