"""The training run: spaCy's loop with checkpoints that survive a kill at any instant, a
training state saved at every evaluation so that an interrupted run resumes where it
stopped, and checks of the corpora before the first step.

`python -m spacy_bond_moe train` runs it; it trains exactly as `spacy train` (same config,
same seed: same batches, same updates, same scores) and differs only in how it writes:
- `model-last`, `model-best` and `training-state` are written into a hidden sibling folder
  and swapped in whole (Linux: one atomic `renameat2(RENAME_EXCHANGE)`; elsewhere two
  renames, the previous folder kept as `.NAME.old` until the new one is in place and
  restored by the next run if a kill fell between them), so a kill never leaves a half
  written or missing model-best;
- `training-state/` holds the raw weights, the optimizer's moments, the step, the scores so
  far, the random generators, the epoch's document order and the component's routing,
  teacher and label masks. `--resume` rebuilds the pipeline from it and continues the epoch
  after the saved batch, so the resumed run has the same batches, random draws and updates
  (on the CPU; GPU kernels need not be bitwise deterministic).
Kills are covered, not power cuts: nothing is fsync'ed.
"""
import ctypes
import errno
import os
import random
import shutil
import sys
from pathlib import Path
from timeit import default_timer as timer
from typing import IO, Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy
import srsly
import torch
from spacy.language import Language
from spacy.schemas import ConfigSchemaTraining
from spacy.training import Example
from spacy.training.initialize import init_nlp
from spacy.training.loop import (
    create_before_to_disk_callback,
    create_evaluation_callback,
    subdivide_batch,
    update_meta,
)
from spacy.util import load_model_from_config, registry, resolve_dot_names
from thinc.api import Config, Model, Optimizer, constant, fix_random_seed, get_current_ops

from .component import BondMoENER

DIR_MODEL_BEST, DIR_MODEL_LAST, DIR_STATE = "model-best", "model-last", "training-state"
STATE_FILE = "state.msgpack"
STATE_VERSION = 1
_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


class TrainingError(ValueError):
    """A training run that cannot start or resume: the message is one line for the user."""


# ------------------------------------------------------------------ folders
def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def partial_dir(path: Path) -> Path:
    """The hidden sibling a folder is written into before it is swapped in."""
    return path.with_name(f".{path.name}.partial")


def _old_dir(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: Path) -> None:
    """Undo what a kill left: restore `.NAME.old` if NAME is missing, drop stale partials."""
    old = _old_dir(path)
    if not path.exists() and old.exists():
        os.rename(old, path)
    for leftover in (old, partial_dir(path)):
        if leftover.exists():
            shutil.rmtree(leftover)


def replace_dir(new: Path, path: Path) -> None:
    """Put the complete folder `new` at `path`; at every instant `path` holds either the
    previous complete folder or the new one."""
    if not path.exists():
        os.rename(new, path)
    elif _exchange(new, path):
        shutil.rmtree(new)  # now the previous folder
    else:
        old = _old_dir(path)
        if old.exists():
            shutil.rmtree(old)
        os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old)


