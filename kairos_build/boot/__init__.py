"""The boot harness, apart from the build: harness.py boots an artifact under QEMU and checks the
guest's boot report; netboot_server.py serves a netboot directory to that guest only."""
