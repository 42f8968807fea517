"""All settings, read once at start-up.

Every field is a command-line option of ``filmless serve`` (``--dicom-port``), an environment
variable (``FILMLESS_DICOM_PORT``; nested sections as ``FILMLESS_COMPRESSION__CODEC``) and an
entry of the settings file (TOML, ``--config FILE`` or ``FILMLESS_CONFIG``). Precedence:
command line > environment > settings file > defaults.
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, SerializationInfo, field_serializer, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from storage.codecs import CompressionPolicy, StorageCodec
from storage.index.repository import SERVICES
from storage.ingest import CompressionMode
from storage.objects.encrypted import parse_keys as parse_encryption_keys


_CONFIG_FILE: contextvars.ContextVar[str | None] = contextvars.ContextVar("filmless_config_file", default=None)


class CompressionSettings(BaseModel):
    """How images are stored."""

    codec: StorageCodec = Field(
        StorageCodec.JPEG_LS,
        description="Codec for uncompressed images: jpeg-ls (lossless, default), jpeg2000 "
        "(lossless) or as-received. Already-compressed and non-image objects are always kept as received.",
    )
    by_modality: dict[str, StorageCodec] = Field(
        default_factory=dict,
        description='Per-modality codec overrides, e.g. {"US": "as-received"}.',
    )
    by_sop_class: dict[str, StorageCodec] = Field(
        default_factory=dict,
        description="Per-SOP-Class-UID codec overrides; they win over per-modality ones.",
    )
    mode: CompressionMode = Field(
        CompressionMode.BACKGROUND,
        description="background: store as received, acknowledge, compress in worker processes "
        "(fast acknowledgements); inline: compress before acknowledging.",
    )
    workers: int = Field(1, ge=0, le=64, description="Background compression worker processes (0: none).")
    defer_while_receiving: float = Field(
        0.5,
        ge=0,
        le=60,
        description="Background workers wait until no image has arrived for this many seconds "
        "(at most a minute at a time), leaving the CPU to acknowledging modalities; 0: never wait.",
    )

    def policy(self) -> CompressionPolicy:
        return CompressionPolicy(
            default=self.codec,
            by_modality={k.upper(): v for k, v in self.by_modality.items()},
            by_sop_class=dict(self.by_sop_class),
        )


class Settings(BaseSettings):
    """filmless settings."""

    model_config = SettingsConfigDict(
        env_prefix="FILMLESS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        # Errors must not echo their input: it holds the secrets (s3_secret_key, storage_encryption_keys).
        hide_input_in_errors=True,
    )

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses unsafe defaults (unknown AEs allowed)."
    )
    components: Literal["all", "dicom", "api"] = Field(
        "all",
        description="What `filmless serve` runs: all (the DICOM node with its compression workers, "
        "and the HTTP API), dicom (the DICOM node and the compression workers) or api (the HTTP API "
        "only). dicom and api run as two services (e.g. two containers) on the same settings, index "
        "and object store.",
    )
    data: Path = Field(Path("filmless-data"), description="Home of the index and the objects.")
    index: str | None = Field(
        None, description="SQLAlchemy URL of the index; default sqlite:///<data>/index.sqlite."
    )
    storage: str | None = Field(
        None,
        description="Object store URL: file:///path, or s3://bucket/prefix (an S3 bucket, see the "
        "s3_* settings); default file://<data>/objects.",
    )
    s3_endpoint: str = Field(
        "s3.amazonaws.com",
        description="S3 server of s3:// storage: host[:port], or http(s)://host[:port] (the "
        "scheme then decides s3_secure).",
    )
    s3_access_key: str | None = Field(None, description="S3 access key (id) of s3:// storage.")
    s3_secret_key: SecretStr | None = Field(
        None,
        description="S3 secret key of s3:// storage; environment or settings file only, never "
        "on the command line, never logged.",
    )
    s3_region: str | None = Field(None, description="S3 region (e.g. us-east-1); default: asked of the server.")
    s3_secure: bool = Field(True, description="Reach the S3 server over HTTPS (certificate checked).")
    s3_path_style: bool = Field(
        True,
        description="Path-style S3 addressing (host/bucket/key: MinIO, SeaweedFS, Ceph and most "
        "self-hosted servers); off: virtual-host style (bucket.host/key).",
    )
    s3_sse: Literal["none", "AES256", "aws:kms"] = Field(
        "none",
        description="Server-side encryption asked of the S3 server for each object: none, AES256 "
        "(SSE-S3) or aws:kms (SSE-KMS with s3_sse_kms_key_id).",
    )
    s3_sse_kms_key_id: str | None = Field(None, description="KMS key id of s3_sse aws:kms.")
    s3_part_size: int = Field(
        16 * 1024**2,
        ge=5 * 1024**2,
        le=5 * 1024**3,
        description="Objects larger than this many bytes go to S3 as a multipart upload in parts of this size.",
    )
    storage_encryption_keys: SecretStr | None = Field(
        None,
        description="Client-side encryption at rest (AES-256-GCM) of every stored object, so the "
        "storage never sees pixels or names in the clear: KEYID:BASE64KEY[,KEYID:BASE64KEY...] "
        "with 32-byte keys (openssl rand -base64 32); the first encrypts new objects, all of them "
        "decrypt (key rotation). Environment or settings file only; losing the keys loses the images.",
    )
    spool: Literal["auto", "on", "off"] = Field(
        "auto",
        description="When the object store fails to store an object, keep it durably on local disk "
        "(<data>/spool), acknowledge it, and upload it when the store answers again (retried with "
        "back-off, also after a restart). auto: on for s3:// storage, off for file://; off: a "
        "failing store fails the C-STORE, so the sender retries.",
    )
    ae_title: str = Field("FILMLESS", min_length=1, max_length=16, description="Our DICOM AE title.")
    dicom_host: str = Field("0.0.0.0", description="Address the DICOM port listens on.")
    dicom_port: int = Field(11112, ge=0, le=65535, description="DICOM (DIMSE) port.")
    dicom_tls_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="DICOM TLS port (PS3.15 Annex B; 2762 is the usual one), on dicom_host next "
        "to the plain DIMSE port; 0: off. Needs tls_certificate and tls_private_key.",
    )
    tls_certificate: Path | None = Field(
        None, description="PEM file of the DICOM TLS server certificate (optionally followed by its chain)."
    )
    tls_private_key: Path | None = Field(
        None, description="PEM file of the unencrypted private key of tls_certificate."
    )
    tls_ca_certificates: Path | None = Field(
        None, description="PEM file of the CAs whose client certificates the DICOM TLS port trusts."
    )
    tls_require_client_certificate: bool = Field(
        True,
        description="DICOM TLS clients must present a certificate signed by tls_ca_certificates "
        "(mutual authentication); off: server authentication only.",
    )
    http_host: str = Field(
        "127.0.0.1",
        description="Address the HTTP API listens on. Anything but a loopback address opens it to "
        "the network, which filmless refuses while no user exists (see initial_admin_password).",
    )
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP API port.")
    public_url: str | None = Field(
        None,
        description="The API's address as clients see it (e.g. https://pacs.hospital.vn behind a "
        "reverse proxy), used in the links DICOMweb answers carry; default: the request's own.",
    )
    viewer_dist: Path | None = Field(
        None,
        description="The prebuilt OHIF viewer's dist directory (scripts/install-ohif.sh prints it), "
        "served at /viewer/ with a sign-in page and pointed at this server's /dicom-web; "
        "default: no viewer.",
    )
    jwt_secret: SecretStr | None = Field(
        None,
        description="Key that signs access tokens (at least 32 characters); every API process of "
        "one archive needs the same. Default: made once and kept in <data>/secrets/jwt.key.",
    )
    access_token_minutes: int = Field(
        60, ge=1, le=24 * 60, description="Lifetime of the access tokens POST /api/token issues."
    )
    initial_admin_password: SecretStr | None = Field(
        None,
        description="When no user exists at start-up, create the user admin (role admin) with "
        "this password (for containers; change it afterwards with `filmless user passwd`).",
    )
    oidc_issuer: str | None = Field(
        None,
        description="Accept bearer tokens of this external OpenID Connect issuer (e.g. a Keycloak "
        "realm URL), checked against its JWKS.",
    )
    oidc_audience: str | None = Field(None, description="The audience (aud) OIDC tokens must carry.")
    oidc_jwks_url: str | None = Field(
        None, description="The issuer's JWKS URL; default: from its /.well-known/openid-configuration."
    )
    oidc_role_claim: str = Field(
        "roles",
        description="Claim of an OIDC token that holds the filmless role(s) (a dotted path, e.g. "
        "realm_access.roles); the first known role wins.",
    )
    oidc_username_claim: str = Field("preferred_username", description="Claim of an OIDC token naming the user.")
    max_upload_size: int = Field(
        4 * 1024**3,
        ge=1024,
        description="Largest STOW-RS request body accepted (bytes); larger ones get 413.",
    )
    accept_unknown_aes: bool = Field(
        True,
        description="Accept associations from AE titles not in the AE registry (logged with a "
        "warning). Refused in production.",
    )
    check_ae_host: bool = Field(
        True, description="For registered AEs, also require the connection to come from the registered host."
    )
    unknown_ae_services: str = Field(
        "echo,store,find,move,get",
        description="What AEs outside the registry may do when accept_unknown_aes allows them "
        "(comma-separated: echo, store, find, move, get; empty: nothing but associate).",
    )
    max_find_matches: int = Field(
        5000,
        ge=0,
        description="Most C-FIND matches returned for one query; beyond it the query ends with "
        "'Out of resources' (A700) after the first matches, asking the user to narrow it. 0: no limit.",
    )
    dicom_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes receiving DICOM, sharing the listening ports (each new association "
        "goes to the least busy one): more than one uses more cores for simultaneous associations. "
        "0: one per CPU, at most two (one with --dicom-port 0).",
    )
    max_associations: int = Field(
        32, ge=1, le=1024, description="Concurrent DICOM associations, in each receiving process."
    )
    max_pdu_size: int = Field(
        262144, ge=0, description="Largest P-DATA PDU we accept (bytes; 0 = unlimited)."
    )
    tcp_nodelay: bool = Field(True, description="Disable Nagle's algorithm on DICOM connections.")
    network_timeout: float = Field(60.0, gt=0, description="Seconds of silence before an association is aborted.")
    max_object_size: int = Field(
        2 * 1024**3, ge=1024, description="Largest object accepted (bytes); larger ones are refused."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    compression: CompressionSettings = Field(default_factory=CompressionSettings)  # type: ignore[arg-type]

    @field_serializer(
        "s3_secret_key", "storage_encryption_keys", "jwt_secret", "initial_admin_password", when_used="json"
    )
    def _secret(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        """Secrets are masked in JSON, except for :meth:`for_child_process`."""
        if value is None:
            return None
        context = info.context
        if isinstance(context, dict) and context.get("reveal_secrets") is True:
            return value.get_secret_value()
        return str(value)

    def for_child_process(self) -> str:
        """These settings as JSON for a worker process (``Settings.model_validate_json``),
        secrets included: hand it over a pipe, never log it or put it on a command line."""
        return self.model_dump_json(context={"reveal_secrets": True})

    def unknown_services(self) -> frozenset[str]:
        """The services of ``unknown_ae_services`` as a set."""
        return frozenset(s.strip() for s in self.unknown_ae_services.split(",") if s.strip())

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.environment == "production" and self.accept_unknown_aes:
            raise ValueError(
                "accept_unknown_aes must be false in production: register modalities with `filmless ae add`"
            )
        unknown = {s.strip() for s in self.unknown_ae_services.split(",") if s.strip()}
        if unknown - set(SERVICES):
            raise ValueError(
                f"unknown_ae_services: unknown service(s) {', '.join(sorted(unknown - set(SERVICES)))}; "
                "use echo, store, find, move, get"
            )
        if self.storage_encryption_keys is not None:
            parse_encryption_keys(self.storage_encryption_keys.get_secret_value())
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("jwt_secret must be at least 32 characters")
        if self.s3_sse == "aws:kms" and not self.s3_sse_kms_key_id:
            raise ValueError("s3_sse aws:kms needs s3_sse_kms_key_id")
        if self.dicom_tls_port:
            if self.tls_certificate is None or self.tls_private_key is None:
                raise ValueError(
                    "dicom_tls_port needs tls_certificate and tls_private_key (PEM files of the "
                    "server certificate and its private key)"
                )
            if self.tls_require_client_certificate and self.tls_ca_certificates is None:
                raise ValueError(
                    "tls_require_client_certificate needs tls_ca_certificates (PEM file of the CAs "
                    "that sign the client certificates), or --no-tls-require-client-certificate "
                    "for server authentication only"
                )
            if self.dicom_tls_port == self.dicom_port:
                raise ValueError("dicom_tls_port must differ from dicom_port")
        return self

    @property
    def index_url(self) -> str:
        return self.index or f"sqlite:///{(self.data / 'index.sqlite').resolve()}"

    @property
    def receiver_processes(self) -> int:
        """How many processes receive DICOM: ``dicom_processes``, or when 0 one per CPU, at
        most two (measured on two CPUs, four associations: ~0.75 of Orthanc's instances/s with
        one process, ~0.93 with two; a third brought nothing), and one on a port the system
        picks (the processes could not share it)."""
        if self.dicom_processes:
            return self.dicom_processes
        if self.dicom_port == 0:
            return 1
        return max(1, min(2, os.cpu_count() or 1))

    @property
    def storage_url(self) -> str:
        return self.storage or f"file://{(self.data / 'objects').resolve()}"

    @property
    def remote_http(self) -> bool:
        """Whether the HTTP API listens beyond this machine (not only on loopback)."""
        return not _is_loopback(self.http_host)

    @property
    def spool_path(self) -> Path:
        """Where objects wait when the object store fails (see ``spool``)."""
        return self.data / "spool"

    @property
    def spool_enabled(self) -> bool:
        """Whether objects the object store fails to take are spooled (``spool``, resolved)."""
        return self.spool == "on" or (self.spool == "auto" and not self.storage_url.startswith("file:"))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _CONFIG_FILE.get() or os.environ.get("FILMLESS_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(overrides: dict[str, Any] | None = None, config_file: Path | None = None) -> Settings:
    """Build the settings from command-line ``overrides``, the environment and the file."""
    if config_file is None and os.environ.get("FILMLESS_CONFIG"):
        config_file = Path(os.environ["FILMLESS_CONFIG"])
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"settings file not found: {config_file}")
    token = _CONFIG_FILE.set(str(config_file) if config_file else None)
    try:
        return Settings(**{k: v for k, v in (overrides or {}).items() if v is not None})
    finally:
        _CONFIG_FILE.reset(token)
