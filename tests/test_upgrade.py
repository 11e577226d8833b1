"""`python -m spacy_bond_moe upgrade`: a 0.1 pipeline (flat option flags) loads in 0.2."""
import spacy
import srsly
from thinc.api import Config
from typer.testing import CliRunner

from spacy_bond_moe.cli import app
from spacy_bond_moe.upgrade import upgrade_component

from .conftest import TRAIN_DATA, cnn_moe_model, make_examples

V01_FLAGS = {"fair": False, "sinkhorn_lambda": 0.2, "sinkhorn_max_iter": 50, "sinkhorn_tol": 1e-5,
             "self_training": "hard", "sharpen_power": 2.0, "soft_threshold": 0.9, "gce_q": 0.7,
             "o_drop": 0.25, "estep_scope": "entities", "shared_warmup": 30, "m_step": "soft"}


def test_upgrade_component_maps_every_flag():
    new = upgrade_component({"factory": "bond_moe_ner", "combine": "mean", **V01_FLAGS,
                             "scorer": {"@scorers": "spacy-bond-moe.ner_scorer.v1"}})
    assert new["assigner"] == {"@misc": "spacy-bond-moe.argmax_assigner.v1", "temperature": 0.2,
                               "scope": "entities", "m_step": "soft"}
    assert new["pseudo_labeller"] == {"@misc": "spacy-bond-moe.hard_pseudo_labels.v1"}
    assert new["distant_loss"] == {"@misc": "spacy-bond-moe.gce.v1", "q": 0.7, "o_drop": 0.25}
    assert new["scorer"] == {"@scorers": "spacy.ner_scorer.v1"}
    assert not set(V01_FLAGS) & set(new) and new["combine"] == "mean"
    fair = upgrade_component({"factory": "bond_moe_ner", "fair": True, "sinkhorn_lambda": 0.1,
                              "scorer": None})
    assert fair["scorer"] is None
    assert fair["assigner"]["@misc"] == "spacy-bond-moe.sinkhorn_assigner.v1"
    assert fair["pseudo_labeller"]["@misc"] == "spacy-bond-moe.soft_pseudo_labels.v1"
    assert fair["distant_loss"] == {"@misc": "spacy-bond-moe.cross_entropy.v1", "o_drop": 0.0}


def test_upgrade_cli_makes_a_v01_pipeline_load_with_the_same_predictions(tmp_path):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("bond_moe_ner", config={"model": cnn_moe_model(2, width=32, depth=2)})
    examples = make_examples(nlp, copies=2)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(30):
        nlp.update(examples, sgd=optimizer)
    texts = [text for text, _ in TRAIN_DATA]
    expected = [[(e.text, e.label_) for e in doc.ents] for doc in nlp.pipe(texts)]
    old = tmp_path / "old"
    nlp.to_disk(old)
    # Make it look like a 0.1 pipeline: flat flags in config.cfg, extra keys in the cfg file.
    config = Config().from_disk(old / "config.cfg", interpolate=False)
    block = config["components"]["bond_moe_ner"]
    for key in ("assigner", "pseudo_labeller", "distant_loss"):
        del block[key]
    block.update({**V01_FLAGS, "fair": True, "gce_q": 0.0, "shared_warmup": 0,
                  "scorer": {"@scorers": "spacy-bond-moe.ner_scorer.v1"}})
    config.to_disk(old / "config.cfg")
    cfg = srsly.read_json(old / "bond_moe_ner" / "cfg")
    srsly.write_json(old / "bond_moe_ner" / "cfg", {**cfg, **V01_FLAGS, "head_lr_scale": 1.0})
    runner = CliRunner()
    result = runner.invoke(app, ["upgrade", str(old), str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    assert "bond_moe_ner" in result.output
    upgraded = spacy.load(tmp_path / "new")
    assert [[(e.text, e.label_) for e in doc.ents] for doc in upgraded.pipe(texts)] == expected
    assert set(upgraded.get_pipe("bond_moe_ner").cfg) == {"labels", "spans_key", "combine", "expert_prior"}
    # An existing output is refused and left as it is; so is a folder that is not a pipeline.
    result = runner.invoke(app, ["upgrade", str(old), str(tmp_path / "new")])
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(app, ["upgrade", str(tmp_path), str(tmp_path / "x")])
    assert result.exit_code == 1 and "not a saved spaCy pipeline" in result.output
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]  # no temporary folder left
