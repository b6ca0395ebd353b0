# kairos-build as a container image:
#   docker build -t kairos-build .
#   docker run --privileged -v "$PWD/build:/build" -v kairos-cache:/var/cache/kairos-build \
#       kairos-build iso --flavor debian
# --privileged (or --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt
# apparmor=unconfined): the build runs as root and its sandbox makes mount and PID namespaces,
# mounts /proc and tmpfs inside them and pivots into the tree, which docker's default
# capabilities, seccomp and AppArmor profiles refuse (docs/ci.md).
ARG BASE=debian:bookworm
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# A plain (not editable) install: setup.py copies flavors/, overlays/ and templates/ into the
# package, so the source is not needed afterwards.
COPY . /tmp/kairos-build-src
RUN python3 -m venv /opt/kairos-build/.venv \
    && /opt/kairos-build/.venv/bin/python -m pip install -q --no-cache-dir /tmp/kairos-build-src \
    && rm -rf /tmp/kairos-build-src
ENV PATH=/opt/kairos-build/.venv/bin:$PATH

# The host programs the build drives (mmdebstrap, bubblewrap, mksquashfs, grub, dracut's
# helpers, QEMU and OVMF for `kairos-build boot`, ...), installed by the tool itself with apt.
RUN kairos-build install-deps \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# The cache (bases, conversions, squashfs images): mount a volume here to keep it between runs.
ENV KAIROS_BUILD_CACHE=/var/cache/kairos-build
# The default --output is `build`, relative to the working directory: /build, a volume to mount.
WORKDIR /
ENTRYPOINT ["kairos-build"]
CMD ["--help"]
