"""Make ``detectron2._C`` importable when detectron2 was installed without its C++ ops.

detectron2 0.6 imports ``detectron2._C`` at import time (deformable conv,
rotated boxes, fast COCO evaluation) and ``collect_env_info`` queries it. A
detectron2 installed by ltdet carries the stand-in ``detectron2_c_stub.py`` as
``detectron2/_C.py`` (see ``tools/install_detectron2.py``), so nothing is needed
there. For a detectron2 installed otherwise without ops, ``install()``
registers the same stand-in as ``detectron2._C``, **only when no module of that
name can be found**; it must run before anything imports ``detectron2.layers``
(``import ltdet`` does it).
"""
import importlib.util
import os
import sys

from . import detectron2_c_stub as _stub

__all__ = ["install", "has_compiled_ops", "MissingCompiledOpError", "COMPILED_OPS", "STUB_FILE"]  # noqa: F822

MODULE_NAME = "detectron2._C"
#: The stand-in's source file (also shipped as ``detectron2/_C.py`` by ltdet's installer).
STUB_FILE = os.path.abspath(_stub.__file__)
COMPILED_OPS = _stub.COMPILED_OPS


def install() -> bool:
    """Register the stand-in as ``detectron2._C`` if no such module exists.

    Returns:
        True if ``detectron2._C`` is (now) a stand-in, False if a compiled build is used.
    """
    if MODULE_NAME not in sys.modules and importlib.util.find_spec(MODULE_NAME) is None:
        import detectron2

        spec = importlib.util.spec_from_file_location(MODULE_NAME, STUB_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module
        spec.loader.exec_module(module)
        detectron2._C = module
    return not has_compiled_ops()


def _c_module():
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    if importlib.util.find_spec(MODULE_NAME) is None:
        return None
    return importlib.import_module(MODULE_NAME)


def has_compiled_ops() -> bool:
    """True when a real (compiled) ``detectron2._C`` is in use."""
    module = _c_module()
    return module is not None and not getattr(module, "LTDET_STAND_IN", False)


def __getattr__(name):
    # the error class of the stand-in actually in use (the shipped _C.py or this package's copy)
    if name == "MissingCompiledOpError":
        module = _c_module()
        return getattr(module, "MissingCompiledOpError", _stub.MissingCompiledOpError)
    raise AttributeError(name)
