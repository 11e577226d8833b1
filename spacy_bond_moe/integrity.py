"""Safe, verified loading of the component's weights: a SHA-256 digest written beside them,
torch's weights-only unpickler forced, and one-line errors naming the file."""
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from thinc.api import Model

DIGEST_SUFFIX = ".sha256"
_FORCE_SAFE, _FORCE_UNSAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def write_model(model: Model, path: Path) -> None:
    """The model's bytes to `path` and their digest to `path.sha256`."""
    data = model.to_bytes()
    Path(path).write_bytes(data)
    digest_path(Path(path)).write_text(digest(data) + "\n", encoding="utf8")


@contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """torch.load with weights_only=True inside (whatever the environment says): a pickle
    in a pipeline's weights cannot run code."""
    saved = {name: os.environ.get(name) for name in (_FORCE_SAFE, _FORCE_UNSAFE)}
    os.environ[_FORCE_SAFE] = "1"
    os.environ.pop(_FORCE_UNSAFE, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_model_bytes(model: Model, data: bytes, source: str) -> None:
    """`model.from_bytes(data)` with the weights-only unpickler, any failure (truncated or
    corrupt file, a pickle of code) as one ValueError naming `source`."""
    try:
        with weights_only_torch_load():
            model.from_bytes(data)
    except Exception as err:  # msgpack, torch and thinc raise many types; all mean "unreadable"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"[bond_moe_ner] cannot load the weights in {source}: "
                         f"{type(err).__name__}: {reason}") from err


def read_verified(path: Path) -> bytes:
    """The bytes of `path`, checked against `path.sha256` when there is one (pipelines
    saved before 0.2 have none)."""
    data = Path(path).read_bytes()
    expected_path = digest_path(Path(path))
    if expected_path.is_file():
        expected = expected_path.read_text(encoding="utf8").strip()
        if digest(data) != expected:
            raise ValueError(f"[bond_moe_ner] {path} does not match its digest {expected_path.name} "
                             "(corrupt, truncated or changed after saving): refusing to load it")
    return data
