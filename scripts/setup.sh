#!/usr/bin/env bash
# Install what hkfs needs on a fresh Debian machine: the FUSE libraries and
# attr tools (when running as root and they are missing), then the package.
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse.so.2' || need_apt+=(libfuse2)
ldconfig -p 2>/dev/null | grep -q 'libfuse3.so.3' || need_apt+=(libfuse3-3)
command -v getfattr >/dev/null 2>&1 || need_apt+=(attr)
command -v vim >/dev/null 2>&1 || need_apt+=(vim-tiny)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${need_apt[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: missing ${need_apt[*]}; install them (sudo apt-get install ${need_apt[*]})" >&2
    fi
fi

PY=${PYTHON:-python3}
extras=${HKFS_EXTRAS:-test}
if ! "$PY" -c "import hkfs, vecindex, mfusepy, sklearn, click, tqdm, pytest, hypothesis, pytest_timeout" >/dev/null 2>&1 \
   || [ "${HKFS_REINSTALL:-0}" = 1 ]; then
    "$PY" -m pip install -q --disable-pip-version-check -e ".[$extras]"
fi
