"""kairos-agent's Trusted Boot pieces on fake ESP and state folders: loader entry names and
counters, the entries an upgrade writes, what garbage collection keeps, the bundle it reads,
and systemd-boot's variables as efivarfs shows them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kairos_build.agent import bootstate, trusted
from kairos_build.agent.system import NodeError

OLD, NEW, GONE = "1111111111111111", "2222222222222222", "3333333333333333"


@pytest.mark.parametrize(
    ("name", "ident"),
    [
        ("active.conf", "active"),
        ("active+3.conf", "active"),
        ("active+2-1.conf", "active"),
        ("passive+0-3.conf", "passive"),
        ("statereset.conf", "statereset"),
    ],
)
def test_entry_ids_drop_the_boot_counter(name: str, ident: str) -> None:
    assert trusted.entry_id(name) == ident


def esp_with(tmp_path: Path) -> tuple[Path, Path]:
    esp, state = tmp_path / "esp", tmp_path / "state"
    (esp / "loader/entries").mkdir(parents=True)
    (esp / "EFI/kairos").mkdir(parents=True)
    (state / "cOS").mkdir(parents=True)
    for ident in (OLD, GONE):
        (esp / f"EFI/kairos/system-{ident}.efi").write_text("uki")
        (state / f"cOS/system-{ident}.img").write_text("img")
    (esp / f"EFI/kairos/recovery-{OLD}.efi").write_text("uki")
    for role, title, ident in (("active", "Kairos", OLD), ("passive", "Kairos (fallback)", GONE)):
        (esp / f"loader/entries/{role}.conf").write_text(
            f"title {title}\nsort-key kairos-1\nversion v1\nefi /EFI/kairos/system-{ident}.efi\n"
        )
    (esp / "loader/entries/recovery.conf").write_text(f"title R\nefi /EFI/kairos/recovery-{OLD}.efi\n")
    return esp, state


def test_an_upgrade_moves_active_to_passive_and_counts_the_new_one(tmp_path: Path) -> None:
    esp, state = esp_with(tmp_path)
    actives = trusted.entry_files(esp, "active")
    current = trusted.entry_efi(actives[0])
    assert current == f"/EFI/kairos/system-{OLD}.efi"
    (esp / f"EFI/kairos/system-{NEW}.efi").write_text("new")
    (state / f"cOS/system-{NEW}.img").write_text("new")
    trusted.write_entry(
        esp,
        "passive",
        trusted.entry_lines(trusted.entry_files(esp, "passive")[0], version="v1"),
        current,
        None,
    )
    trusted.write_entry(
        esp,
        "active",
        trusted.entry_lines(actives[0], version="v2"),
        f"/EFI/kairos/system-{NEW}.efi",
        trusted.TRIES,
    )
    trusted.collect_garbage(esp, state)
    entries = sorted(p.name for p in (esp / "loader/entries").iterdir())
    assert entries == ["active+3.conf", "passive.conf", "recovery.conf"]
    active = (esp / "loader/entries/active+3.conf").read_text().splitlines()
    assert active == ["title Kairos", "sort-key kairos-1", "version v2", f"efi /EFI/kairos/system-{NEW}.efi"]
    passive = (esp / "loader/entries/passive.conf").read_text()
    assert "title Kairos (fallback)" in passive and f"system-{OLD}.efi" in passive
    # The image nobody starts any more goes; recovery's UKI is never collected.
    assert sorted(p.name for p in (esp / "EFI/kairos").iterdir()) == [
        f"recovery-{OLD}.efi",
        f"system-{OLD}.efi",
        f"system-{NEW}.efi",
    ]
    assert sorted(p.name for p in (state / "cOS").iterdir()) == [f"system-{OLD}.img", f"system-{NEW}.img"]


def test_a_bundle_is_one_system_uki_and_its_image(tmp_path: Path) -> None:
    folder = tmp_path / "uki"
    (folder / "EFI/kairos").mkdir(parents=True)
    with pytest.raises(NodeError, match="no single EFI/kairos/system-"):
        trusted.bundle(folder)
    (folder / f"EFI/kairos/system-{NEW}.efi").write_text("uki")
    with pytest.raises(NodeError, match=f"not cOS/system-{NEW}.img"):
        trusted.bundle(folder)
    (folder / "cOS").mkdir()
    (folder / f"cOS/system-{NEW}.img").write_text("img")
    assert trusted.bundle(folder) == (
        folder / f"EFI/kairos/system-{NEW}.efi",
        folder / f"cOS/system-{NEW}.img",
    )


def efivar(folder: Path, name: str, value: str) -> None:
    data = struct.pack("<I", 6) + f"{value}\0".encode("utf-16-le")
    (folder / f"{name}-{trusted.LOADER_GUID}").write_bytes(data)


def test_the_role_comes_from_the_loader_entry_systemd_boot_started(tmp_path: Path) -> None:
    system = ["root=LABEL=COS_STATE", "cos-img/filename=/cOS/system-1.img"]
    assert bootstate.boot_state(system, tmp_path) == "unknown"
    efivar(tmp_path, "LoaderEntrySelected", "passive+2-1.conf")
    assert bootstate.boot_state(system, tmp_path) == "passive_boot"
    # The reset entry starts the recovery UKI (kairos.entry=recovery on its command line).
    efivar(tmp_path, "LoaderEntrySelected", "statereset.conf")
    assert bootstate.boot_entry(["kairos.entry=recovery"], tmp_path) == "statereset"
    # grub's menus name their entry themselves.
    assert bootstate.boot_entry(["kairos.entry=active"], tmp_path) == "active"


def test_the_one_shot_entry_is_one_efivarfs_write(tmp_path: Path) -> None:
    trusted.set_one_shot_entry("statereset", tmp_path)
    data = (tmp_path / f"LoaderEntryOneShot-{trusted.LOADER_GUID}").read_bytes()
    assert data[:4] == struct.pack("<I", 7)
    assert trusted.read_loader_variable("LoaderEntryOneShot", tmp_path) == "statereset.conf"
