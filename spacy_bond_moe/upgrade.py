"""Upgrade a pipeline saved by spacy-bond-moe 0.1 (flat option flags on the component) to the
0.2 config (registered sub-config blocks), so that it loads without retraining."""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import srsly
from thinc.api import Config

from .util import FACTORY

CFG_KEYS = ("labels", "spans_key", "combine", "expert_prior")  # the component's cfg file
OLD_KEYS = ("fair", "sinkhorn_lambda", "sinkhorn_max_iter", "sinkhorn_tol", "self_training",
            "sharpen_power", "soft_threshold", "gce_q", "o_drop", "estep_scope", "shared_warmup",
            "m_step")


def upgrade_component(old: Dict[str, Any]) -> Dict[str, Any]:
    """A v0.2 component block from a v0.1 one (unchanged if it has no v0.1 flags)."""
    if not any(key in old for key in OLD_KEYS):
        return dict(old)
    new = {key: value for key, value in old.items() if key not in OLD_KEYS}
    scope, m_step = old.get("estep_scope", "all"), old.get("m_step", "hard")
    lam = old.get("sinkhorn_lambda", 0.1)
    if old.get("fair", True):
        new["assigner"] = {"@misc": "spacy-bond-moe.sinkhorn_assigner.v1", "lam": lam,
                           "max_iter": old.get("sinkhorn_max_iter", 100),
                           "tol": old.get("sinkhorn_tol", 1e-6), "scope": scope, "m_step": m_step}
    else:
        new["assigner"] = {"@misc": "spacy-bond-moe.argmax_assigner.v1", "temperature": lam,
                           "scope": scope, "m_step": m_step}
    if old.get("self_training", "soft") == "hard":
        new["pseudo_labeller"] = {"@misc": "spacy-bond-moe.hard_pseudo_labels.v1"}
    else:
        new["pseudo_labeller"] = {"@misc": "spacy-bond-moe.soft_pseudo_labels.v1",
                                  "power": old.get("sharpen_power", 2.0),
                                  "threshold": old.get("soft_threshold", 0.9)}
    o_drop, gce_q = old.get("o_drop", 0.0), old.get("gce_q", 0.0)
    if gce_q > 0:
        new["distant_loss"] = {"@misc": "spacy-bond-moe.gce.v1", "q": gce_q, "o_drop": o_drop}
    else:
        new["distant_loss"] = {"@misc": "spacy-bond-moe.cross_entropy.v1", "o_drop": o_drop}
    if (new.get("scorer") or {}).get("@scorers") == "spacy-bond-moe.ner_scorer.v1":
        new["scorer"] = {"@scorers": "spacy.ner_scorer.v1"}
    return new


def upgrade_config(config: Config) -> List[str]:
    """Rewrite, in place, every `bond_moe_ner` block of a config; returns their names.

    A v0.1 `shared_warmup` becomes `shared_steps` of `spacy-bond-moe.em_schedule.v2`.
    """
    names = []
    for name, block in config.get("components", {}).items():
        if block.get("factory") != FACTORY or not any(key in block for key in OLD_KEYS):
            continue
        names.append(name)
        shared = block.get("shared_warmup", 0)
        config["components"][name] = upgrade_component(block)
        schedule = config.get("training", {}).get("before_update") or {}
        v1 = schedule.get("@callbacks") == "spacy-bond-moe.em_schedule.v1"
        if v1 and schedule.get("component") == name:
            schedule["@callbacks"] = "spacy-bond-moe.em_schedule.v2"
            schedule["shared_steps"] = shared
    return names


def upgrade_pipeline(model: Path, output: Path) -> List[str]:
    """Copy a saved pipeline to `output` with its config and component cfg files upgraded.

    Written to a temporary folder beside `output` and renamed into place: `output` is either
    the complete upgraded pipeline or untouched. RETURNS the upgraded components' names.
    """
    model, output = Path(model), Path(output)
    if not (model / "config.cfg").is_file():
        raise ValueError(f"{model}: not a saved spaCy pipeline (no config.cfg)")
    if output.exists():
        raise ValueError(f"{output}: already exists")
    config = Config().from_disk(model / "config.cfg", interpolate=False)
    names = upgrade_config(config)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        target = tmp / "pipeline"
        shutil.copytree(model, target)
        config.to_disk(target / "config.cfg")
        for name in names:
            cfg_path = target / name / "cfg"
            if cfg_path.is_file():
                cfg = srsly.read_json(cfg_path)
                srsly.write_json(cfg_path, {k: v for k, v in cfg.items() if k in CFG_KEYS})
        os.replace(target, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return names
