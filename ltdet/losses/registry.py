"""The registry of classification losses: ``LTDET.CLS_LOSS.NAME`` -> loss class.

Each loss file registers its class with ``@LOSS_REGISTRY.register("name")``;
the lists of two-stage and dense losses (configs, tests, benchmarks) come from
here. Pure Python: no detectron2 import.
"""
from typing import Dict, Iterator, Optional, Tuple, Type

__all__ = ["LOSS_REGISTRY", "LossRegistry"]


class LossRegistry:
    """Name -> :class:`~ltdet.losses.base.ClassificationLoss` subclass, in registration order."""

    def __init__(self):
        self._classes: Dict[str, Type] = {}

    def register(self, name: str):
        """Class decorator: register a loss class under ``name`` (sets ``cls.name``)."""

        def deco(cls):
            if name in self._classes:
                raise KeyError(f"a loss named {name!r} is already registered ({self._classes[name].__name__})")
            if getattr(cls, "family", None) not in ("two_stage", "dense"):
                raise ValueError(f"{cls.__name__}.family must be 'two_stage' or 'dense'")
            cls.name = name
            self._classes[name] = cls
            return cls

        return deco

    def get(self, name: str, family: Optional[str] = None) -> Type:
        """The class registered as ``name``; KeyError naming the choices (of ``family``)."""
        cls = self._classes.get(name)
        if cls is None or (family is not None and cls.family != family):
            kind = f"{family.replace('_', '-')} " if family else ""
            raise KeyError(
                f"LTDET.CLS_LOSS.NAME={name!r} is not a {kind}loss; choose one of {self.names(family)}"
            )
        return cls

    def names(self, family: Optional[str] = None) -> Tuple[str, ...]:
        """Registered names, all or those of one ``family`` ("two_stage" / "dense")."""
        return tuple(n for n, c in self._classes.items() if family is None or c.family == family)

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[Tuple[str, Type]]:
        return iter(list(self._classes.items()))


LOSS_REGISTRY = LossRegistry()
