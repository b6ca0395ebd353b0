"""The node agent's reading of Kairos cloud-configs, on the Kairos documentation's examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos_build.agent import config
from kairos_build.agent.bootstate import boot_state, parse_grubenv, render_grubenv
from kairos_build.agent.install import immutable_lines
from kairos_build.agent.stages import expand_hostname
from kairos_build.agent.system import NodeError

# The manual-install page's example (kairos.io/docs/installation/manual).
MANUAL_INSTALL = """#cloud-config
users:
- name: "kairos"
  passwd: "kairos"
  ssh_authorized_keys:
  - github:mudler
  - "ssh-rsa AAA..."
k3s:
  enabled: true
"""
# The wifi example of kairos-io/kairos (examples/cloud-configs), shortened.
WIFI = """#cloud-config
hostname: metal-{{ trunc 4 .MachineID }}
users:
- name: kairos
  passwd: kairos
stages:
  initramfs:
  - name: "Setup wireless"
    files:
    - path: /etc/wpa_supplicant/wpa_supplicant.conf
      content: |
        ctrl_interface=/var/run/wpa_supplicant
      permissions: 0600
      owner: 0
      group: 0
  boot:
  - name: "Enabling wireless"
    commands:
    - |
      systemctl enable wpa_supplicant@wlan0
      systemctl start wpa_supplicant@wlan0 || :
"""
INSTALL = """#cloud-config
install:
  auto: true
  device: /dev/sda
  reboot: true
  poweroff: "false"
  partitions:
    oem: {size: 128, fs: ext4}
    persistent: {size: 0}
  grub_options:
    extra_cmdline: "console=ttyS1 foo=bar"
  bind_mounts: [/var/lib/rancher]
  ephemeral_mounts: [/var/cache/x]
  encrypted_partitions: [COS_PERSISTENT]
upgrade:
  system:
    uri: oci:quay.io/kairos/debian:v2
reset:
  reset-persistent: false
  reset-oem: true
