"""`merge`: K=1 pipelines trained with different seeds become the experts of one pipeline,
and a K=1 student distils the merged pipeline as its teacher."""
from pathlib import Path
from typing import List, Optional

import numpy
import pytest
import spacy
from spacy.util import fix_random_seed
from thinc.api import Config
from typer.testing import CliRunner

from spacy_bond_moe.cli import app
from spacy_bond_moe.em import doc_key
from spacy_bond_moe.ensemble import merge_pipelines
from spacy_bond_moe.teacher import class_frequencies, soft_labels

from .conftest import TRAIN_DATA, cnn_moe_model, make_examples, trf_tok2vec_config

TEXTS = [text for text, _ in TRAIN_DATA] + ["Mary likes Paris and Acme ."]


def train_member(path: Path, seed: int, n_experts: int = 1, tok2vec: Optional[dict] = None,
                 data=TRAIN_DATA, steps: int = 8) -> Path:
    """A small pipeline trained a few steps from `seed`, saved to `path`."""
    fix_random_seed(seed)
    nlp = spacy.blank("en")
    model = cnn_moe_model(n_experts)
    if tok2vec is not None:
        model["tok2vec"] = tok2vec
    nlp.add_pipe("bond_moe_ner", config={"model": model})
    examples = make_examples(nlp, data=data)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer, drop=0.1)
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> List[Path]:
    root = tmp_path_factory.mktemp("members")
    return [train_member(root / f"seed{seed}", seed) for seed in (0, 1, 2)]


def probs(nlp, text: str) -> numpy.ndarray:
    pipe = nlp.get_pipe("bond_moe_ner")
    return pipe.model.ops.to_numpy(pipe.predict([nlp.make_doc(text)])[0])


def test_merged_experts_are_the_members_and_the_mixture_their_mean(members, tmp_path):
    gaps = merge_pipelines(members, tmp_path / "merged")
    assert len(gaps) == 3 and max(gaps) < 1e-4
    merged = spacy.load(tmp_path / "merged")
    pipe = merged.get_pipe("bond_moe_ner")
    assert pipe.n_experts == 3 and pipe.model.attrs["expert_mode"] == "separate"
    config = Config().from_disk(tmp_path / "merged" / "config.cfg")
    assert config["components"]["bond_moe_ner"]["model"]["n_experts"] == 3
    assert merged.meta["bond_moe_members"] == [str(m) for m in members]
    alone = [spacy.load(m) for m in members]
    for text in TEXTS:
        p = probs(merged, text)
        singles = [probs(nlp, text)[:, 0] for nlp in alone]
        for k, single in enumerate(singles):
            assert numpy.allclose(p[:, k], single, atol=1e-5)
        assert numpy.allclose(pipe.combine(p), numpy.mean(singles, axis=0), atol=1e-5)
    # The members differ (different seeds), so the mixture is not any one of them.
    assert not numpy.allclose(probs(alone[0], TEXTS[0]), probs(alone[1], TEXTS[0]), atol=1e-3)
    assert [len(d.ents) for d in merged.pipe(TEXTS)] == [len(merged(t).ents) for t in TEXTS]


def test_merge_of_transformer_members_round_trips(tiny_bert, tmp_path):
    tok2vec = trf_tok2vec_config(str(tiny_bert))
    members = [train_member(tmp_path / f"m{seed}", seed, tok2vec=tok2vec, steps=3) for seed in (0, 1)]
    merge_pipelines(members, tmp_path / "merged")
    merged = spacy.load(tmp_path / "merged")
    for text in TEXTS:
        p = probs(merged, text)
        for k, member in enumerate(members):
            assert numpy.allclose(p[:, k], probs(spacy.load(member), text)[:, 0], atol=1e-5)


def test_merge_rejects_members_that_do_not_fit(members, tmp_path):
    k2 = train_member(tmp_path / "k2", 0, n_experts=2, steps=1)
    with pytest.raises(ValueError, match=r"k2: bond_moe_ner has 2 experts; members must be K=1"):
        merge_pipelines([members[0], k2], tmp_path / "out")
    only_loc = [(t, [e for e in ents if e[2] == "LOC"]) for t, ents in TRAIN_DATA]
    other = train_member(tmp_path / "loc", 0, data=only_loc, steps=1)
    with pytest.raises(ValueError, match=r"loc: its labels \['LOC'\] differ"):
        merge_pipelines([members[0], other], tmp_path / "out")
    wide = train_member(tmp_path / "wide", 0, tok2vec={**cnn_moe_model(1)["tok2vec"], "width": 24},
                        steps=1)
    with pytest.raises(ValueError, match="model config differs"):
        merge_pipelines([members[0], wide], tmp_path / "out")
    with pytest.raises(ValueError, match="at least two"):
        merge_pipelines(members[:1], tmp_path / "out")
    with pytest.raises(ValueError, match="not a saved spaCy pipeline"):
        merge_pipelines([members[0], tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="already exists"):
        merge_pipelines(members, tmp_path / "k2")


def test_merge_cli(members, tmp_path):
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "m"), *map(str, members[:2])])
    assert result.exit_code == 0, result.output
    assert "2 experts" in result.output and (tmp_path / "m" / "config.cfg").is_file()
    result = CliRunner().invoke(app, ["merge", str(tmp_path / "m"), *map(str, members[:2])])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'm'}: already exists"]


