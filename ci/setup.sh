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
# rsync and git: gitlab-ci-local copies a job's artifacts with rsync and reads the project with git.
# And the gate over the shell scripts we ship, shellcheck (tests/unit/test_gates.py).
if [ -n "$extras" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        docker-registry skopeo umoci docker.io sbsigntool zstd efitools systemd-boot-efi \
        rsync git shellcheck
fi

# gitlab-ci-local runs the GitLab CI template in the tests, installed into .ci-tools/ from
# ci/tools/package-lock.json. Pinned to 4.63.0, the newest release whose dependencies all
# support Debian 12's Node.js 18 (later ones declare Node 20; 4.75 needs Node 22).
if [ -n "$extras" ]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
    fi
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    if [ "$node_major" -lt 18 ]; then
        echo "gitlab-ci-local needs Node.js 18 or later; node is $(node --version)" >&2
        exit 1
    fi
    mkdir -p .ci-tools
    cp ci/tools/package.json ci/tools/package-lock.json .ci-tools/
    npm ci --prefix .ci-tools --no-audit --no-fund --loglevel=error
fi
