"""TLS for the broker's own clients: the PACS (DICOMweb and Orthanc's REST feed) and syslog.

One function builds the ``ssl.SSLContext`` from :class:`~broker.config.ClientTlsSettings`, so
every client that talks to one service verifies it the same way: certificate chain and host name
always checked (``CERT_REQUIRED``, ``check_hostname``), TLS 1.2 or later, the configured CA bundle
instead of the system's store when one is given, and the client certificate loaded when mutual
TLS is configured. A missing or unreadable file raises at start-up (fail closed), never later as
a silent downgrade. Kafka's clients are configured by :func:`broker.audit.kafka.security_config`
(kafka-python builds its own context from file names).
"""

from __future__ import annotations

import ssl

import httpx

from broker.config import ClientTlsSettings, PacsSettings
from broker.upstream import RetryStaleAsyncTransport, RetryStaleTransport

__all__ = [
    "client_ssl_context",
    "pacs_async_transport",
    "pacs_mount",
    "pacs_sync_transport",
    "pacs_verify",
]


def client_ssl_context(tls: ClientTlsSettings) -> ssl.SSLContext:
    """A client context that verifies the server against ``tls.ca_file`` (or the system store).

    Raises ``ValueError`` naming the setting when a configured file cannot be loaded.
    """
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the CA bundle {tls.ca_file}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # create_default_context already sets these; stated so that no later edit can drop them
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    if tls.cert_file is not None and tls.key_file is not None:
        password = tls.key_password.get_secret_value() if tls.key_password else None
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load the client certificate {tls.cert_file} / key {tls.key_file}: {exc}"
            ) from exc
    return context


def pacs_verify(pacs: PacsSettings) -> ssl.SSLContext | None:
    """The context for an ``https://`` PACS; None for a plain-HTTP dev PACS (no TLS at all)."""
    return None if pacs.plaintext else client_ssl_context(pacs.tls)


def pacs_mount(pacs: PacsSettings) -> str:
    """The httpx mount pattern of the PACS's origin (``https://host:port``), for ``mounts=``."""
    url = httpx.URL(str(pacs.url))
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}" + (f":{url.port}" if url.port is not None else "")


def pacs_async_transport(pacs: PacsSettings) -> RetryStaleAsyncTransport:
    """The broker's transport to the PACS: stale-connection retry over the PACS's TLS context."""
    verify = pacs_verify(pacs)
    return RetryStaleAsyncTransport() if verify is None else RetryStaleAsyncTransport(verify=verify)


def pacs_sync_transport(pacs: PacsSettings) -> RetryStaleTransport:
    """The same for synchronous clients (the integrity feed on Orthanc's REST API)."""
    verify = pacs_verify(pacs)
    return RetryStaleTransport() if verify is None else RetryStaleTransport(verify=verify)
