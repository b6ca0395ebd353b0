"""What a failed command in the conversion sandbox says: the command, the package whose script
failed (as dpkg, rpm and apk word it) and what the sandbox refused."""

from __future__ import annotations

from kairos_build.core.denials import denied_lines, explain_failure, failed_scripts

DPKG = """\
Setting up kairos-test-denied (1.0) ...
mount: /mnt: permission denied.
       dmesg(1) may have more information after failed mount system call.
dpkg: error processing package kairos-test-denied (--configure):
 installed kairos-test-denied package post-installation script subprocess returned error exit status 32
Errors were encountered while processing:
 kairos-test-denied
E: Sub-process /usr/bin/dpkg returned an error code (1)
"""
RPM = """\
  Running scriptlet: probe-1.0-1.x86_64
mknod: /root/disk: Operation not permitted
error: %post(probe-1.0-1.x86_64) scriptlet failed, exit status 1
"""
APK = """\
(3/3) Installing probe (1.0-r0)
Executing probe-1.0-r0.post-install
sh: can't create /proc/sys/vm/drop_caches: Read-only file system
ERROR: probe-1.0-r0.post-install: script exited with error 2
"""


def test_dpkg_names_the_package_and_its_script() -> None:
    assert failed_scripts(DPKG) == [
        "package kairos-test-denied: post-installation script failed (exit status 32)"
    ]


def test_rpm_names_the_package_and_its_scriptlet() -> None:
    assert failed_scripts(RPM) == ["package probe-1.0-1.x86_64: %post scriptlet failed (exit status 1)"]


def test_apk_names_the_package_and_its_script() -> None:
    assert failed_scripts(APK) == ["package probe-1.0-r0: post-install script failed (exit status 2)"]


def test_the_refusals_are_quoted_once_each() -> None:
    assert denied_lines(DPKG + DPKG) == ["mount: /mnt: permission denied."]
    assert denied_lines(RPM) == ["mknod: /root/disk: Operation not permitted"]
    assert denied_lines(APK) == ["sh: can't create /proc/sys/vm/drop_caches: Read-only file system"]


def test_the_error_names_the_command_the_package_and_the_refusal_with_a_hint() -> None:
    error = explain_failure(["apt-get", "install", "-y", "kairos-test-denied"], 100, DPKG)
    text = str(error)
    assert text.startswith(
        "'apt-get install -y kairos-test-denied' failed in the conversion sandbox (exit code 100)"
    )
    assert "package kairos-test-denied: post-installation script failed (exit status 32)" in text
    assert "refused by the sandbox:\n    mount: /mnt: permission denied." in text
    assert error.hint is not None and "conversion sandbox" in error.hint
    assert "unshare" not in text and "bwrap" not in text


def test_a_plain_failure_has_no_sandbox_hint() -> None:
    error = explain_failure(["apt-get", "update"], 100, "E: Unable to locate package nope\n")
    assert error.hint is None
    assert "E: Unable to locate package nope" in str(error)
    assert "refused" not in str(error)
