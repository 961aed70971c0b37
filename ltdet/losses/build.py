"""Build the loss named by ``LTDET.CLS_LOSS.NAME`` from a config, honouring or rejecting every key.

The loss class declares what it reads (``config_keys``) and what it needs
(``priors``, ``objectness_choices``, ``requires_grad_stats``, see
``base.py``); this module turns a config into its constructor call and
refuses configurations that would silently run something else:

* a key of a namespace the loss reads (e.g. ``LTDET.FOCAL.*`` for EQFL, or
  ``LTDET.EQLV2.*`` for EQLv2-focal), set to a non-default value, that the
  loss does not use; keys of namespaces the loss never reads stay inert (as
  detectron2's own unused keys);
* ``LTDET.CLS_LOSS.OBJECTNESS`` on/off that the loss does not support;
  ``LTDET.CLS_LOSS.PRIOR_PROB`` changed for a softmax loss (no sigmoid columns);
* ``LTDET.GRAD_STATS.ENABLED False`` for a loss whose weights come from its
  statistics (EQLv2, EFL, EQFL, EQLv2-focal);
* hyper-parameters outside their range (the error names the config key).

Reads only attributes of the yacs config; the defaults it compares with come
from ``ltdet.config`` (imported when a loss is built).
"""
from typing import Any, Callable, Dict, Mapping, Optional, Union

from .base import ClassificationLoss, InvalidHyperParameter
from .registry import LOSS_REGISTRY

__all__ = ["LOSS_REGISTRY", "build_classification_loss", "loss_class", "resolve_objectness"]

OBJECTNESS_KEY = "LTDET.CLS_LOSS.OBJECTNESS"
PRIOR_PROB_KEY = "LTDET.CLS_LOSS.PRIOR_PROB"
GRAD_STATS_KEY = "LTDET.GRAD_STATS.ENABLED"

Priors = Mapping[str, Any]


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _normalise(value):
    return tuple(value) if isinstance(value, list) else value


def loss_class(cfg, family: Optional[str] = None):
    """The registered class of ``LTDET.CLS_LOSS.NAME`` (ValueError naming the choices)."""
    try:
        return LOSS_REGISTRY.get(cfg.LTDET.CLS_LOSS.NAME, family)
    except KeyError as e:
        raise ValueError(e.args[0]) from None


def resolve_objectness(cfg, cls) -> bool:
    """``LTDET.CLS_LOSS.OBJECTNESS`` for ``cls``: "auto" is the paper's default."""
    value = cfg.LTDET.CLS_LOSS.OBJECTNESS
    if value == "auto":
        return cls.objectness_choices[0]
    if value not in ("on", "off"):
        raise ValueError(f"{OBJECTNESS_KEY} must be 'auto', 'on' or 'off', got {value!r}")
    if (value == "on") not in cls.objectness_choices:
        supported = ", ".join("on" if o else "off" for o in cls.objectness_choices)
        raise ValueError(
            f"{OBJECTNESS_KEY} = {value!r} is not supported by loss {cls.name!r} "
            f"({cls.__name__}); it supports: {supported}"
        )
    return value == "on"


def _check_keys(cfg, cls) -> None:
    """Raise for every non-default key the loss would ignore (module docstring)."""
    from ltdet.config import ltdet_default

    used = set(cls.config_keys.values())
    namespaces = {key.rpartition(".")[0] for key in used}
    for namespace in sorted(namespaces):
        for leaf in _get(cfg, namespace):
            key = f"{namespace}.{leaf}"
            value = _get(cfg, key)
            if key in used or _normalise(value) == _normalise(ltdet_default(key)):
                continue
            raise ValueError(
                f"{key} = {value!r} is not used by loss {cls.name!r} ({cls.__name__}); "
                f"it reads {sorted(used)}. Leave {key} at its default "
                f"{ltdet_default(key)!r} or choose a loss that uses it."
            )
    prior = cfg.LTDET.CLS_LOSS.PRIOR_PROB
    if cls.activation != "sigmoid" and prior != ltdet_default(PRIOR_PROB_KEY):
        raise ValueError(
            f"{PRIOR_PROB_KEY} = {prior!r} is not used by loss {cls.name!r}: it has no sigmoid "
            "column whose bias the prior initialises"
        )
    if cls.requires_grad_stats and not cfg.LTDET.GRAD_STATS.ENABLED:
        raise ValueError(
            f"{GRAD_STATS_KEY} = False, but loss {cls.name!r} computes its weights from its own "
            "gradient statistics, which therefore cannot be switched off"
        )


def build_classification_loss(
    cfg,
    num_classes: int,
    *,
    family: Optional[str] = None,
    priors: Union[None, Priors, Callable[[], Priors]] = None,
) -> ClassificationLoss:
    """Build the loss named by ``cfg.LTDET.CLS_LOSS.NAME``.

    Args:
        cfg: a config with ltdet's keys (see ``ltdet.config``).
        num_classes: C, number of foreground classes.
        family: "two_stage" or "dense" to reject a loss of the other family.
        priors: training-set class statistics for the losses that declare
            ``priors`` ("image_freq": Tensor[C], "class_groups": LongTensor[C]),
            as a mapping or a zero-argument callable returning one (called only
            when the loss needs priors).
    Returns:
        the loss module.
    Raises:
        ValueError: unknown name, wrong family, a key that would be ignored,
            an unsupported objectness setting or an out-of-range value (named).
    """
    cls = loss_class(cfg, family)
    objectness = resolve_objectness(cfg, cls)
    _check_keys(cfg, cls)
    kwargs: Dict[str, Any] = {arg: _get(cfg, key) for arg, key in cls.config_keys.items()}
    if len(cls.objectness_choices) > 1:
        kwargs["objectness"] = objectness
    if not cls.requires_grad_stats:
        kwargs["collect_stats"] = bool(cfg.LTDET.GRAD_STATS.ENABLED)
    if cls.priors:
        if priors is None:
            raise ValueError(f"loss {cls.name!r} needs the training set's {list(cls.priors)}")
        values = priors() if callable(priors) else priors
        kwargs.update({name: values[name] for name in cls.priors})
    try:
        return cls(num_classes, **kwargs)
    except InvalidHyperParameter as e:
        keys = {"objectness": OBJECTNESS_KEY, "collect_stats": GRAD_STATS_KEY, **cls.config_keys}
        key = keys.get(e.arg, e.arg)
        raise ValueError(f"{key} = {e.value!r} is out of range for loss {cls.name!r}: it must be {e.valid}") from e
