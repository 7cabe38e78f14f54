#!/usr/bin/env bash
# Install, build and test frankenpy from a fresh Debian 12 machine (as root). CI runs this.
#
# Usage: bash scripts/test.sh
# Steps: install dependencies, install the package (editable), build the native targets with
# CMake and run their tests (ctest), then run the Python tests (pytest).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

export PIP_ROOT_USER_ACTION=ignore
export PIP_DISABLE_PIP_VERSION_CHECK=1

section_start=$SECONDS
section() {
    if [ -n "${section_name:-}" ]; then
        echo "---- ${section_name}: ok ($((SECONDS - section_start)) s)"
    fi
    section_name="$1"
    section_start=$SECONDS
    printf '\n==== %s ====\n' "$section_name"
}

trap 'echo "---- ${section_name:-?}: FAILED" >&2' ERR

section "install dependencies (scripts/install_deps.sh)"
bash scripts/install_deps.sh

section "install frankenpy (pip install -e .)"
python3 -m pip install -q -e .

section "build native targets (cmake)"
cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release
cmake --build build/cmake -j2

section "native tests (ctest)"
ctest --test-dir build/cmake --output-on-failure

section "lint (ruff)"
python3 -m ruff check frankenpy tests scripts csrc/build_native.py

section "python tests (pytest)"
python3 -m pytest -q tests

section "done"
echo "all steps passed"
