#!/usr/bin/env python
"""Install detectron2 0.6's Python sources into the running interpreter's environment.

detectron2 is not on PyPI under its own name. ``pb1-detectron2==0.6`` is an sdist
whose Python sources equal detectron2's v0.6 tag but which lacks the C++ sources
(``detectron2/layers/csrc``), so ``pip install pb1-detectron2`` fails while
building the extension. This script:

1. does nothing if ``import detectron2`` already works (a full build is respected),
   unless it is an earlier install of this script without the ops stand-in, which
   is replaced;
2. downloads the sdist with pip (package registry only), checks its sha256;
3. packs the ``detectron2`` package (Python files and model-zoo configs) into a
   pure-Python wheel named ``detectron2``, adds ltdet's stand-in for the compiled
   ops as ``detectron2/_C.py`` (``ltdet/compat/detectron2_c_stub.py``: every op
   ltdet needs goes through torchvision, the others raise an error naming the
   op), and installs it with pip, so that ``pip show detectron2`` /
   ``pip uninstall detectron2`` work as usual and ``import detectron2`` works in
   any script, without importing ltdet first.

Usage: ``python tools/install_detectron2.py [--cache DIR]``
"""
import argparse
import base64
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUB = os.path.join(REPO, "ltdet", "compat", "detectron2_c_stub.py")
#: Marker in the wheel's METADATA: an install of this script (which may be upgraded).
INSTALLED_BY = "installed by ltdet"
SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
WHEEL_TAG = "py3-none-any"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def download_sdist(dest: str) -> str:
    """Download the sdist into ``dest`` and return its path (sha256 checked)."""
    path = os.path.join(dest, f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz")
    if not os.path.isfile(path):
        # --no-build-isolation: pip only reads the sdist's metadata, which
        # imports torch (already installed); nothing is built.
        subprocess.check_call(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-build-isolation", "--no-binary", ":all:",
             f"{SDIST_NAME}=={SDIST_VERSION}", "-d", dest]
        )
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    if sha != SDIST_SHA256:
        raise RuntimeError(f"{path}: sha256 {sha} does not match the expected {SDIST_SHA256}")
    return path


def build_wheel(sdist: str, out_dir: str) -> str:
    """Pack the sdist's ``detectron2`` package into a pure-Python wheel."""
    prefix = f"{SDIST_NAME}-{SDIST_VERSION}/"
    dist_info = f"detectron2-{SDIST_VERSION}.dist-info"
    wheel = os.path.join(out_dir, f"detectron2-{SDIST_VERSION}-{WHEEL_TAG}.whl")
    record = []
    with tarfile.open(sdist) as tar, zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for member in tar.getmembers():
            if not (member.isfile() and member.name.startswith(prefix + "detectron2/")):
                continue
            arcname = member.name[len(prefix):]
            if "/csrc/" in arcname:
                continue
            data = tar.extractfile(member).read()
            zf.writestr(arcname, data)
            record.append(f"{arcname},{_record_hash(data)},{len(data)}")
        with open(STUB, "rb") as f:
            data = f.read()
        zf.writestr("detectron2/_C.py", data)
        record.append(f"detectron2/_C.py,{_record_hash(data)},{len(data)}")
        meta = {
            "METADATA": (
                "Metadata-Version: 2.1\nName: detectron2\n"
                f"Version: {SDIST_VERSION}\n"
                "Summary: detectron2 0.6 Python sources (from the pb1-detectron2 sdist), "
                f"with a stand-in for the compiled ops (detectron2/_C.py); {INSTALLED_BY}\n"
            ),
            "WHEEL": (
                "Wheel-Version: 1.0\nGenerator: ltdet-install-detectron2\n"
                f"Root-Is-Purelib: true\nTag: {WHEEL_TAG}\n"
            ),
            "top_level.txt": "detectron2\n",
        }
        for name, text in meta.items():
            data = text.encode()
            zf.writestr(f"{dist_info}/{name}", data)
            record.append(f"{dist_info}/{name},{_record_hash(data)},{len(data)}")
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="directory to keep the downloaded sdist")
    args = parser.parse_args(argv)
    upgrade = False
    if importlib.util.find_spec("detectron2") is not None:
        import detectron2

        where = os.path.dirname(detectron2.__file__)
        if not (_installed_by_this_script() and not os.path.isfile(os.path.join(where, "_C.py"))):
            print(f"detectron2 {detectron2.__version__} already importable at {where}; leaving it alone")
            return 0
        print(f"upgrading ltdet's earlier detectron2 install at {where} (adds the ops stand-in _C.py)")
        upgrade = True
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        os.makedirs(cache, exist_ok=True)
        sdist = download_sdist(cache)
        wheel = build_wheel(sdist, tmp)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", wheel]
        subprocess.check_call(cmd + (["--force-reinstall"] if upgrade else []))
    print("installed detectron2 0.6 Python sources with a stand-in for the compiled ops (detectron2/_C.py)")
    return 0


def _installed_by_this_script() -> bool:
    """Whether the installed detectron2 distribution is a wheel built by this script."""
    from importlib import metadata

    try:
        return INSTALLED_BY in (metadata.distribution("detectron2").metadata.get("Summary") or "")
    except metadata.PackageNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(main())
