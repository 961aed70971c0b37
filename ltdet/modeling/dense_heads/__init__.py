"""One-stage dense detector: ATSS/FCOS assignment, IoU or centerness branch,
pluggable long-tail classification loss (EFL Sec. 4.1)."""
from . import backbone  # noqa: F401  (registers build_resnet_fpn_p6p7_backbone)
from .assigner import ATSSAssigner, CenterSamplingAssigner, centerness_targets
from .detector import LongTailATSS  # registers the LongTailATSS meta-architecture
from .head import ATSSHead

__all__ = [
    "ATSSAssigner",
    "CenterSamplingAssigner",
    "centerness_targets",
    "LongTailATSS",
    "ATSSHead",
]
