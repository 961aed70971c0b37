#!/usr/bin/env bash
# Run ltdet's test suite against another detectron2 (e.g. its main branch), built with its compiled ops.
#
#   dev/test_with_detectron2.sh DETECTRON2_SOURCE_DIR [WORK_DIR] [pytest args...]
#
# DETECTRON2_SOURCE_DIR: a detectron2 checkout (git clone https://github.com/facebookresearch/detectron2).
# The wheel is built with the C++ ops on the CPU (gcc and the Python headers; ~8 min on 2 cores) and
# unpacked into a venv at WORK_DIR (default /tmp/ltdet-d2) that sees this repo's .venv (torch, lvis, ...)
# behind it, so the other detectron2 shadows the 0.6 one in .venv without touching .venv.
set -euo pipefail
src=$(cd "$1" && pwd)
work=${2:-/tmp/ltdet-d2}
shift $(( $# >= 2 ? 2 : 1 ))
repo=$(cd "$(dirname "$0")/.." && pwd)
site=$("$repo/.venv/bin/python" -c "import site; print(site.getsitepackages()[0])")
python=$("$repo/.venv/bin/python" -c "import sys; print(f'python{sys.version_info[0]}.{sys.version_info[1]}')")
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  "$repo/.venv/bin/python" -m venv --without-pip "$work/venv"
  echo "import site; site.addsitedir('$site')" > "$work/venv/lib/$python/site-packages/zz_ltdet_venv.pth"
fi
rm -rf "$work/dist"
MAX_JOBS=${MAX_JOBS:-2} "$work/venv/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation "$src" -w "$work/dist"
target="$work/venv/lib/$python/site-packages"
rm -rf "$target/detectron2" "$target"/detectron2-*.dist-info
"$work/venv/bin/python" -m zipfile -e "$work"/dist/detectron2-*.whl "$target"
"$work/venv/bin/python" -c "import detectron2, detectron2._C; print('detectron2', detectron2.__file__)"
cd "$repo"
exec "$work/venv/bin/python" -m pytest tests -q "$@"
