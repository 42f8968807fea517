"""DICOM over TLS (PS3.15 Annex B, the BCP 195 TLS secure transport connection profiles).

The TLS port runs the same AE, handlers and access control as the plain DIMSE port; only the
transport differs:

- :func:`server_context` builds the :class:`ssl.SSLContext`: TLS 1.2 at least, no TLS
  compression, no renegotiation, forward-secret AEAD cipher suites only (BCP 195 / RFC 9325),
  and, by default, a client certificate signed by one of the trusted CAs (mutual
  authentication, as PS3.15 B.1 expects of both nodes);
- :class:`TlsDicomServer` does each TLS handshake in the connection's own thread, with a
  time limit. pynetdicom's server does it in the accepting thread, where one client that
  connects and says nothing would stop every other client from connecting.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from dicom_node.server import DicomServer

log = logging.getLogger("filmless.dicom.tls")

# TLS 1.2 suites of BCP 195 (RFC 9325 4.2): ephemeral key exchange, AEAD encryption. TLS 1.3
# suites are all AEAD with ephemeral keys and are configured by OpenSSL separately.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    ]
)

HANDSHAKE_TIMEOUT = 30.0
"""Seconds a client has to complete the TLS handshake (the same as the ACSE timeout)."""


class TlsConfigurationError(ValueError):
    """The certificate, key or CA files cannot be used; the message says which and why."""


def server_context(
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None = None,
    *,
    require_client_certificate: bool = True,
) -> ssl.SSLContext:
    """The server side of a DICOM TLS connection.

    ``ca_certificates``: PEM file of the CAs whose client certificates are trusted. Without
    ``require_client_certificate`` a client may connect without a certificate (server
    authentication only); one it does present must still verify against these CAs.
    """
    if require_client_certificate and ca_certificates is None:
        raise TlsConfigurationError(
            "requiring client certificates needs tls_ca_certificates (the CAs that sign them)"
        )
    for what, path in (
        ("tls_certificate", certificate),
        ("tls_private_key", private_key),
        ("tls_ca_certificates", ca_certificates),
    ):
        if path is not None and not Path(path).is_file():
            raise TlsConfigurationError(f"{what}: no such file: {path}")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_ciphers(TLS12_CIPHERS)
    try:
        context.load_cert_chain(certfile=str(certificate), keyfile=str(private_key))
    except ssl.SSLError as exc:
        raise TlsConfigurationError(
            f"tls_certificate {certificate} / tls_private_key {private_key}: not a PEM certificate "
            f"and its unencrypted private key, or they do not match ({exc.reason or exc})"
        ) from exc
    except OSError as exc:
        raise TlsConfigurationError(f"cannot read {exc.filename or certificate}: {exc.strerror or exc}") from exc
    if ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=str(ca_certificates))
        except ssl.SSLError as exc:
            raise TlsConfigurationError(
                f"tls_ca_certificates {ca_certificates}: no PEM certificate could be read ({exc.reason or exc})"
            ) from exc
        except OSError as exc:
            raise TlsConfigurationError(f"cannot read {ca_certificates}: {exc.strerror or exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def describe_peer(sock: ssl.SSLSocket) -> str:
    """Protocol, cipher and client certificate subject of an established TLS connection."""
    cipher = sock.cipher()
    parts = [sock.version() or "TLS", cipher[0] if cipher else "?"]
    try:
        cert: Any = sock.getpeercert()
    except (ValueError, OSError):
        cert = None
    if cert:
        parts.append(
            f"client certificate subject {_name(cert.get('subject'))!r} issuer {_name(cert.get('issuer'))!r}"
        )
    else:
        parts.append("no client certificate")
    return ", ".join(parts)


def _name(rdns: Any) -> str:
    """A distinguished name as ``getpeercert()`` gives it, as ``commonName=X,...``."""
    return ",".join(f"{key}={value}" for rdn in rdns or () for key, value in rdn)


class TlsDicomServer(DicomServer):
    """A :class:`DicomServer` whose connections are TLS, handshaken off the accepting thread."""

    handshake_timeout = HANDSHAKE_TIMEOUT
    # A handshake still under way must not hold up shutdown (server_close joins the threads).
    daemon_threads = True
    block_on_close = False

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        context = self.ssl_context
        assert context is not None, "TlsDicomServer needs an ssl_context"
        assert self.socket is not None
        self.before_accept()
        client, address = self.socket.accept()
        if self.tcp_nodelay:
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            # No I/O here: the handshake happens in the connection's thread.
            wrapped = context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            client.close()
            raise
        return wrapped, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        peer = f"{client_address[0]}:{client_address[1]}"
        assert isinstance(request, ssl.SSLSocket)
        timeout = request.gettimeout()
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(timeout)
        except (OSError, ValueError) as exc:
            # Plain DIMSE on the TLS port, no or an untrusted client certificate, a timeout.
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
            log.warning("TLS handshake with %s failed, connection closed: %s", peer, reason)
            self.shutdown_request(request)
            return
        log.info("TLS connection from %s: %s", peer, describe_peer(request))
        super().process_request_thread(request, client_address)