def student_config(teacher: Optional[Path]) -> Config:
    """A K=1 CNN pipeline whose `[initialize.components.bond_moe_ner]` names `teacher`."""
    config = Config({
        "nlp": {"lang": "en", "pipeline": ["bond_moe_ner"]},
        "components": {"bond_moe_ner": {"factory": "bond_moe_ner", "model": cnn_moe_model(1)}},
    })
    config["initialize"] = {"components": {"bond_moe_ner": {"teacher": None if teacher is None else str(teacher)}}}
    return config


def test_student_distils_the_merged_ensemble(members, tmp_path):
    merge_pipelines(members, tmp_path / "merged")
    nlp = spacy.util.load_model_from_config(student_config(tmp_path / "merged"), auto_fill=True)
    examples = make_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)  # reads [initialize.components]
    pipe = nlp.get_pipe("bond_moe_ner")
    assert pipe.n_experts == 1 and pipe.teacher.source.path == str(tmp_path / "merged")
    assert not pipe.teacher.active  # adopted, used from the first snapshot on
    # Resumed before the first snapshot (spaCy saves at step 0): `initialize` does not run
    # again, the state alone names the source, and the first snapshot still takes it.
    early = pipe.training_state()["teacher"]
    assert early == {"step": None, "adopted": str(tmp_path / "merged")}
    resumed = spacy.util.load_model_from_config(student_config(None), auto_fill=True)
    resumed.initialize(lambda: examples)
    resumed_pipe = resumed.get_pipe("bond_moe_ner")
    resumed_pipe.load_training_state(pipe.training_state())
    assert not resumed_pipe.teacher.active
    assert resumed_pipe.snapshot_teacher(examples, nlp=resumed, step=1)["source"] == str(tmp_path / "merged")
    event = pipe.snapshot_teacher(examples, nlp=nlp, step=1)
    assert event["source"] == str(tmp_path / "merged") and pipe.teacher.sourced
    # The targets are BOND's soft labels of the members' mean, not of the student.
    alone = [spacy.load(m) for m in members]
    means = [numpy.mean([probs(a, eg.reference.text)[:, 0] for a in alone], axis=0)
             for eg in examples]
    freq = class_frequencies(numpy.concatenate(means))
    for eg, mean in zip(examples, means):
        q, keep = pipe.teacher.targets[doc_key(eg.reference)]
        expected_q, expected_keep = soft_labels(mean, freq)
        assert numpy.allclose(q, expected_q, atol=2e-3) and (keep == expected_keep).all()
    losses = [nlp.update(examples, sgd=optimizer)["bond_moe_ner"] for _ in range(4)]
    assert losses[-1] < losses[0]  # soft cross-entropy on the ensemble's targets
    # Resuming: the state names the source instead of holding its weights; a fresh component
    # adopts it again and has the same targets.
    state = pipe.training_state()
    assert state["teacher"]["adopted"] == str(tmp_path / "merged") and state["teacher"]["source"]
    assert "model" not in state["teacher"]
    fresh = spacy.util.load_model_from_config(student_config(None), auto_fill=True)
    fresh.initialize(lambda: examples)
    fresh_pipe = fresh.get_pipe("bond_moe_ner")
    fresh_pipe.load_training_state(state)
    assert fresh_pipe.teacher.sourced and fresh_pipe.teacher.model is fresh_pipe.teacher.source.model
    for key, (q, keep) in pipe.teacher.targets.items():
        assert numpy.array_equal(fresh_pipe.teacher.targets[key][0], q)
    # A refresh after the source copies the student, as in BOND, and lets the source go.
    source_model = pipe.teacher.model
    pipe.snapshot_teacher(examples, nlp=nlp, step=5)
    assert not pipe.teacher.sourced and pipe.teacher.source is None
    assert pipe.teacher.model is not source_model
    doc = nlp.make_doc(TEXTS[0])
    assert numpy.allclose(pipe.teacher.mixtures([doc])[0], pipe.combine(pipe.predict([doc])[0]))
    state = pipe.training_state()["teacher"]
    assert "model" in state and "adopted" not in state
    fresh_pipe.load_training_state(pipe.training_state())
    assert fresh_pipe.teacher.source is None and not fresh_pipe.teacher.sourced


def test_teacher_that_does_not_fit_is_refused(members, tmp_path):
    only_loc = [(t, [e for e in ents if e[2] == "LOC"]) for t, ents in TRAIN_DATA]
    other = train_member(tmp_path / "loc", 0, data=only_loc, steps=1)
    nlp = spacy.util.load_model_from_config(student_config(other), auto_fill=True)
    examples = make_examples(nlp)
    with pytest.raises(ValueError, match=r"teacher .*loc: its labels \['LOC'\] differ from "
                                         r"this component's \['LOC', 'ORG', 'PER'\]"):
        nlp.initialize(lambda: examples)
    pipe = nlp.get_pipe("bond_moe_ner")
    with pytest.raises(ValueError, match="not a saved spaCy pipeline"):
        pipe.adopt_teacher(tmp_path)
    state = {"step": 1, "adopted": str(members[0]), "source": True, "freq": [1.0], "targets": {}}
    with pytest.raises(ValueError, match="was not adopted"):
        pipe.teacher.load_state(state, pipe.model)
