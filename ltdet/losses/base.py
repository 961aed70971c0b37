"""The contract between a classification loss and the heads, declared once.

Every ltdet loss subclasses :class:`ClassificationLoss` and states, as class
attributes, what a head needs to know about it; heads read these attributes
and never test a loss's name or type.

Conventions (shape shorthand: C foreground classes):

* labels are ``LongTensor[N]`` in 0..C-1 for foreground, C for background;
  labels outside 0..C raise ``ValueError`` naming the range;
* ``family == "two_stage"``: ``loss(logits[N, C + 1], labels[N])`` returns the
  mean over N. Column C is the background class of softmax losses (CE), and
  for sigmoid losses and Seesaw the category-agnostic *objectness* task when
  ``objectness`` is on: plain BCE with target 1 for background rows, never
  re-weighted, no statistics; scores are then p_j (1 - p_bg) (EQLv2 eq. 10).
  With objectness off, a sigmoid loss gives column C no loss;
* ``family == "dense"``: ``loss(logits[M, C], labels[M])`` returns the sum
  (background = all-zero target); the head divides by its normaliser;
* ``get_probs(logits)`` maps logits to the scores used at inference;
* statistics live in ``self.grad_stats`` (:class:`GradientStatistics`, or None
  when not collected), checkpointed buffers.

Hyper-parameters are checked when a loss is built (``check_range`` /
``check_choice``); the error names the constructor argument, which
``build_classification_loss`` translates into the config key.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["ClassificationLoss", "InvalidHyperParameter", "check_choice", "check_range"]


class InvalidHyperParameter(ValueError):
    """A loss hyper-parameter outside its valid range.

    Attributes:
        arg (str): the constructor argument.
        value: the rejected value.
        valid (str): the valid range, e.g. "> 0" or "in [0, 1]".
    """

    def __init__(self, arg: str, value, valid: str):
        self.arg, self.value, self.valid = arg, value, valid
        super().__init__(f"{arg} must be {valid}, got {value!r}")


def check_range(
    arg: str,
    value,
    *,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``float(value)`` if it is finite and inside the interval, else ``InvalidHyperParameter``.

    Args:
        arg: argument name for the message.
        value: the value to check.
        low, high: bounds (None: unbounded).
        low_open, high_open: exclude the bound itself.
    """
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    valid = " and ".join(parts) if parts else "finite"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidHyperParameter(arg, value, f"a number {valid}") from None
    ok = math.isfinite(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if not ok:
        raise InvalidHyperParameter(arg, value, valid)
    return number


def check_choice(arg: str, value, choices: Sequence):
    """``value`` if it is one of ``choices``, else ``InvalidHyperParameter``."""
    if value not in choices:
        raise InvalidHyperParameter(arg, value, f"one of {tuple(choices)}")
    return value


class ClassificationLoss(nn.Module):
    """Base of every classification loss: the loss/head contract as class attributes.

    Class attributes (a subclass sets those that differ):
        family (str): "two_stage" (logits [N, C+1], mean) or "dense" (logits [M, C], sum).
        activation (str): "softmax" or "sigmoid"; the bias of a sigmoid loss's
            columns starts at the prior probability.
        objectness_choices (tuple[bool]): the objectness settings the loss
            supports; the first is its paper's default.
        priors (tuple[str]): training-set class statistics the constructor
            takes: "image_freq" (Tensor[C], image_count / num_images) and/or
            "class_groups" (LongTensor[C], 0 rare / 1 common / 2 frequent).
        requires_grad_stats (bool): the loss computes its weights from its own
            gradient statistics, so they cannot be switched off.
        config_keys (dict[str, str]): constructor argument -> config key
            (``LTDET.*``) that sets it; the builder reads exactly these.

    Instance attributes: ``num_classes``, ``objectness``, ``grad_stats``.
    """

    family: str = "two_stage"
    activation: str = "sigmoid"
    objectness_choices: Tuple[bool, ...] = (False,)
    priors: Tuple[str, ...] = ()
    requires_grad_stats: bool = False
    config_keys: Dict[str, str] = {}

    def __init__(self, num_classes: int, objectness: bool = False):
        super().__init__()
        self.num_classes = int(check_range("num_classes", num_classes, low=1))
        if bool(objectness) not in self.objectness_choices:
            supported = ", ".join("on" if o else "off" for o in self.objectness_choices)
            raise InvalidHyperParameter("objectness", objectness, f"{supported} for {type(self).__name__}")
        self.objectness = bool(objectness)

    @property
    def extra_inputs(self) -> Tuple[str, ...]:
        """Keyword inputs of ``forward`` beyond logits and labels that the head must pass:
        "image_label_mask" (BoolTensor[N, C], LVIS image-level labels) or
        "scores" (Tensor[M], IoU targets of foreground samples)."""
        return ()

    def get_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores of ``logits`` at inference (same shape)."""
        raise NotImplementedError
