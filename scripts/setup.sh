#!/usr/bin/env bash
# Install what hkfs needs on a fresh Debian machine: the FUSE libraries and
# attr tools (when running as root and they are missing), then the package
# into this checkout's own virtual environment (.venv), so that two checkouts
# on one machine never test each other's code. Idempotent: a second run
# installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
ldconfig -p 2>/dev/null | grep -q 'libfuse.so.2' || need_apt+=(libfuse2)
ldconfig -p 2>/dev/null | grep -q 'libfuse3.so.3' || need_apt+=(libfuse3-3)
command -v getfattr >/dev/null 2>&1 || need_apt+=(attr)
command -v vim >/dev/null 2>&1 || need_apt+=(vim-tiny)
command -v zsh >/dev/null 2>&1 || need_apt+=(zsh)          # hk shell-init zsh is tested
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)      # tests only: exports from views (docs/mount.md)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)  # vecindex's C search kernel (optional build, setup.py)
[ -f /usr/include/sqlite3ext.h ] || need_apt+=(libsqlite3-dev)  # hkfs/core/_aggregates.c (optional build)
command -v fio >/dev/null 2>&1 || need_apt+=(fio)              # tests only: outside exercisers (tests/test_outside_tools.py)
command -v stress-ng >/dev/null 2>&1 || need_apt+=(stress-ng)
command -v dbench >/dev/null 2>&1 || need_apt+=(dbench)
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${need_apt[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        # Another apt (unattended-upgrades, a second checkout's setup) may hold the lock:
        # wait up to 10 minutes for it instead of failing at once.
        wait_lock=(-o DPkg::Lock::Timeout=600)
        apt-get "${wait_lock[@]}" update -qq
        apt-get "${wait_lock[@]}" install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: missing ${need_apt[*]}; install them (sudo apt-get install ${need_apt[*]})" >&2
    fi
fi

VENV=${VENV:-.venv}
BASE_PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    # System site-packages are visible so a machine that already has numpy,
    # scikit-learn etc. does not download them again.
    "$BASE_PY" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
extras=${HKFS_EXTRAS:-test,fast}   # fast: numba, the compiled vecindex search (optional)
# The modules each extra must make importable (a missing one reinstalls).
need_mods="vecindex, mfusepy, sklearn, click, tqdm, pytest, hypothesis, pytest_timeout, memory_profiler"
case ",$extras," in *,fast,*) need_mods+=", numba" ;; esac
case ",$extras," in *,dev,*) need_mods+=", ruff" ;; esac
# The C parts are built by pip (setup.py); rebuild when a source is newer than its library
# (a checkout that pulled a kernel change) or when a compiler is there and it was never built.
stale_kernel=0
if command -v cc >/dev/null 2>&1; then
    for src in vecindex/_csearch.c hkfs/fuse/_fill.c hkfs/core/_aggregates.c; do
        so=$(ls "${src%.c}"*.so 2>/dev/null | head -n1 || true)
        if [ -z "$so" ] || [ "$src" -nt "$so" ]; then stale_kernel=1; fi
    done
fi
here=$(pwd -P)
where=$("$PY" -c 'import hkfs, os; print(os.path.dirname(os.path.dirname(os.path.realpath(hkfs.__file__))))' 2>/dev/null || true)
if [ "$where" != "$here" ] || [ "${HKFS_REINSTALL:-0}" = 1 ] || [ "$stale_kernel" = 1 ] \
   || ! "$PY" -c "import $need_mods" >/dev/null 2>&1; then
    "$PY" -m pip install -q --disable-pip-version-check -e ".[$extras]"
fi
