"""RoSTER's seed ensemble as a mixture: K pipelines trained on all the documents with
different seeds become the K experts (separate encoders) of one `bond_moe_ner` pipeline."""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy
import spacy
from spacy.language import Language
from thinc.api import Config

from .architectures import merge_taggers
from .util import bond_pipe_name

PROBE = "Angela Merkel met Emmanuel Macron in Paris ."


def _model_block(nlp: Language, name: str) -> Dict[str, Any]:
    """The component's model config without its seed-independent size fields."""
    block = dict(nlp.config["components"][name]["model"])
    block.pop("n_experts", None)
    block.pop("nO", None)
    return block


def check_members(members: Sequence[Path], nlps: Sequence[Language]) -> str:
    """The shared component name; one-line ValueError naming the member that does not fit."""
    first, name = nlps[0], bond_pipe_name(nlps[0], members[0])
    for path, nlp in zip(members, nlps):
        if bond_pipe_name(nlp, path) != name or nlp.pipe_names != first.pipe_names:
            raise ValueError(f"{path}: its pipeline {nlp.pipe_names} differs from "
                             f"{members[0]}'s {first.pipe_names}")
        pipe = nlp.get_pipe(name)
        if pipe.n_experts != 1:
            raise ValueError(f"{path}: {name} has {pipe.n_experts} experts; members must be "
                             "K=1 pipelines (n_experts = 1)")
        if pipe.labels != first.get_pipe(name).labels:
            raise ValueError(f"{path}: its labels {list(pipe.labels)} differ from "
                             f"{members[0]}'s {list(first.get_pipe(name).labels)}")
        if _model_block(nlp, name) != _model_block(first, name):
            raise ValueError(f"{path}: its {name} model config differs from {members[0]}'s; "
                             "members must be the same recipe trained with different seeds")
    return name


def merge_pipelines(members: Sequence[Path], output: Path) -> List[float]:
    """Write to `output` the first member with its `bond_moe_ner` tagger replaced by one
    whose K experts are the members' taggers (`expert_mode = "separate"`, equal weights).

    Written to a temporary folder beside `output`, loaded back and checked to predict what the
    members average to, then renamed into place: `output` is complete or absent.
    RETURNS (List[float]): the check's largest absolute probability difference per member.
    """
    members, output = [Path(m) for m in members], Path(output)
    if len(members) < 2:
        raise ValueError(f"merging needs at least two pipelines, got {len(members)}")
    if output.exists():
        raise ValueError(f"{output}: already exists")
    for path in members:
        if not (path / "config.cfg").is_file():
            raise ValueError(f"{path}: not a saved spaCy pipeline (no config.cfg)")
    nlps = [spacy.load(path) for path in members]
    name = check_members(members, nlps)
    merged = nlps[0]
    pipe = merged.get_pipe(name)
    pipe.model = merge_taggers([nlp.get_pipe(name).model for nlp in nlps])
    k = len(nlps)
    pipe.cfg["expert_prior"] = [1.0 / k] * k
    merged.meta["bond_moe_members"] = [str(path) for path in members]
    merged.meta.pop("performance", None)  # the first member's scores, not the mixture's
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        target = tmp / "pipeline"
        merged.to_disk(target)
        config = Config().from_disk(target / "config.cfg", interpolate=False)
        config["components"][name]["model"]["n_experts"] = k
        config["components"][name]["model"]["expert_mode"] = "separate"
        config.to_disk(target / "config.cfg")
        gaps = _check_merged(target, name, nlps)
        os.replace(target, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return gaps


def _check_merged(path: Path, name: str, nlps: Sequence[Language]) -> List[float]:
    """Load the written pipeline; expert k must predict what member k predicts."""
    loaded = spacy.load(path)
    pipe = loaded.get_pipe(name)
    probs = pipe.model.ops.to_numpy(pipe.predict([loaded.make_doc(PROBE)])[0])
    gaps = []
    for k, nlp in enumerate(nlps):
        alone = nlp.get_pipe(name).predict([nlp.make_doc(PROBE)])[0][:, 0]
        gaps.append(float(numpy.abs(probs[:, k] - alone).max()))
    if max(gaps) > 1e-4:
        raise ValueError(f"{path}: the merged pipeline does not reproduce its members "
                         f"(largest probability difference {max(gaps):.2g})")
    return gaps
