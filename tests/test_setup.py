"""Installation route, the detectron2 ops stand-in, and config loading."""
import glob
import os
import subprocess
import sys

import pytest

import ltdet  # noqa: F401  (registers the ops stand-in before detectron2.layers)
from detectron2.config import get_cfg

from ltdet import add_ltdet_config
from ltdet.compat import detectron2_ops
from ltdet.engine import resolve_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    p for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def load_config(path):
    cfg = get_cfg()
    add_ltdet_config(cfg)
    cfg.merge_from_file(path)
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, REPO) for p in CONFIGS])
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.OUTPUT_DIR != "./output", "each config names its own OUTPUT_DIR"


def test_demo_and_test_commands_in_readme_and_ci():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert "make demo" in readme and "make test" in readme
    with open(os.path.join(REPO, ".ci", "run")) as f:
        assert "make test" in f.read()


def test_device_falls_back_to_cpu_without_cuda():
    cfg = load_config(os.path.join(REPO, "configs", "synthetic", "faster_rcnn_softmax.yaml"))
    assert cfg.MODEL.DEVICE == "cuda"
    resolve_device(cfg)
    import torch

    assert cfg.MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(detectron2_ops.has_compiled_ops(), reason="a compiled detectron2 is installed")
def test_stand_in_answers_collect_env_and_names_missing_ops():
    import inspect

    import detectron2._C as C
    import detectron2.layers.rotated_boxes as rotated_boxes
    from detectron2.utils.collect_env import collect_env_info

    assert getattr(C, "LTDET_STAND_IN", False)
    assert C.has_cuda() is False
    assert "no compiled ops" in collect_env_info()
    if "_C." not in inspect.getsource(rotated_boxes):
        pytest.skip("this detectron2 calls its compiled ops through torch.ops, not detectron2._C")
    import torch

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(detectron2_ops.MissingCompiledOpError, match="box_iou_rotated"):
        rotated_boxes.pairwise_iou_rotated(boxes, boxes)


def test_a_real_compiled_module_is_left_alone(tmp_path):
    """If detectron2._C exists, install() must not replace it."""
    code = (
        "import sys, types, importlib.machinery\n"
        "import detectron2\n"
        "real = types.ModuleType('detectron2._C')\n"
        "real.__spec__ = importlib.machinery.ModuleSpec('detectron2._C', None)\n"
        "sys.modules['detectron2._C'] = real\n"
        "from ltdet.compat import detectron2_ops\n"
        "assert detectron2_ops.install() is False\n"
        "import ltdet\n"
        "assert sys.modules['detectron2._C'] is real\n"
        "assert detectron2_ops.has_compiled_ops()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


@pytest.mark.skipif(detectron2_ops.has_compiled_ops(), reason="a compiled detectron2 is installed")
def test_detectron2_imports_without_ltdet():
    """The installed detectron2 carries the stand-in: no 'import ltdet first' rule for user scripts."""
    code = (
        "import sys\n"
        "import detectron2.modeling, detectron2.layers\n"
        "from detectron2.utils.collect_env import collect_env_info\n"
        "import detectron2._C as C\n"
        "assert C.LTDET_STAND_IN and 'no compiled ops' in collect_env_info()\n"
        "assert not any(m == 'ltdet' or m.startswith('ltdet.') for m in sys.modules), 'ltdet was imported'\n"
        "print(C.__file__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    with open(out.stdout.strip().splitlines()[-1]) as f, open(detectron2_ops.STUB_FILE) as g:
        assert f.read() == g.read(), "the shipped _C.py is ltdet's stand-in"


def test_install_script_leaves_importable_detectron2_alone():
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "install_detectron2.py")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "leaving it alone" in out.stdout
