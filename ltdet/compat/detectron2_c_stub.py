"""Stand-in for ``detectron2._C`` in a detectron2 installed without its C++ ops.

This file is self-contained (it imports nothing from ltdet): ltdet's installer
(``tools/install_detectron2.py``) ships it inside the detectron2 wheel it builds
from the Python sources, as ``detectron2/_C.py``, so ``import detectron2`` works
in any script, with or without ltdet; ``ltdet.compat.detectron2_ops`` loads the
same file as ``detectron2._C`` for a detectron2 installed otherwise without ops.

Everything ltdet uses goes through torchvision or pure torch (ROIAlign, NMS,
box IoU, LVIS evaluation). The compiled-only ops in ``COMPILED_OPS``
(deformable conv, rotated boxes / ROIAlign, the fast C++ COCOeval) raise
``MissingCompiledOpError`` naming the op; ``collect_env_info`` gets truthful
answers (no compiled ops).
"""

LTDET_STAND_IN = True

# ops detectron2 0.6 calls on ``detectron2._C``; none is needed by ltdet's models
COMPILED_OPS = (
    "box_iou_rotated",
    "deform_conv_forward",
    "deform_conv_backward_input",
    "deform_conv_backward_filter",
    "modulated_deform_conv_forward",
    "modulated_deform_conv_backward",
    "roi_align_rotated_forward",
    "roi_align_rotated_backward",
    "InstanceAnnotation",
    "COCOevalEvaluateImages",
    "COCOevalAccumulate",
)


class MissingCompiledOpError(RuntimeError):
    """A detectron2 op that exists only in the compiled extension was called."""


def _missing(name):
    def op(*args, **kwargs):
        raise MissingCompiledOpError(
            f"detectron2 op '{name}' needs detectron2's compiled extension (detectron2._C), "
            "which this installation does not have (detectron2 was installed from its Python "
            "sources, e.g. by ltdet's tools/install_detectron2.py). Install a full build of "
            "detectron2 (https://detectron2.readthedocs.io/en/latest/tutorials/install.html) "
            "into this environment; ltdet then uses it unchanged."
        )

    op.__name__ = name
    return op


def get_compiler_version():
    return "none (ltdet stand-in for detectron2._C: no compiled ops)"


def get_cuda_version():
    return "none (no compiled ops)"


def has_cuda():
    return False


for _name in COMPILED_OPS:
    globals()[_name] = _missing(_name)
del _name
