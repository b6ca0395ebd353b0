"""The command line: one thin function per verb; the work happens in pipelines/ (a module each)."""

from __future__ import annotations

import errno
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kairos_build import __version__
from kairos_build.cli import artifacts as cli_artifacts
from kairos_build.cli.options import global_callback, verb
from kairos_build.config.configfile import CommandLine, effective, resolve_settings
from kairos_build.config.settings import Value
from kairos_build.core.errors import EXIT_BAD_INPUT, EXIT_BUILD_FAILED, KairosError
from kairos_build.core.log import log, quiet_progress, setup_logging, timings

if TYPE_CHECKING:
    from kairos_build.core.cache import Cache

app = typer.Typer(
    name="kairos-build",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Any distro container image in, a bootable immutable Kairos OS out.",
)


@global_callback(app)
def global_options(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More output.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
    config: Annotated[
        Path | None,
        typer.Option(  # noqa: UP007
            "--config",
            help="A YAML file of settings (the options' names as keys); flags and --set win over it.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(  # noqa: UP007
            "--set", help="KEY=VALUE: a setting, as in a config file (repeatable)."
        ),
    ] = None,
) -> CommandLine:
    setup_logging(-1 if quiet else verbose)
    return CommandLine(config, tuple(set_ or ()))


def _settings(verb_name: str, command_line: CommandLine) -> dict[str, Value]:
    """The verb's settings from every layer; with --json the progress display stays off."""
    values = resolve_settings(verb_name, command_line)
    if values.get("json"):
        quiet_progress()
    return values


def _emit(values: dict[str, Value], payload: dict[str, object]) -> None:
    if values.get("json"):
        settings = {k: v for k, v in effective(values).items() if k != "json"}
        print(json.dumps({**payload, **({"settings": settings} if settings else {})}, indent=2, default=str))


@verb(app, "boot")
def boot(
    artifact: Annotated[
        Path, typer.Argument(help="An .iso, .raw or .qcow2 file, or a netboot directory (or its boot.ipxe).")
    ],
    command_line: CommandLine,
    **options: Any,  # boot's options in settings.SETTINGS, named as BootSpec's fields
) -> None:
    """Boot an artifact in QEMU; exit 0 only when it reaches multi-user with the right root and
    settles healthy (systemd running, no failed unit)."""
    from kairos_build.boot.harness import BootSpec
    from kairos_build.boot.harness import boot as boot_artifact

    values = _settings("boot", command_line)
    result = boot_artifact(BootSpec(artifact, **options))
    log.info(
        "booted %s under %s (%s) in %.0f s: %s",
        artifact.name,
        result.firmware,
        result.accel,
        result.seconds,
        " ".join(f"{k}={v}" for k, v in result.fields.items()),
    )
    _emit(values, vars(result))


@verb(app, "unpack")
def unpack(
    ref: Annotated[str, typer.Argument(help="Base reference (as for --base).")],
    target: Annotated[Path, typer.Argument(help="Directory to create (must be empty or absent).")],
    command_line: CommandLine,
) -> None:
    """Resolve a base and unpack it into a directory (no conversion)."""
    from kairos_build.config.buildconfig import config_from
    from kairos_build.pipelines.unpack import unpack_to

    values = _settings("unpack", command_line)
    # A verb given its base never swaps in a bootstrap.
    base = unpack_to(config_from(values, base=ref, bootstrap_fallback=False), target)
    log.info("unpacked %s into %s", base.description, target)
    _emit(values, {"base": base.description, "key": base.key, "target": target})


@verb(app, "convert")
def convert(
    ref: Annotated[str, typer.Argument(help="The base to convert (as for --base).")],
    command_line: CommandLine,
    output: str | None,
    dry_run: bool,
) -> None:
    """Convert a base into a Kairos image and write the image itself (to FROM in a Dockerfile)."""
    from kairos_build.config.buildconfig import config_from
    from kairos_build.core.errors import InputError
    from kairos_build.pipelines.convert import convert_to

    values = _settings("convert", command_line)
    config = config_from(values, base=ref, bootstrap_fallback=False)
    if dry_run:  # needs no root, no network and no base: only the flavor
        from kairos_build.convert.plan import conversion_plan, describe_plan

        steps = conversion_plan(config, ref)
        if values.get("json"):
            _emit(
                values,
                {
                    "flavor": config.flavor.name,
                    "release": config.release.name,
                    "steps": [vars(s) for s in steps],
                },
            )
        else:
            print(f"conversion plan for {config.flavor.name} {config.release.name} (nothing was run):")
            print(describe_plan(steps))
        return
    if output is None:
        raise InputError(
            "kairos-build convert needs --output",
            hint="e.g. -o oci-archive:out.tar, or --dry-run to only see the plan",
        )
    written = convert_to(config, output)
    log.info("wrote the converted image to %s", written)
    _emit(values, {"output": written, "timings": timings})


