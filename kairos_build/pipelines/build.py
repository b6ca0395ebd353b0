"""`kairos-build build` (and one verb per format): resolve the base -> convert it -> check it
for each artifact's boot mode -> export the artifacts -> publish them. Read top to bottom."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kairos_build.check.rules import require_mode
from kairos_build.config.buildconfig import BuildConfig
from kairos_build.convert.convert import conversion_tools
from kairos_build.convert.stages import (
    convert_base,
    framework_files_digest,
    resolve_config_base,
)
from kairos_build.core.cache import Cache
from kairos_build.core.errors import InputError, MissingToolError
from kairos_build.core.log import log, step
from kairos_build.core.reproducible import build_epoch
from kairos_build.core.tools import require_file, require_tool
from kairos_build.exporters.base import ExportContext, Exporter, get_exporter
from kairos_build.publish import artifact_cache
from kairos_build.publish.files import (
    Artifact,
    check_output_dir,
    discard,
    partial_path,
    publish_directory,
    publish_file,
    remove_stale_partials,
)
from kairos_build.publish.records import BuildFacts, write_records
from kairos_build.publish.sbom.packages import installed_packages
from kairos_build.source.refs import parse_ref
from kairos_build.source.resolve import base_tools
from kairos_build.trusted import uki, verity
from kairos_build.trusted.keys import load_keys


def build(config: BuildConfig, formats: list[str]) -> list[Artifact]:
    """The artifacts of `formats`, written to config.output_dir."""
    exporters = [get_exporter(name) for name in formats]
    for exporter in exporters:
        boot_mode(config, exporter)  # refuses a format without the asked boot mode before any work
    check_host_tools(config, exporters)
    if config.keys is not None and any(boot_mode(config, e) == "trusted" for e in exporters):
        load_keys(config.keys, config.cache_dir)  # a missing or open key stops us before any work
    check_output_dir(config.output_dir)
    remove_stale_partials(config.output_dir)
    cache = Cache(config.cache_dir)
    cache.prune_partial()

    base = resolve_config_base(config, cache)
    rootfs, rootfs_key = convert_base(config, base, cache)
    with step("checking requirements"):
        for exporter in exporters:
            require_mode(rootfs, boot_mode(config, exporter), f"the {exporter.name} artifact")

    with step("listing the image's packages"):
        database, packages = installed_packages(rootfs)
        log.info("  %d packages in its %s database", len(packages), database)
    facts = BuildFacts(base, database, packages, list(cache.used), framework_files_digest(config))

    artifacts = []
    with cache.workdir() as work:
        context = ExportContext(config, rootfs, rootfs_key, cache, work, epoch=build_epoch(rootfs))
        for exporter in exporters:
            mark = len(cache.used)
            artifact, key = export_artifact(exporter, context, config.output_dir)
            tools = [t for need in host_needs(config, [exporter]) for t in need.tools]
            artifacts.append(
                write_records(
                    artifact, context, facts, [*cache.used[mark:], (artifact_cache.KIND, key)], tools
                )
            )
    for artifact in artifacts:
        log.info(
            "wrote %s (%.0f MiB) with its SBOM and build manifest", artifact.path, artifact.size / (1 << 20)
        )
    return artifacts


def boot_mode(config: BuildConfig, exporter: Exporter) -> str:
    """The mode the artifact's rootfs must pass: --boot-mode trusted makes every disk a Trusted
    Boot disk; a format of one mode only (the ISO today, uki) keeps its own."""
    if config.boot_mode == "trusted" and exporter.boot_mode == "secureboot":
        if not getattr(exporter, "trusted", False):
            raise InputError(
                f"the {exporter.name} format has no Trusted Boot variant yet",
                hint="build iso, raw, qcow2, vmdk, vhd, gce or uki with --boot-mode trusted",
            )
        return "trusted"
    if exporter.boot_mode == "trusted" and config.keys is None:
        raise InputError(
            f"the {exporter.name} format signs with Trusted Boot keys",
            hint="make them once with 'kairos-build genkey DIR', then give --keys DIR",
        )
    return exporter.boot_mode


@dataclass(frozen=True)
class HostNeeds:
    """What one stage of a build drives on the host."""

    stage: str
    tools: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


# Trusted Boot: the root image's hash tree, the signatures of systemd-boot and the UKIs.
TRUSTED_TOOLS = (*verity.TOOLS, *uki.TOOLS)
# --overlay-rootfs: the converted rootfs is copied with cp before the files are added.
OVERLAY_TOOLS = ("cp",)


def host_needs(config: BuildConfig, exporters: list[Exporter]) -> list[HostNeeds]:
    """Each stage this build runs, in order, with the host programs and files it drives."""
    needs = [
        HostNeeds("resolving the base", base_tools(config.base, config.release)),
        HostNeeds("the conversion", conversion_tools(dir_base(config.base))),
    ]
    if config.overlay_rootfs is not None:
        needs.append(HostNeeds("adding the --overlay-rootfs files", OVERLAY_TOOLS))
    if any(boot_mode(config, e) == "trusted" for e in exporters):
        needs.append(HostNeeds("Trusted Boot (verity, signing)", TRUSTED_TOOLS))
    needs.extend(
        HostNeeds(f"the {e.name} export", (*e.tools, *artifact_cache.TOOLS), tuple(e.files))
        for e in exporters
    )
    return needs


def dir_base(base: str | None) -> Path | None:
    """The folder of a dir: base: the one base whose content is known before resolving it."""
    if base is None:
        return None
    ref = parse_ref(base)
    return Path(ref.target) if ref.transport == "dir" and Path(ref.target).is_dir() else None


def check_host_tools(config: BuildConfig, exporters: list[Exporter]) -> None:
    """Fail before any work when a program or file a stage drives is missing (exit code 4),
    saying which stage needs it."""
    for need in host_needs(config, exporters):
        try:
            for tool in need.tools:
                require_tool(tool)
            for path in need.files:
                require_file(path)
        except MissingToolError as exc:
            raise MissingToolError(f"{exc.message}, needed for {need.stage}", hint=exc.hint) from None


def export_artifact(exporter: Exporter, context: ExportContext, output_dir: Path) -> tuple[Artifact, str]:
    """Write to hidden temporary names, then rename: no half-written artifact is ever visible.
    The artifact and its key in the artifact cache.

    An exporter writes a file, checksummed in NAME.sha256 beside it, or a directory (netboot),
    named NAME-EXTENSION/ and checksummed file by file in a SHA256SUMS inside it.
    """
    name = context.config.artifact_name
    final = output_dir / f"{name}.{exporter.extension}"
    partial = partial_path(final)
    key = artifact_cache.artifact_key(exporter, context)
    try:
        with step(f"exporting {exporter.name}"):
            reuse = not (context.config.no_cache or context.config.fresh_artifact)
            if reuse and (kept := artifact_cache.kept_output(context, key, final)):
                return Artifact(
                    exporter.name, final, kept.sha256, kept.size, final.with_name(f"{final.name}.sha256")
                ), key
            if not (reuse and artifact_cache.copy_cached(context, key, partial)):
                exporter.export(context, partial)
            if partial.is_dir():
                folder = output_dir / f"{name}-{exporter.extension}"
                return publish_directory(exporter.name, partial, folder), key
            artifact = publish_file(exporter.name, partial, final)
            artifact_cache.store(context, key, final, artifact.sha256)
            return artifact, key
    except BaseException:
        discard(partial)
        raise
