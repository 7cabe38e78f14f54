#!/usr/bin/env bash
# Set up frankenpy on a fresh Debian 12 machine (as root) and run the main job: the bundled demo,
# a PHP app whose page shows a counter kept by a background worker, served on
# http://127.0.0.1:8080/ by the native HTTP server from the embedded default config
# (frankenpy/demo/frankenpy.toml; `--server wsgi` picks waitress).
# Stops gracefully on Ctrl-C or SIGTERM.  Extra arguments go to `frankenpy` (e.g. `run --config F`).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
bash scripts/install_deps.sh
python3 -m pip install -q .
cd /  # run the installed package, not the source tree
exec python3 -m frankenpy "$@"
