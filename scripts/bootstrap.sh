#!/usr/bin/env bash
# Builds .venv from uv.lock with a Python >= 3.12. Safe to run again: uv only changes what differs.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
            # Resolve pyenv shims and symlinks to the real interpreter path.
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    local root
    root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for candidate in $(ls -d "$root"/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -V -r); do
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

PYTHON=$(find_python) || {
    echo "error: the portal needs Python >= 3.12; none was found on PATH (python3.13, python3.12, python3)" >&2
    echo "       nor in pyenv's versions folder. Install one (e.g. 'pyenv install 3.13') and run again." >&2
    exit 1
}

export UV_PYTHON_DOWNLOADS=never
UV_VERSION=0.13.8
if [ ! -x .tools/bin/uv ] || [ "$(.tools/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    echo "==> installing uv $UV_VERSION into .tools/ (with $PYTHON)"
    rm -rf .tools
    "$PYTHON" -m venv .tools
    .tools/bin/pip install --quiet "uv==$UV_VERSION" 2>/dev/null \
        || .tools/bin/pip install "uv==$UV_VERSION"
fi

# The optional `libvirt` group (libvirt-python) builds against libvirt-dev: include it whenever
# that library is there, so this exact sync and scripts/test.sh never undo each other.
groups=()
if pkg-config --exists libvirt 2>/dev/null; then
    groups+=(--group libvirt)
fi

echo "==> syncing .venv from uv.lock ($("$PYTHON" -V))${groups:+ with ${groups[*]}}"
UV_PROJECT_ENVIRONMENT=.venv .tools/bin/uv sync --frozen --compile-bytecode --python "$PYTHON" --quiet ${groups[@]+"${groups[@]}"}
mkdir -p var
.venv/bin/python scripts/compile_messages.py
