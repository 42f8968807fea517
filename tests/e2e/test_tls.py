"""DICOM TLS (PS3.15 Annex B): `filmless serve --dicom-tls-port` next to the plain DIMSE port.

A throwaway PKI is made at test time with the ``openssl`` command-line tool: a CA, a server
certificate (for ``localhost`` and 127.0.0.1) and a client certificate it signs, and a second
CA with a client certificate of its own that filmless must not trust. Real peers only, on
127.0.0.1: DCMTK's echoscu and storescu with ``+tls``, and pynetdicom with ``tls_args``.
"""

from __future__ import annotations

import re
import secrets
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.e2e.support import IndexView, StartFilmless, Synthetic, run_cli, sop_instance_uid, stats, storescu_results
from tests.peers import ECHOSCU, LOOPBACK, STORESCU, FilmlessServer, echo, free_port, peer_env

pytestmark = pytest.mark.e2e

OPENSSL = Path("/usr/bin/openssl")
SUCCESS = 0x0000


# ------------------------------------------------------------------------ the test PKI


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    rogue_cert: Path
    """A client certificate signed by ``other_ca``, which filmless does not trust."""
    rogue_key: Path


_REQ_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
"""


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [str(OPENSSL), *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
    )
    assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"


def _config(folder: Path, cn: str) -> Path:
    path = folder / f"{cn.replace(' ', '_')}.cnf"
    path.write_text(_REQ_CONFIG.format(cn=cn))
    return path


def make_ca(folder: Path, name: str, cn: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-config", str(_config(folder, cn)), "-extensions", "ca", "-newkey", "rsa:2048",
        "-nodes", "-sha256", "-days", "2", "-keyout", str(key), "-out", str(cert), cwd=folder,
    )
    return cert, key


def make_leaf(folder: Path, name: str, cn: str, kind: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate of ``kind`` (``server`` or ``client``) for ``cn``, signed by ``ca``."""
    cert, key, csr = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    config = _config(folder, cn)
    _openssl(
        "req", "-new", "-config", str(config), "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(key), "-out", str(csr), cwd=folder,
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", str(secrets.randbits(63)), "-days", "2", "-sha256",
        "-extfile", str(config), "-extensions", kind, "-out", str(cert), cwd=folder,
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not OPENSSL.is_file():
        pytest.skip("the openssl command-line tool is needed to make test certificates")
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "ca", "filmless test CA")
    server = make_leaf(folder, "server", "localhost", "server", ca)
    client = make_leaf(folder, "client", "TLSCLIENT", "client", ca)
    other_ca = make_ca(folder, "other-ca", "some other CA")
    rogue = make_leaf(folder, "rogue", "ROGUE", "client", other_ca)
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca[0], rogue[0], rogue[1])


def tls_args(pki: Pki, *, require: bool = True, ca: bool = True) -> list[str]:
    args = ["--tls-certificate", str(pki.server_cert), "--tls-private-key", str(pki.server_key)]
    if ca:
        args += ["--tls-ca-certificates", str(pki.ca)]
    args.append("--tls-require-client-certificate" if require else "--no-tls-require-client-certificate")
    return args


@dataclass
class TlsServer:
    server: FilmlessServer
    tls_port: int


@pytest.fixture(scope="module")
def tls_server(start_filmless: StartFilmless, pki: Pki) -> Iterator[TlsServer]:
    port = free_port()
    # The TLS port opens before the HTTP API, so "ready" (GET /healthz) covers it too.
    with start_filmless("--dicom-tls-port", str(port), *tls_args(pki)) as srv:
        yield TlsServer(srv, port)


# ------------------------------------------------------------------------------- peers


def _run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, errors="replace", env=peer_env(), timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


TIMEOUTS = ["-to", "10", "-ta", "10", "-td", "10"]


def dcmtk_tls(pki: Pki, *, key: Path | None = None, cert: Path | None = None) -> list[str]:
    """DCMTK's TLS options: our client key and certificate, trusting the test CA."""
    return ["+tls", str(key or pki.client_key), str(cert or pki.client_cert), "+cf", str(pki.ca)]


