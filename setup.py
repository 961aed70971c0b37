"""ltdet: long-tailed object detection methods on detectron2 0.6.

torch/torchvision and detectron2 are installed by ``make setup`` (see README,
"Installation details"): torch 2.14.1 + torchvision 0.29.1, and detectron2 0.6
from Python sources when no detectron2 is importable.
"""
from setuptools import find_packages, setup

setup(
    name="ltdet",
    version="0.1.0",
    description="Long-tailed object detection (EQL, EQLv2, ACSL, Seesaw, EFL) on detectron2",
    packages=find_packages(include=("ltdet", "ltdet.*")),
    python_requires=">=3.8",
    install_requires=[
        "torch>=1.10",
        "torchvision>=0.11",
        # lvis 0.5.3 uses np.float, removed in numpy 1.24
        "numpy>=1.21,<1.24",
        # detectron2 0.6 uses Image.LINEAR, removed in Pillow 10
        "Pillow>=8,<10",
        # newer matplotlib / contourpy need numpy>=1.25
        "matplotlib>=3.5,<3.9",
        "contourpy<1.3",
        "opencv-python-headless>=4.5,<4.11",
        # lvis pulls opencv-python; keep it on the same numpy<1.24-compatible line
        "opencv-python>=4.5,<4.11",
        # detectron2 0.6 uses pkg_resources
        "setuptools<81",
        "pycocotools>=2.0.2",
        "lvis==0.5.3",
        # the fast LVIS evaluation backend (C++ COCOeval with LVIS rules) and a fast json reader
        "faster-coco-eval==1.8.0",
        "orjson>=3.9",
        # detectron2 0.6's own pins
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "yacs>=0.1.8",
        "termcolor>=1.1",
        "tabulate",
        "cloudpickle",
        "omegaconf>=2.1",
        "hydra-core>=1.1",
        "tensorboard",
        "tqdm>4.29.0",
        "scipy",
    ],
    extras_require={"test": ["pytest"]},
)
