"""The frozen teacher of BOND's self-training stage and its pseudo-labels."""
import copy
from typing import Tuple

import numpy
from thinc.api import Model

_EPS = 1e-12


def _torch_modules(model: Model):
    for node in model.walk():
        for shim in node.shims:
            torch_model = getattr(shim, "_model", None)
            if torch_model is not None and hasattr(torch_model, "state_dict"):
                yield torch_model


def snapshot(model: Model) -> Model:
    """A frozen deep copy of the student (never `Model.copy()`: it breaks transformers)."""
    teacher = copy.deepcopy(model)
    for torch_model in _torch_modules(teacher):
        torch_model.eval()
        for param in torch_model.parameters():
            param.requires_grad_(False)
    return teacher


def refresh(teacher: Model, student: Model) -> None:
    """Copy the student's current weights into the teacher, in place."""
    for src, dst in zip(student.walk(), teacher.walk()):
        for name in src.param_names:
            if src.has_param(name):
                dst.set_param(name, src.get_param(name).copy())
    for src_torch, dst_torch in zip(_torch_modules(student), _torch_modules(teacher)):
        dst_torch.load_state_dict(src_torch.state_dict())


def class_frequencies(probs: numpy.ndarray) -> numpy.ndarray:
    """f_c = sum over tokens of p_c (BOND/DEC soft-label denominator)."""
    return probs.sum(axis=0)


def soft_labels(
    probs: numpy.ndarray, freq: numpy.ndarray, power: float = 2.0, threshold: float = 0.9
) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """BOND soft labels q ∝ p^power / f and the confidence mask max_c q > threshold.

    probs (ndarray): (n, C) teacher probabilities.
    freq (ndarray): (C,) class frequencies over the corpus (`class_frequencies`).
    RETURNS (Tuple[ndarray, ndarray]): (n, C) targets and (n,) boolean keep mask.
    """
    sharpened = probs**power / (freq[None, :] + _EPS)
    targets = sharpened / (sharpened.sum(axis=1, keepdims=True) + _EPS)
    return targets, targets.max(axis=1) > threshold


def hard_labels(probs: numpy.ndarray) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """One-hot argmax targets on every token."""
    targets = numpy.zeros_like(probs)
    targets[numpy.arange(probs.shape[0]), probs.argmax(axis=1)] = 1.0
    return targets, numpy.ones((probs.shape[0],), dtype=bool)
