#!/usr/bin/env bash
# Install vitkit and what it needs on a fresh Debian machine.
#   ./install.sh         runtime (torch CPU 2.13.0 pinned first, so pip never pulls the CUDA build)
#   ./install.sh --dev   plus pytest, ruff and transformers for the tests
set -euo pipefail
cd "$(dirname "$0")"

# Fashion-MNIST comes from Debian; installing it is optional (skipped without root/apt).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
        || echo "install.sh: could not install dataset-fashion-mnist; the fashion-mnist dataset will be unavailable" >&2
fi

# torch first, pinned: any unpinned requirement would fetch the newest CUDA wheel (GBs) on this machine.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0"

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
python3 -m pip install -q -e ".${extras}"