@verb(app, "dockerfile")
def dockerfile(command_line: CommandLine, output: Path, from_image: str | None) -> None:
    """Write the conversion as a Dockerfile and its build context (docker build OUTPUT)."""
    from kairos_build.config.buildconfig import config_from
    from kairos_build.pipelines.dockerfile import write_build_context

    config = config_from(_settings("dockerfile", command_line))
    written = write_build_context(config, output, from_image)
    log.info("wrote %s; build it with: docker build -t IMAGE %s", written, output)


@verb(app, "rebuild")
def rebuild(
    manifest_file: Annotated[
        Path, typer.Argument(metavar="NAME.build.json", help="The build manifest written beside an artifact.")
    ],
    command_line: CommandLine,
    output: Path,
) -> None:
    """Make an artifact again from its build manifest and say whether its sha256 matches (exit
    0) or not (exit 1, naming which recorded input differs)."""
    from kairos_build.core.errors import BuildError
    from kairos_build.pipelines.build import build
    from kairos_build.pipelines.rebuild import rebuild as rebuild_artifact

    values = _settings("rebuild", command_line)
    cache_dir = values.get("cache-dir")
    result = rebuild_artifact(
        manifest_file,
        output,
        build,
        cache_dir if isinstance(cache_dir, Path) else None,
        no_cache=values.get("no-cache") is True,
    )
    name = result.artifact.path.name
    if values.get("json"):
        _emit(
            values,
            {
                "artifact": vars(result.artifact),
                "recorded_sha256": result.recorded_sha256,
                "matches": result.matches,
                "changes": list(result.changes),
                "package_changes": list(result.package_changes),
            },
        )
    elif result.matches:
        print(f"sha256 matches: {result.artifact.sha256}  {name}")
    else:
        print(f"sha256 differs: recorded {result.recorded_sha256}, rebuilt {result.artifact.sha256}  {name}")
        for change in result.changes or (
            "no recorded input differs: the build is not reproducible on this host",
        ):
            print(f"  {change}")
        for change in result.package_changes:
            print(f"  package {change}")
    if not result.matches:
        raise BuildError(
            f"the rebuilt {name} is not the recorded one",
            hint="the lines above say which recorded input differs",
        )


@verb(app, "check")
def check(
    ref: Annotated[str, typer.Argument(help="A base reference or a directory.")],
    command_line: CommandLine,
    mode: str,
) -> None:
    """Check, from the files alone, which boot mode an image supports (exit 3 when it fails)."""
    from kairos_build.check.rules import describe
    from kairos_build.config.buildconfig import config_from
    from kairos_build.core.errors import CheckFailedError
    from kairos_build.pipelines.check import check_base

    values = _settings("check", command_line)
    base_ref = f"dir:{ref}" if Path(ref).is_dir() else ref
    base, report = check_base(config_from(values, base=base_ref, bootstrap_fallback=False), mode)
    if values.get("json"):
        _emit(
            values,
            {
                "base": base.description,
                "mode": report.mode,
                "ok": report.ok,
                "rules": [vars(r) for r in report.rules],
                "facts": report.facts,
            },
        )
    else:
        print(f"{base.description}: {report.mode} {'passes' if report.ok else 'FAILS'}")
        print(describe(report))
    if not report.ok:
        raise CheckFailedError(f"{base.description} does not meet the {report.mode} requirements")


@verb(app, "inject")
def inject(
    iso: Annotated[Path, typer.Argument(help="An ISO made by kairos-build iso.")],
    command_line: CommandLine,
    cloud_config: Path,
    output: Path | None,
) -> None:
    """Put a new cloud-config (/config.yaml) into a built ISO without rebuilding it."""
    from kairos_build.pipelines.inject import inject_cloud_config

    values = _settings("inject", command_line)
    started = time.monotonic()
    written = inject_cloud_config(iso, cloud_config, output)
    log.info("wrote %s with %s as /config.yaml in %.1f s", written, cloud_config, time.monotonic() - started)
    _emit(values, {"output": written, "seconds": time.monotonic() - started})


@verb(app, "genkey")
def genkey(
    directory: Annotated[
        Path, typer.Argument(help="Directory for the keys (made, mode 0700, when missing).")
    ],
    command_line: CommandLine,
    name: str,
    expiration_days: int,
    key_bits: int,
    force: bool,
) -> None:
    """Make the Trusted Boot keys: Secure Boot's PK, KEK and db (.key, .pem, .der, .esl, .auth)
    and the PCR policy key (tpm2-pcr-private.pem), named as AuroraBoot's genkey names them."""
    from kairos_build.trusted.genkey import generate_keys

    values = _settings("genkey", command_line)
    made = generate_keys(
        directory, name=name, expiration_days=expiration_days, key_bits=key_bits, force=force
    )
    log.info(
        "wrote %d files to %s (signature owner %s); builds need db.key, db.pem, the .auth "
        "files and tpm2-pcr-private.pem: keep PK.key and KEK.key offline",
        len(made.files),
        directory,
        made.owner,
    )
    _emit(
        values,
        {
            "directory": directory,
            "files": list(made.files),
            "owner": str(made.owner),
            "expiration_days": made.expiration_days,
        },
    )


