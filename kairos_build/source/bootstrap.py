"""Make a base rootfs with the distro's bootstrap tool, for when no image can be had."""

from __future__ import annotations

from pathlib import Path

from kairos_build.core.errors import InputError, require_root
from kairos_build.core.flavors import Bootstrap
from kairos_build.core.tools import require_tool, run


def bootstrap_rootfs(recipe: Bootstrap, target: Path) -> None:
    """Bootstrap `recipe` into the empty directory `target` (needs root for a real rootfs)."""
    require_root("bootstrapping a rootfs")
    if recipe.tool != "mmdebstrap":
        raise InputError(f"bootstrap tool {recipe.tool!r} is not supported", hint="use mmdebstrap")
    # No mirror argument: mmdebstrap picks the distribution's default mirror, and the host's
    # apt proxy settings apply. stdin is /dev/null so it does not wait for a sources list.
    # mmdebstrap's root mode mounts /proc, /sys and /dev in the tree it makes: run it in a
    # mount and PID namespace of its own that dies with it (and it with us, see tools.run), so
    # a killed build leaves no mount on the host and no installer running.
    run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            require_tool("mmdebstrap"),
            f"--variant={recipe.variant}",
            "--mode=root",
            "--format=directory",
            recipe.suite,
            str(target),
        ],
        timeout=1800,
        name="mmdebstrap",
    )
