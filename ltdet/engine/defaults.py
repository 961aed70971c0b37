"""Small trainer helpers shared by train_net.py, tools and tests."""
import logging

import torch

__all__ = ["build_config", "resolve_device", "insert_before"]

logger = logging.getLogger(__name__)


def resolve_device(cfg):
    """Use ``cfg.MODEL.DEVICE`` if available, otherwise fall back to the CPU.

    Configs keep detectron2's default ``"cuda"`` so they run unchanged on a GPU;
    on a machine without CUDA the model is built on the CPU, with no config edit.
    """
    device = cfg.MODEL.DEVICE
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using cpu", device)
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        if was_frozen:
            cfg.freeze()
    return cfg


def build_config(config_file, opts=(), eval_only=False):
    """The frozen ltdet config of a command line (train_net.py and the tools).

    detectron2's defaults plus ``add_ltdet_config``, then ``config_file`` and
    the ``KEY VALUE`` overrides ``opts``; the device falls back to the CPU
    without CUDA, the datasets of ``LTDET.DATASETS.REGISTER`` are registered
    (only the test splits when ``eval_only``) and NUM_CLASSES is checked
    against them.
    """
    from detectron2.config import get_cfg

    from ltdet.config import add_ltdet_config
    from ltdet.data.custom import check_num_classes, register_from_config

    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    resolve_device(cfg)
    register_from_config(cfg, eval_only=eval_only)
    check_num_classes(cfg)
    cfg.freeze()
    return cfg


def insert_before(hooks, new_hook, before_types):
    """Insert ``new_hook`` before the first hook that is an instance of ``before_types``.

    Args:
        hooks (list[HookBase]): detectron2's default hook list (may contain None).
        new_hook (HookBase): hook to insert.
        before_types (tuple[type]): hook classes that must run after ``new_hook``.
    Returns:
        list[HookBase]: the new list.
    """
    for idx, hook in enumerate(hooks):
        if isinstance(hook, before_types):
            return hooks[:idx] + [new_hook] + hooks[idx:]
    return hooks + [new_hook]