cache_app = typer.Typer(help="Inspect or prune the build cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _cache(values: dict[str, Value]) -> Cache:
    from kairos_build.core.cache import Cache, default_cache_dir

    folder = values.get("cache-dir")
    return Cache(folder if isinstance(folder, Path) else default_cache_dir())


@verb(cache_app, "cache ls")
def cache_ls(command_line: CommandLine) -> None:
    """List cache entries: kind, key, size, last use."""
    values = _settings("cache ls", command_line)
    entries = _cache(values).entries()
    sizes = [e.size() for e in entries]
    used = [e.path.lstat().st_mtime for e in entries]
    if values.get("json"):
        _emit(
            values,
            {
                "entries": [
                    {"kind": e.kind, "key": e.key, "size": size, "path": str(e.path), "last_used": when}
                    for e, size, when in zip(entries, sizes, used, strict=True)
                ]
            },
        )
        return
    for e, size, when in zip(entries, sizes, used, strict=True):
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
        print(f"{e.kind:10} {e.key[:24]:24} {size / (1 << 20):10.1f} MiB  {stamp}")
    print(f"{len(entries)} entries, {sum(sizes) / (1 << 20):.1f} MiB")


@verb(cache_app, "cache prune")
def cache_prune(command_line: CommandLine, older_than: float, all_entries: bool) -> None:
    """Remove cache entries (by default those unused for a week) and leftovers of killed builds."""
    values = _settings("cache prune", command_line)
    removed = _cache(values).prune(None if all_entries else older_than)
    log.info("removed %d cache entries", len(removed))
    _emit(values, {"removed": [{"kind": e.kind, "key": e.key} for e in removed]})


@verb(app, "install-deps")
def install_deps(print_only: bool) -> None:
    """Install the host tools kairos-build drives (apt hosts), or list them (other hosts)."""
    from kairos_build.core.hostdeps import describe_packages, install_host_packages, is_apt_host

    if print_only or not is_apt_host():
        print(describe_packages())
        return
    installed = install_host_packages()
    log.info("host packages installed: %s", " ".join(installed))


@verb(app, "flavors")
def flavors(command_line: CommandLine) -> None:
    """List the flavors: family, releases, package manager, init, bootloader, initramfs."""
    from kairos_build.core.flavors import flavor_names, load_flavor

    values = _settings("flavors", command_line)
    rows = [load_flavor(name) for name in flavor_names()]
    if values.get("json"):
        _emit(
            values,
            {
                "flavors": [
                    {
                        "name": f.name,
                        "pretty_name": f.pretty_name,
                        "family": f.family,
                        "default_release": f.default_release,
                        "releases": list(f.releases),
                        "images": {r.name: r.image for r in f.releases.values()},
                        "package_manager": f.package_manager,
                        "init": f.init,
                        "bootloader": f.bootloader,
                        "initramfs": f.initramfs,
                    }
                    for f in rows
                ]
            },
        )
        return
    for f in rows:
        print(
            f"{f.name:11} {f.family:7} releases: {', '.join(f.releases)} "
            f"(default {f.default_release}); {f.package_manager}, {f.init}, {f.bootloader}, "
            f"{f.initramfs}"
        )


@verb(app, "formats")
def formats(command_line: CommandLine) -> None:
    """List the artifact formats installed (kairos_build.exporters entry points)."""
    from kairos_build.exporters.base import installed_formats

    values = _settings("formats", command_line)
    found = installed_formats()
    if values.get("json"):
        _emit(
            values,
            {
                "formats": [
                    {
                        "name": f.name,
                        "extension": f.extension,
                        "boot_mode": f.boot_mode,
                        "tools": list(f.tools),
                        "files": list(f.files),
                        "provider": f.provider,
                        "summary": f.summary,
                    }
                    for f in found.values()
                ]
            },
        )
        return
    for f in found.values():
        print(f"{f.name:8} .{f.extension:8} {f.provider:14} {f.summary}")


cli_artifacts.register(app)


@app.command("version")
def show_version() -> None:
    """Print the kairos-build version."""
    print(__version__)


def main() -> None:
    """Entry point: every failure becomes one readable message and a documented exit code."""
    setup_logging()
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors: Typer prints them its own way
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(int(getattr(exc, "exit_code", EXIT_BAD_INPUT)))
    except typer.Abort:
        print("error: interrupted; nothing was left at the output path", file=sys.stderr)
        sys.exit(130)
    except KairosError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was left at the output path", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            print(f"error: no space left on device ({exc.filename or 'while writing'})", file=sys.stderr)
            print("hint: free some space or choose another --output / --cache-dir", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BUILD_FAILED)
    if code == 130:  # Typer turns Ctrl-C (KeyboardInterrupt) into Exit(130) before we see it
        print("error: interrupted; nothing was left at the output path", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
