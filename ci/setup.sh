#!/usr/bin/env bash
# Take a clean clone on a Debian/Ubuntu host (run as root) to a working kairos-build:
# a virtualenv in .venv with the package, then the host tools it drives.
#   bash ci/setup.sh         the tool
#   bash ci/setup.sh --dev   the tool plus test and lint dependencies
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"

# Debian's python3 lacks venv/ensurepip until python3-venv is installed.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$extras" ]; then
    .venv/bin/python -m pip install -q -e ".$extras"
else
    .venv/bin/python -m pip install -q .
fi
.venv/bin/kairos-build install-deps

# The tests' independent peers: a real registry and docker daemon, and the tools that push
# images and unpack them for comparison (zstd: to read an initramfs; efitools: the reference
# for genkey's .esl and .auth files; systemd-boot-efi: a real EFI binary for sbsign to sign).
if [ -n "$extras" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        docker-registry skopeo umoci docker.io sbsigntool zstd efitools systemd-boot-efi
fi