def echoscu(port: int, *options: str, calling: str = "TLSCLIENT") -> subprocess.CompletedProcess[str]:
    return _run([str(ECHOSCU), "-v", "-aet", calling, "-aec", "FILMLESS", *TIMEOUTS, *options, LOOPBACK, str(port)])


def storescu(port: int, files: list[Path], *options: str) -> subprocess.CompletedProcess[str]:
    return _run(
        [str(STORESCU), "-v", "-aet", "TLSCLIENT", "-aec", "FILMLESS", *TIMEOUTS, *options, LOOPBACK, str(port),
         *(str(f) for f in files)],
        timeout=120,
    )


def client_context(pki: Pki, *, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def pynetdicom_ae() -> AE:
    ae = AE(ae_title="PYTLS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    return ae


def pynetdicom_associates(port: int, context: ssl.SSLContext | None) -> bool:
    """Whether pynetdicom gets an association (then aborted) with or without TLS."""
    ae = pynetdicom_ae()
    tls = (context, "localhost") if context is not None else None
    assoc = ae.associate(LOOPBACK, port, ae_title="FILMLESS", tls_args=tls)
    established = assoc.is_established
    if established:
        assoc.abort()
    # When the server ends the connection after a TLS 1.3 handshake (the client certificate is
    # checked after the client has finished), pynetdicom's requestor leaves the socket open.
    transport = assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.close()
    ae.shutdown()
    return established


def wait_for_log(server: FilmlessServer, pattern: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = server.log_text()
        if re.search(pattern, text):
            return text
        if time.monotonic() >= deadline:
            raise AssertionError(f"{pattern!r} not in the filmless log:\n{text[-4000:]}")
        time.sleep(0.05)


def _files(synthetic_data: Synthetic, seed: int) -> list[Path]:
    return synthetic_data.ct(seed, slices=2, size=64)


def _stored_uids(server: FilmlessServer) -> set[str]:
    return set(IndexView(server.data_dir).instances())


# ------------------------------------------------------------------------------- tests


def test_echoscu_with_client_certificate(tls_server: TlsServer, pki: Pki) -> None:
    result = echoscu(tls_server.tls_port, *dcmtk_tls(pki))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Echo Response (Success)" in output
    log = wait_for_log(tls_server.server, r"TLS connection from 127\.0\.0\.1:\d+: TLSv1\.[23], .*TLSCLIENT")
    assert f"listening on {LOOPBACK}:{tls_server.tls_port} (DICOM TLS)" in log
    assert "issuer 'commonName=filmless test CA'" in log


def test_storescu_over_tls_stores(tls_server: TlsServer, pki: Pki, synthetic_data: Synthetic) -> None:
    files = _files(synthetic_data, 9101)
    before = stats(tls_server.server.data_dir)["instances"]
    result = storescu(tls_server.tls_port, files, *dcmtk_tls(pki))
    ok, failed = storescu_results(result.stdout + result.stderr)
    assert result.returncode == 0 and not failed, result.stdout + result.stderr
    assert sorted(ok) == sorted(str(f) for f in files)
    assert stats(tls_server.server.data_dir)["instances"] == before + len(files)
    assert {sop_instance_uid(f) for f in files} <= _stored_uids(tls_server.server)


def test_pynetdicom_with_tls_args(tls_server: TlsServer, pki: Pki, synthetic_data: Synthetic) -> None:
    path = _files(synthetic_data, 9102)[0]
    ds = dcmread(path)
    ae = pynetdicom_ae()
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    context = client_context(pki, cert=pki.client_cert, key=pki.client_key)
    assoc = ae.associate(LOOPBACK, tls_server.tls_port, ae_title="FILMLESS", tls_args=(context, "localhost"))
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == SUCCESS
        assert assoc.send_c_store(ds).Status == SUCCESS
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    assert sop_instance_uid(path) in _stored_uids(tls_server.server)


def test_client_without_certificate_is_refused(tls_server: TlsServer, pki: Pki, synthetic_data: Synthetic) -> None:
    files = _files(synthetic_data, 9103)
    # DCMTK: TLS without a client certificate (+tla), trusting the server.
    result = storescu(tls_server.tls_port, files, "+tla", "+cf", str(pki.ca))
    assert result.returncode != 0, result.stdout + result.stderr
    assert storescu_results(result.stdout + result.stderr)[0] == []
    # pynetdicom: the same.
    assert not pynetdicom_associates(tls_server.tls_port, client_context(pki))
    wait_for_log(tls_server.server, r"TLS handshake with 127\.0\.0\.1:\d+ failed.*(PEER_DID_NOT_RETURN_A_CERTIFICATE|certificate)")
    assert not {sop_instance_uid(f) for f in files} & _stored_uids(tls_server.server)
    assert tls_server.server.running


def test_certificate_from_another_ca_is_refused(tls_server: TlsServer, pki: Pki, synthetic_data: Synthetic) -> None:
    files = _files(synthetic_data, 9104)
    result = storescu(tls_server.tls_port, files, *dcmtk_tls(pki, key=pki.rogue_key, cert=pki.rogue_cert))
    assert result.returncode != 0, result.stdout + result.stderr
    assert storescu_results(result.stdout + result.stderr)[0] == []
    assert not pynetdicom_associates(tls_server.tls_port, client_context(pki, cert=pki.rogue_cert, key=pki.rogue_key))
    wait_for_log(tls_server.server, r"TLS handshake with 127\.0\.0\.1:\d+ failed.*certificate")
    assert not {sop_instance_uid(f) for f in files} & _stored_uids(tls_server.server)


def test_plain_dimse_on_the_tls_port_fails(tls_server: TlsServer, synthetic_data: Synthetic) -> None:
    result = echoscu(tls_server.tls_port)
    assert result.returncode != 0, result.stdout + result.stderr
    files = _files(synthetic_data, 9105)
    result = storescu(tls_server.tls_port, files)
    assert result.returncode != 0, result.stdout + result.stderr
    assert not pynetdicom_associates(tls_server.tls_port, None)
    assert not {sop_instance_uid(f) for f in files} & _stored_uids(tls_server.server)


def test_plain_port_still_works(tls_server: TlsServer, synthetic_data: Synthetic) -> None:
    server = tls_server.server
    assert echo(LOOPBACK, server.dicom_port, server.aet)
    files = _files(synthetic_data, 9106)
    result = storescu(server.dicom_port, files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {sop_instance_uid(f) for f in files} <= _stored_uids(server)
    assert server.running


def _s_client(port: int, pki: Pki, *options: str) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` with our client certificate, weak settings allowed on its side
    (security level 0) so that only the server's own policy decides."""
    return _run(
        [str(OPENSSL), "s_client", "-connect", f"{LOOPBACK}:{port}", "-brief", "-verify_return_error",
         "-CAfile", str(pki.ca), "-cert", str(pki.client_cert), "-key", str(pki.client_key), *options],
        timeout=30,
    )


def test_tls_1_2_minimum_and_aead_ciphers_only(tls_server: TlsServer, pki: Pki) -> None:
    result = _s_client(tls_server.tls_port, pki, "-tls1_2", "-cipher", "DEFAULT:@SECLEVEL=0")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Protocol version: TLSv1.2" in output and "GCM" in output, output
    result = _s_client(tls_server.tls_port, pki, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert result.returncode != 0 and "alert protocol version" in result.stderr, result.stderr
    result = _s_client(tls_server.tls_port, pki, "-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0")
    assert result.returncode != 0 and "handshake failure" in result.stderr, result.stderr


def test_context_options(pki: Pki) -> None:
    from dicom_node.tls import server_context

    context = server_context(pki.server_cert, pki.server_key, pki.ca)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.verify_mode == ssl.CERT_REQUIRED
    optional = server_context(pki.server_cert, pki.server_key, pki.ca, require_client_certificate=False)
    assert optional.verify_mode == ssl.CERT_OPTIONAL
    assert server_context(pki.server_cert, pki.server_key, require_client_certificate=False).verify_mode == ssl.CERT_NONE


def test_silent_client_does_not_block_others(tls_server: TlsServer, pki: Pki) -> None:
    """A TCP connection that never starts its handshake holds only its own thread."""
    with socket.create_connection((LOOPBACK, tls_server.tls_port), timeout=10):
        result = echoscu(tls_server.tls_port, *dcmtk_tls(pki))
        assert result.returncode == 0, result.stdout + result.stderr


def test_server_authentication_only_in_several_processes(
    start_filmless: StartFilmless, pki: Pki, synthetic_data: Synthetic
) -> None:
    """--no-tls-require-client-certificate (no CA file): anonymous TLS clients are served; the
    TLS port is opened by every DICOM receiver process."""
    port = free_port()
    with start_filmless(
        "--dicom-tls-port", str(port), *tls_args(pki, require=False, ca=False), "--dicom-processes", "2",
        "--compression-workers", "0",
    ) as srv:
        log = wait_for_log(srv, rf"(listening on {re.escape(LOOPBACK)}:{port} \(DICOM TLS\)[\s\S]*){{2}}", 60)
        assert log.count(f"{LOOPBACK}:{port} (DICOM TLS)") == 2
        for _ in range(4):
            result = echoscu(port, "+tla", "+cf", str(pki.ca))
            assert result.returncode == 0, result.stdout + result.stderr
        files = _files(synthetic_data, 9107)
        result = storescu(port, files, "+tla", "+cf", str(pki.ca))
        assert result.returncode == 0, result.stdout + result.stderr
        assert {sop_instance_uid(f) for f in files} <= _stored_uids(srv)
        wait_for_log(srv, r"TLS connection from 127\.0\.0\.1:\d+: TLSv1\.[23], \S+, no client certificate")


# ------------------------------------------------------------------- start-up checks


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "serve", "--data", str(tmp_path / "data"), "--dicom-host", LOOPBACK, "--http-host", LOOPBACK,
        "--dicom-port", str(free_port()), "--http-port", str(free_port()), *args,
        timeout=60,
    )


def test_tls_port_without_certificate_is_a_clear_error(tmp_path: Path) -> None:
    result = _serve(tmp_path, "--dicom-tls-port", str(free_port()))
    assert result.returncode == 2
    assert "dicom_tls_port needs tls_certificate and tls_private_key" in result.stderr
    assert "Traceback" not in result.stderr


def test_client_certificates_without_ca_is_a_clear_error(tmp_path: Path, pki: Pki) -> None:
    result = _serve(tmp_path, "--dicom-tls-port", str(free_port()), *tls_args(pki, ca=False))
    assert result.returncode == 2
    assert "tls_require_client_certificate needs tls_ca_certificates" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("problem", ["missing certificate", "key of another certificate", "not a CA file"])
def test_unusable_files_are_a_clear_error(tmp_path: Path, pki: Pki, problem: str) -> None:
    args = {
        "missing certificate": ["--tls-certificate", str(tmp_path / "nowhere.crt"), "--tls-private-key",
                                str(pki.server_key), "--tls-ca-certificates", str(pki.ca)],
        "key of another certificate": ["--tls-certificate", str(pki.server_cert), "--tls-private-key",
                                       str(pki.client_key), "--tls-ca-certificates", str(pki.ca)],
        "not a CA file": ["--tls-certificate", str(pki.server_cert), "--tls-private-key", str(pki.server_key),
                          "--tls-ca-certificates", str(pki.server_key)],
    }[problem]
    result = _serve(tmp_path, "--dicom-tls-port", str(free_port()), *args)
    assert result.returncode != 0
    assert "filmless: DICOM TLS:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