"""


def parsed(text: str) -> dict[str, object]:
    return config.load_yaml(text, "test")


def test_kairos_users_have_plain_passwords_and_stay_away_from_cloud_init() -> None:
    cfg = parsed(MANUAL_INSTALL)
    [user] = config.top_level_users(cfg)
    assert (user.name, user.passwd) == ("kairos", "kairos")
    assert not config.is_password_hash(user.passwd or "")
    assert user.ssh_authorized_keys == ("github:mudler", "ssh-rsa AAA...")
    # cloud-init would take passwd as a hash, and add its default user without `users: []`.
    assert config.cloud_init_view(cfg) == {"users": []}
    assert config.unsupported(cfg) == ["k3s"]


@pytest.mark.parametrize("value", ["$6$salt$abc", "$y$j9T$abc$def", "$2b$10$abc"])
def test_crypt_strings_are_taken_as_hashes(value: str) -> None:
    assert config.is_password_hash(value)


def test_stages_in_order_with_their_steps() -> None:
    cfg = parsed(WIFI)
    [files_step] = config.stage_steps(cfg, "initramfs")
    assert files_step.name == "Setup wireless"
    assert files_step.files[0]["permissions"] == 0o600
    [boot_step] = config.stage_steps(cfg, "boot")
    assert boot_step.commands[0].startswith("systemctl enable wpa_supplicant@wlan0\n")
    assert config.stage_steps(cfg, "network") == []
    assert config.unsupported(cfg) == []


def test_before_and_after_stages_run_around_the_stage() -> None:
    cfg = parsed(
        "stages:\n  boot.after: [{commands: [c]}]\n  boot: [{commands: [b]}]\n"
        "  boot.before: [{commands: [a], dns: {nameservers: [1.1.1.1]}}]\n"
        "  kairos-install.pre.before: [{commands: [x]}]\n"
    )
    assert [step.commands for step in config.stage_steps(cfg, "boot")] == [("a",), ("b",), ("c",)]
    assert config.unsupported(cfg) == ["stages.boot.before.dns", "stages.kairos-install.pre.before"]


def test_install_upgrade_and_reset_settings() -> None:
    cfg = parsed(INSTALL)
    spec = config.install_spec(cfg)
    assert (spec.auto, spec.device, spec.reboot, spec.poweroff) == (True, "/dev/sda", True, False)
    assert spec.sizes == (("oem", 128 << 20),)  # size 0: the default (persistent: the rest)
    assert spec.extra_cmdline == "console=ttyS1 foo=bar"
    assert immutable_lines(spec) == "persist /var/lib/rancher\noverlay /var/cache/x\n"
    assert config.unsupported(cfg) == ["install.encrypted_partitions"]
    assert config.upgrade_spec(cfg).source == "oci:quay.io/kairos/debian:v2"
    reset = config.reset_spec(cfg)
    assert (reset.reset_persistent, reset.reset_oem, reset.reboot) == (False, True, True)
    assert config.install_spec({}) == config.InstallSpec()


def test_files_merge_as_kairos_merges_them(tmp_path: Path) -> None:
    (tmp_path / "10.yaml").write_text("#cloud-config\nusers: [{name: a}]\ninstall: {device: auto}\n")
    (tmp_path / "20.yaml").write_text("#cloud-config\nusers: [{name: b}]\ninstall: {auto: true}\n")
    cfg = config.read_configs(sorted(tmp_path.glob("*.yaml")))
    assert [user.name for user in config.top_level_users(cfg)] == ["a", "b"]
    assert cfg["install"] == {"device": "auto", "auto": True}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("users: {name: a}", "users: must be a list"),
        ("users: [{name: 'Bad Name'}]", "is not valid"),
        ("install: {partitions: {boot: {size: 10}}}", "not a partition this layout has"),
        ("install: {partitions: {oem: {size: -1}}}", "number of MiB"),
        ("stages: {boot: [commands]}", "must be a mapping"),
    ],
)
def test_bad_configs_are_named(text: str, message: str) -> None:
    cfg = parsed(text)
    with pytest.raises(NodeError, match=message):
        config.top_level_users(cfg)
        config.install_spec(cfg)
        config.stage_steps(cfg, "boot")


def test_a_config_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(NodeError, match="not a YAML mapping"):
        config.load_yaml("- a\n- b\n", "x.yaml")
    with pytest.raises(NodeError, match="not valid YAML"):
        config.load_yaml("users: [\n", "x.yaml")


def test_templated_hostnames() -> None:
    assert expand_hostname("metal-{{ trunc 4 .MachineID }}", "0123456789") == "metal-0123"
    assert expand_hostname("plain", "0123") == "plain"
    assert expand_hostname("{{ .Values.x }}", "0123") is None


@pytest.mark.parametrize(
    ("cmdline", "state"),
    [
        ("root=LABEL=COS_STATE cos-img/filename=/cOS/active.img kairos.entry=active", "active_boot"),
        ("root=LABEL=COS_STATE cos-img/filename=/cOS/passive.img kairos.entry=passive", "passive_boot"),
        (
            "root=LABEL=COS_RECOVERY cos-img/filename=/cOS/recovery.squashfs kairos.entry=statereset",
            "recovery_boot",
        ),
        ("root=live:CDLABEL=COS_LIVE rd.live.dir=/ kairos.entry=live-config", "livecd_boot"),
        ("root=LABEL=COS_STATE cos-img/filename=/cOS/passive.img", "passive_boot"),
        ("root=/dev/sda1", "unknown"),
    ],
)
def test_boot_state_from_the_command_line(cmdline: str, state: str) -> None:
    assert boot_state(cmdline.split()) == state


def test_grubenv_keeps_its_size_and_values() -> None:
    block = render_grubenv({"kairos_assessment": "pending", "next_entry": "", "extra_cmdline": "a=b c"})
    assert len(block) == 1024 and block.startswith(b"# GRUB Environment Block\n")
    assert parse_grubenv(block) == {"extra_cmdline": "a=b c", "kairos_assessment": "pending"}
    with pytest.raises(NodeError, match="full"):
        render_grubenv({"x": "y" * 2000})


def test_grubenv_reads_and_writes_what_grub_editenv_does(tmp_path: Path) -> None:
    """grub's own tool as the independent reader and writer of the block."""
    import subprocess

    from kairos_build.agent.bootstate import read_grubenv, write_grubenv

    theirs = tmp_path / "theirs"
    subprocess.run(["grub-editenv", str(theirs), "set", "next_entry=recovery", "x=1"], check=True)
    assert read_grubenv(theirs) == {"next_entry": "recovery", "x": "1"}
    write_grubenv(theirs, {"kairos_assessment": "tentative"})
    listed = subprocess.run(
        ["grub-editenv", str(theirs), "list"], capture_output=True, text=True, check=True
    ).stdout
    assert listed == "kairos_assessment=tentative\n"
    assert theirs.stat().st_size == 1024