def write_dir(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(folder)` on a fresh partial folder, then swap it in (`replace_dir`)."""
    tmp = partial_dir(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    replace_dir(tmp, path)


# -------------------------------------------------------------- checks
def _docs_and_labels(examples: Iterable[Example]) -> Tuple[int, set]:
    """The number of examples and the entity labels of their reference docs."""
    n_docs, labels = 0, set()
    for eg in examples:
        n_docs += 1
        labels.update(ent.label_ for ent in eg.reference.ents)
    return n_docs, labels


def check_corpora(nlp: Language, train_corpus: Callable, dev_corpus: Callable,
                  train_path: str, dev_path: str, stderr: IO) -> None:
    """One-line errors before the first step (run by `em_schedule` at step 0): an empty dev
    set, a dev set without entities, training data without entities; a warning for dev
    labels unseen in train."""
    dev_docs, dev_labels = _docs_and_labels(dev_corpus(nlp))
    if dev_docs == 0:
        raise TrainingError(f"the dev corpus {dev_path} has no documents: every score would be "
                            "0 and model-best would be chosen on nothing")
    if not dev_labels:
        raise TrainingError(f"the dev corpus {dev_path} ({dev_docs} documents) has no entities: "
                            "its scores cannot select a model")
    train_docs, train_labels = _docs_and_labels(train_corpus(nlp))
    if not train_labels:
        raise TrainingError(f"the training corpus {train_path} ({train_docs} documents) has no "
                            "entities: there is nothing to learn")
    unseen = sorted(dev_labels - train_labels)
    if unseen:
        stderr.write(f"Warning: dev labels never seen in {train_path}: {', '.join(unseen)} "
                     "(their recall will be 0)\n")


# --------------------------------------------------------- optimizer state
def _param_keys(nlp: Language) -> Dict[Tuple[int, str], Tuple[str, Callable[[], None]]]:
    """The optimizer's keys, (node or shim id, param name), to names that do not depend on
    the process (pipe / walk index / [shim index /] param name), each with a function that
    gives the parameter a zero gradient if it has none."""
    keys: Dict[Tuple[int, str], Tuple[str, Callable[[], None]]] = {}

    def node_grad(node: Model, param: str) -> Callable[[], None]:
        def allocate() -> None:
            if not node.has_grad(param):
                node.set_grad(param, node.ops.alloc(node.get_param(param).shape))
        return allocate

    def torch_grad(tensor: "torch.nn.Parameter") -> Callable[[], None]:
        def allocate() -> None:
            if tensor.grad is None:
                tensor.grad = torch.zeros_like(tensor)
        return allocate

    for pipe_name, pipe in nlp.components:
        model = getattr(pipe, "model", None)
        if not isinstance(model, Model):
            continue
        for i, node in enumerate(model.walk()):
            for param in node.param_names:
                keys.setdefault((node.id, param), (f"{pipe_name}/{i}/{param}", node_grad(node, param)))
            for j, shim in enumerate(node.shims):
                torch_model = getattr(shim, "_model", None)
                if isinstance(torch_model, torch.nn.Module):
                    for param, tensor in torch_model.named_parameters():
                        keys.setdefault((shim.id, param),
                                        (f"{pipe_name}/{i}/shim{j}/{param}", torch_grad(tensor)))
    return keys


def optimizer_state(optimizer: Optimizer, nlp: Language) -> Dict[str, Dict[str, Any]]:
    """Adam's moments, averages and update counts, keyed by stable names."""
    names = _param_keys(nlp)
    tables: Dict[str, Dict[str, Any]] = {}
    for table in ("mom1", "mom2", "averages", "nr_update", "last_seen"):
        values = getattr(optimizer, table)
        if values is None:
            continue
        rows: Dict[str, Any] = {}
        for key, value in values.items():
            if key not in names:
                raise TrainingError(f"cannot save the optimizer state: parameter {key!r} "
                                    "belongs to no pipe of the pipeline")
            rows[names[key][0]] = int(value) if isinstance(value, int) else numpy.asarray(value)
        tables[table] = rows
    return tables


def load_optimizer_state(optimizer: Optimizer, nlp: Language,
                         tables: Dict[str, Dict[str, Any]]) -> None:
    """Inverse of `optimizer_state` for a freshly built `nlp` (whose ids differ). Every
    parameter the optimizer has seen gets a zero gradient, as in the interrupted process
    (thinc and torch keep zeroed gradients between updates, and the optimizer still moves
    a parameter with a zero gradient by its moments; a fresh model has no gradients)."""
    keys = {name: (key, allocate) for key, (name, allocate) in _param_keys(nlp).items()}
    ops = get_current_ops()
    for table, rows in tables.items():
        target = getattr(optimizer, table)
        if target is None:
            raise TrainingError(f"the saved optimizer state has {table!r}, which this "
                                "optimizer does not keep: resume with the same config")
        for name, value in rows.items():
            if name not in keys:
                raise TrainingError(f"the saved optimizer state names parameter {name!r}, "
                                    "which this pipeline does not have: resume with the same config")
            key, allocate = keys[name]
            target[key] = value if isinstance(value, int) else ops.asarray(numpy.array(value))
            allocate()


# ------------------------------------------------------- random generators
def rng_state() -> Dict[str, Any]:
    """Python's, numpy's and torch's (CPU; and CUDA where used) generator states."""
    version, internal, gauss = random.getstate()
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": list(numpy.random.get_state()),
        "torch": torch.get_rng_state().numpy(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [s.numpy() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    numpy.random.set_state((name, numpy.asarray(keys, dtype="uint32"), pos, has_gauss, cached))
    torch.set_rng_state(torch.from_numpy(numpy.array(state["torch"], dtype="uint8")))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.from_numpy(numpy.array(s, dtype="uint8")) for s in state["torch_cuda"]])


# ----------------------------------------------------------------- batches
class BatchStream:
    """spaCy's `create_train_batches` (the same shuffles and batches), which also knows
    where it is: the epoch, the batches given out in it and the epoch's document order,
    so that a resumed run continues the epoch with the same batches."""

    def __init__(self, nlp: Language, corpus: Callable[[Language], Iterable[Example]],
                 batcher: Callable[[Iterable[Example]], Iterable[List[Example]]], max_epochs: int,
                 resume: Optional[Dict[str, Any]] = None,
                 on_resumed: Optional[Callable[[], None]] = None) -> None:
        self.nlp, self.corpus, self.batcher, self.max_epochs = nlp, corpus, batcher, max_epochs
        self.resume, self.on_resumed = resume, on_resumed
        self.epoch, self.batches_in_epoch = 0, 0
        self.order: List[int] = []

    def position(self) -> Dict[str, Any]:
        """Where the stream is (saved with the training state)."""
        return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "order": list(self.order)}

    def __iter__(self) -> Iterator[Tuple[int, List[Example]]]:
        base: List[Example] = []
        if self.max_epochs >= 0:
            base = list(self.corpus(self.nlp))
            if not base:
                raise TrainingError("the training corpus has no documents")
            self.order = list(range(len(base)))
        skip = 0
        if self.resume is not None:
            self.epoch, skip = self.resume["epoch"], self.resume["batches_in_epoch"]
            if self.max_epochs >= 0:
                self.order = [int(i) for i in self.resume["order"]]
                if sorted(self.order) != list(range(len(base))):
                    raise TrainingError(f"cannot resume: the training corpus now has {len(base)} "
                                        f"documents, {len(self.order)} when the state was saved")
        while self.max_epochs < 1 or self.epoch != self.max_epochs:
            if self.max_epochs >= 0:
                if not skip:  # shuffling a list of indices draws what spaCy's in-place shuffle does
                    random.shuffle(self.order)
                examples: Iterable[Example] = [base[i] for i in self.order]
            else:
                examples = self.corpus(self.nlp)
            self.batches_in_epoch = 0
            for batch in self.batcher(examples):
                self.batches_in_epoch += 1
                if skip:
                    skip -= 1
                    continue
                self._resumed()
                yield self.epoch, batch
            if skip:
                raise TrainingError(f"cannot resume: epoch {self.epoch} now has "
                                    f"{self.batches_in_epoch} batches, fewer than when it was saved")
            self._resumed()  # a checkpoint at an epoch's last batch: before the next shuffle
            self.epoch += 1

    def _resumed(self) -> None:
        """The stream reached the checkpoint: give the generators their saved states."""
        if self.on_resumed is not None:
            self.on_resumed()
            self.on_resumed = None


# --------------------------------------------------------------- the run
def _bond_pipes(nlp: Language) -> List[Tuple[str, BondMoENER]]:
    return [(name, pipe) for name, pipe in nlp.components if isinstance(pipe, BondMoENER)]


def _trim_jsonl(path: Path, last_step: int) -> None:
    """Keep the records of a JSON-lines log up to `last_step` (those of the saved state)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf8").splitlines()
            if line.strip() and (srsly.json_loads(line).get("step") or 0) <= last_step]
    tmp = partial_dir(path)
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf8")
    os.replace(tmp, path)


def _config_key(config: Config) -> str:
    """The config as it decides the run (paths included, loggers' output files not)."""
    data = Config(config).copy()
    data.get("training", {}).pop("logger", None)
    return data.to_str()


def load_state(output_path: Path, config: Config) -> Dict[str, Any]:
    """The saved training state of `output_path`, checked against the config to resume."""
    path = output_path / DIR_STATE / STATE_FILE
    if not path.is_file():
        raise TrainingError(f"nothing to resume in {output_path}: no {DIR_STATE}/{STATE_FILE} "
                            "(it is written at the first evaluation; start without --resume)")
    try:
        state = srsly.read_msgpack(path)
    except Exception as err:  # msgpack raises several types for a damaged file
        raise TrainingError(f"cannot read the training state {path}: {type(err).__name__}: {err}")
    if state.get("version") != STATE_VERSION:
        raise TrainingError(f"{path}: training state version {state.get('version')!r}, "
                            f"this spacy-bond-moe writes {STATE_VERSION}")
    if state["config"] != _config_key(config):
        saved = Config().from_str(state["config"], interpolate=False)
        now = Config().from_str(_config_key(config), interpolate=False)
        changed = sorted(f"[{section}]" for section in set(saved) | set(now)
                         if saved.get(section) != now.get(section))
        raise TrainingError(f"cannot resume {output_path}: the config or its overrides differ "
                            f"from the interrupted run's in {', '.join(changed)}; resume with "
                            "the same config and overrides")
    return state


def train(
    config: Config,
    output_path: Path,
    *,
    resume: bool = False,
    use_gpu: int = -1,
    stdout: IO = sys.stdout,
    stderr: IO = sys.stderr,
) -> Path:
    """Train (or, with `resume`, continue training) a pipeline into `output_path`.

    config (Config): The training config with overrides applied, not interpolated.
    RETURNS (Path): `output_path / model-last`.
    """
    output_path = Path(output_path)
    for name in (DIR_MODEL_LAST, DIR_MODEL_BEST, DIR_STATE):
        recover_dir(output_path / name)
    saved: Optional[Dict[str, Any]] = None
    if resume:
        saved = load_state(output_path, config)
        if saved["finished"]:
            stdout.write(f"Nothing to resume: the run in {output_path} finished at step "
                         f"{saved['step']}\n")
            return output_path / DIR_MODEL_LAST
        nlp = load_model_from_config(config, auto_fill=True, validate=True)
        nlp.from_disk(output_path / DIR_STATE / "nlp")
        for name, pipe in _bond_pipes(nlp):
            pipe.load_training_state(saved["components"][name])
            pipe.resumed_at = saved["step"]
    else:
        for name in (DIR_MODEL_LAST, DIR_MODEL_BEST, DIR_STATE):
            if (output_path / name).exists():
                shutil.rmtree(output_path / name)
        nlp = init_nlp(config, use_gpu=use_gpu)
    interpolated = nlp.config.interpolate()
    if interpolated["training"]["seed"] is not None:
        fix_random_seed(interpolated["training"]["seed"])
    if saved is not None:
        for key in ("events_path", "output_file"):
            log_file = interpolated["training"]["logger"].get(key)
            if log_file and key == "events_path":
                _trim_jsonl(Path(log_file), saved["step"])
            elif log_file and Path(log_file).exists():  # spaCy's logger will not append
                old = Path(log_file)
                old.rename(old.with_name(f"{old.stem}.until-step-{saved['step']}{old.suffix}"))
    T = registry.resolve(interpolated["training"], schema=ConfigSchemaTraining)
    train_corpus, dev_corpus = resolve_dot_names(interpolated, [T["train_corpus"], T["dev_corpus"]])
    return _run(nlp, T, train_corpus, dev_corpus, _config_key(config), output_path, saved,
                stdout, stderr)


def _run(nlp: Language, T: Dict[str, Any], train_corpus: Callable, dev_corpus: Callable,
         config_key: str, output_path: Path, saved: Optional[Dict[str, Any]],
         stdout: IO, stderr: IO) -> Path:
    """spaCy's `train` + `train_while_improving`, with kill-safe checkpoints and the state."""
    optimizer: Optimizer = T["optimizer"]
    before_to_disk = create_before_to_disk_callback(T["before_to_disk"])
    before_update = T["before_update"]
    exclude, annotating = T["frozen_components"], T["annotating_components"]
    eval_frequency, patience, max_steps = T["eval_frequency"], T["patience"], T["max_steps"]
    dropouts = constant(T["dropout"]) if isinstance(T["dropout"], float) else T["dropout"]
    evaluate = create_evaluation_callback(nlp, dev_corpus, T["score_weights"])
    results: List[Tuple[float, int]] = []
    words_seen, seconds_before, start_step = 0, 0.0, 0
    if saved is not None:
        load_optimizer_state(optimizer, nlp, saved["optimizer"])
        start_step = saved["step"] + 1
        for _ in range(start_step):  # the schedules' positions (learning rate, dropout)
            optimizer.step_schedules()
            next(dropouts)  # type: ignore[call-overload]
        results = [(float(score), int(step)) for score, step in saved["results"]]
        words_seen, seconds_before = saved["words"], saved["seconds"]
    stream = BatchStream(
        nlp, train_corpus, T["batcher"], T["max_epochs"],
        resume=None if saved is None else saved["stream"],
        on_resumed=None if saved is None else (lambda: set_rng_state(saved["rng"])),  # type: ignore[index]
    )
    last, best, state_dir = (output_path / DIR_MODEL_LAST, output_path / DIR_MODEL_BEST,
                             output_path / DIR_STATE)

    def save_checkpoint(is_best: bool) -> None:
        with nlp.use_params(optimizer.averages):
            write_dir(last, before_to_disk(nlp).to_disk)
        if is_best:
            write_dir(best, lambda tmp: shutil.copytree(last, tmp))

    def save_state(step: int, finished: bool) -> None:
        state = {
            "version": STATE_VERSION, "config": config_key, "step": step, "finished": finished,
            "results": [[score, s] for score, s in results], "words": words_seen,
            "seconds": timer() - start_time, "stream": stream.position(), "rng": rng_state(),
            "optimizer": optimizer_state(optimizer, nlp),
            "components": {name: pipe.training_state() for name, pipe in _bond_pipes(nlp)},
        }

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            nlp.to_disk(tmp / "nlp")
            srsly.write_msgpack(tmp / STATE_FILE, state)

        write_dir(state_dir, write)

    output_path.mkdir(parents=True, exist_ok=True)
    stdout.write(f"Pipeline: {nlp.pipe_names}\n")
    if saved is not None:
        stdout.write(f"Resuming from step {saved['step']} (epoch {saved['stream']['epoch']}, "
                     f"best {max(results)[0] if results else 0:.4f})\n")
    with nlp.select_pipes(disable=exclude):
        log_step, finalize_logger = T["logger"](nlp, stdout, stderr)
    start_time = timer() - seconds_before
    losses: Dict[str, float] = {}
    finished, updated, step = False, False, start_step - 1
    try:
        for step, (epoch, batch) in enumerate(stream, start=start_step):
            if before_update:
                before_update(nlp, {"step": step, "epoch": epoch})
            dropout = next(dropouts)  # type: ignore[call-overload]
            for subbatch in subdivide_batch(batch, T["accumulate_gradient"]):
                nlp.update(subbatch, drop=dropout, losses=losses, sgd=False,  # type: ignore[arg-type]
                           exclude=exclude, annotates=annotating)
            for name, proc in nlp.pipeline:
                if (name not in exclude and getattr(proc, "is_trainable", False)
                        and proc.model not in (True, False, None)):  # type: ignore[attr-defined]
                    proc.finish_update(optimizer)  # type: ignore[attr-defined]
            optimizer.step_schedules()
            updated = True
            is_best: Optional[bool] = None
            score, other_scores = None, None
            if not step % eval_frequency:
                with nlp.use_params(optimizer.averages or {}):
                    score, other_scores = evaluate()
                results.append((score, step))
                is_best = score == max(results)[0]
            words_seen += sum(len(eg) for eg in batch)
            info = {"epoch": epoch, "step": step, "score": score, "other_scores": other_scores,
                    "losses": losses, "checkpoints": results,
                    "seconds": int(timer() - start_time), "words": words_seen}
            if is_best is not None:
                with nlp.select_pipes(disable=exclude):
                    update_meta(T, nlp, info)
                save_checkpoint(is_best)
                info["output_path"] = str(last)
            log_step(info if is_best is not None else None)
            if is_best is not None:
                save_state(step, finished=False)
                losses = {}
            best_score, best_neg_step = max((s, -st) for s, st in results)
            if patience and (step + best_neg_step) >= patience:
                break
            if max_steps and step >= max_steps:
                break
        finished = True
    finally:
        finalize_logger()
        if updated:  # a run stopped by the checks before its first update writes nothing
            save_checkpoint(False)
        if finished:
            save_state(step, finished=True)
    stdout.write(f"Saved pipeline to output directory {last}\n")
    return last
