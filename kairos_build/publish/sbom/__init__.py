"""The SBOM: the packages of a converted rootfs, their licences, as an SPDX 2.3 document."""
