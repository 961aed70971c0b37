"""Classification losses for long-tailed detection (pure PyTorch).

Two-stage losses take ``logits[N, C+1]`` and return a mean over N; dense losses
take ``logits[M, C]`` and return a sum. Labels are 0..C-1 foreground, C background.
The loss/head contract is ``base.ClassificationLoss``; importing this package
registers every loss in ``LOSS_REGISTRY``.
"""
from .base import ClassificationLoss, InvalidHyperParameter
from .grad_stats import GradientStatistics
from .registry import LOSS_REGISTRY
from .softmax_ce import SoftmaxCELoss
from .sigmoid_bce import SigmoidBCELoss
from .eql import EQLLoss
from .eqlv2 import EQLv2Loss
from .acsl import ACSLLoss
from .seesaw import SeesawLoss
from .federated import FederatedEQLv2Loss, FederatedLoss
from .ecm import EffectiveClassMarginLoss
from .focal import FocalLoss
from .efl import EFLLoss, EQFLLoss, EQLv2FocalLoss
from .build import build_classification_loss

__all__ = [
    "ClassificationLoss",
    "InvalidHyperParameter",
    "GradientStatistics",
    "SoftmaxCELoss",
    "SigmoidBCELoss",
    "EQLLoss",
    "EQLv2Loss",
    "ACSLLoss",
    "SeesawLoss",
    "FederatedLoss",
    "FederatedEQLv2Loss",
    "EffectiveClassMarginLoss",
    "FocalLoss",
    "EFLLoss",
    "EQFLLoss",
    "EQLv2FocalLoss",
    "LOSS_REGISTRY",
    "build_classification_loss",
]
