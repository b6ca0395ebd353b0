"""What a build leaves beside its artifacts: checksums and atomic names, the build record and
manifest, the SBOM, the artifact cache and the versions of the tools it drove."""
