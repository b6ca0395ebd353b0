"""The openssl commands behind the Trusted Boot keys (the host's openssl CLI, no Python crypto
library). A private key is written into a file we created 0600 beforehand, so it is never
readable by others, whatever the umask."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kairos_build.core.tools import run

# The certificates' extensions, the same on every host: `openssl req` would otherwise take them
# from the host's openssl.cnf. These are that file's usual v3_ca section, which is what
# AuroraBoot's `openssl req -x509` gives its certificates.
_REQ_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = v3
prompt = no
[dn]
[v3]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer
basicConstraints = critical,CA:TRUE
"""


def create_private_file(path: Path) -> None:
    """Create `path` empty, mode 0600, refusing one that exists (or a symlink in its place)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a umask such as 0277 would have taken our own write bit
    finally:
        os.close(fd)


def new_private_key(path: Path, bits: int) -> None:
    """A new RSA key of `bits` in `path` (PEM, PKCS#8, unencrypted), mode 0600."""
    create_private_file(path)
    # openssl truncates the file it is given and keeps its mode.
    run(
        [
            "openssl",
            "genpkey",
            "-quiet",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            f"rsa_keygen_bits:{bits}",
            "-out",
            path,
        ],
        name="openssl genpkey",
    )


def _subject(common_name: str) -> str:
    # -subj separates RDNs with '/' and escapes with '\'.
    return "/CN=" + common_name.replace("\\", "\\\\").replace("/", "\\/")


def self_signed_certificate(key: Path, common_name: str, days: int, out: Path) -> None:
    """A self-signed X.509 certificate (PEM, SHA-256) of `key`, valid from now for `days`."""
    with tempfile.TemporaryDirectory(prefix="kairos-build-req-") as tmp:
        config = Path(tmp) / "req.cnf"
        config.write_text(_REQ_CONFIG)
        run(
            [
                "openssl",
                "req",
                "-new",
                "-x509",
                "-config",
                config,
                "-utf8",
                "-key",
                key,
                "-subj",
                _subject(common_name),
                "-days",
                str(days),
                "-sha256",
                "-out",
                out,
            ],
            name="openssl req",
        )


def certificate_der(pem: Path, out: Path) -> None:
    run(["openssl", "x509", "-in", pem, "-outform", "DER", "-out", out], name="openssl x509")


def public_key_pem(private_key: Path) -> str:
    """The public half of `private_key` (PEM SubjectPublicKeyInfo, as systemd-measure reads)."""
    return run(["openssl", "pkey", "-in", private_key, "-pubout"], capture=True, name="openssl pkey")


def certificate_public_key_pem(certificate: Path) -> str:
    return run(
        ["openssl", "x509", "-in", certificate, "-noout", "-pubkey"], capture=True, name="openssl x509"
    )


def sign_detached(payload: bytes, key: Path, certificate: Path) -> bytes:
    """A detached PKCS#7 signature of `payload` (DER ContentInfo, SHA-256, the signer's
    certificate included), made the way sign-efi-sig-list makes it: the PKCS#7 API
    (`openssl smime`), -noattr (the signature is over the data itself, no signed attributes) and
    -binary (the bytes as they are, no MIME line-end conversion)."""
    with tempfile.TemporaryDirectory(prefix="kairos-build-sign-") as tmp:
        data, signature = Path(tmp) / "payload", Path(tmp) / "signature.p7"
        data.write_bytes(payload)
        run(
            [
                "openssl",
                "smime",
                "-sign",
                "-binary",
                "-noattr",
                "-md",
                "sha256",
                "-signer",
                certificate,
                "-inkey",
                key,
                "-in",
                data,
                "-outform",
                "DER",
                "-out",
                signature,
            ],
            name="openssl smime",
        )
        return signature.read_bytes()
