"""How every turnout Kafka client authenticates: TLS and SASL from environment variables.

One ``SecuritySettings`` is read at start (``from_env``) and turned into keyword
arguments for aiokafka's producers, consumers and admin clients (``client_kwargs``)
and into faust's ``broker_credentials`` (``faust_credentials``). The worker, the
gateway, every CLI command, ``scripts/bench`` and ``scripts/kafka``'s probe all use
it, so a deployment sets the variables once.

Secrets (the SASL password, the TLS key password) may come from the variable itself
or from ``<NAME>_FILE`` (a path, as Docker and Kubernetes secrets are mounted); they
are held as ``Secret`` and revealed only into the client's constructor, so neither a
repr, a log line, ``turnout settings`` nor an error message can contain them.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Any

from turnout.config import Secret
from turnout.errors import StartupError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# (env var, meaning) for `turnout settings`; values are never printed.
VARIABLES: tuple[tuple[str, str], ...] = (
    (
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default: SASL_ if a mechanism is "
        "set, SSL if a CA or certificate file is set; public CAs: set SASL_SSL)",
    ),
    ("KAFKA_SASL_MECHANISM", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    ("KAFKA_SASL_USERNAME", "SASL user name"),
    ("KAFKA_SASL_PASSWORD", "SASL password (or KAFKA_SASL_PASSWORD_FILE: a file holding it)"),
    ("KAFKA_SSL_CAFILE", "PEM file of the CA(s) that signed the brokers' certificates"),
    ("KAFKA_SSL_CERTFILE", "PEM client certificate, for brokers that require one"),
    ("KAFKA_SSL_KEYFILE", "PEM key of the client certificate"),
    ("KAFKA_SSL_KEY_PASSWORD", "password of that key (or KAFKA_SSL_KEY_PASSWORD_FILE)"),
    ("KAFKA_SSL_CHECK_HOSTNAME", "verify the broker's name against its certificate (true)"),
)


class SecurityConfigError(StartupError, ValueError):
    """The security variables do not describe a usable setup; the message says how to fix it."""

    code = "invalid_security_config"


def _read_secret(env: Mapping[str, str], name: str, problems: list[str]) -> Secret | None:
    value = env.get(name)
    path = env.get(f"{name}_FILE")
    if value and path:
        problems.append(f"set {name} or {name}_FILE, not both")
        return None
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return Secret(f.read().strip())
        except OSError as exc:
            problems.append(f"{name}_FILE={path!r} cannot be read ({exc.strerror})")
            return None
    return Secret(value) if value else None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecuritySettings:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: Secret | None = None
    ssl_check_hostname: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SecuritySettings:
        """Read and check every variable; every problem is reported at once."""
        env = os.environ if env is None else env
        problems: list[str] = []
        mechanism = env.get("KAFKA_SASL_MECHANISM") or None
        if mechanism is not None:
            mechanism = mechanism.upper()
            if mechanism not in MECHANISMS:
                problems.append(
                    f"KAFKA_SASL_MECHANISM={mechanism!r}: expected one of {', '.join(MECHANISMS)}"
                )
        cafile = env.get("KAFKA_SSL_CAFILE") or None
        certfile = env.get("KAFKA_SSL_CERTFILE") or None
        keyfile = env.get("KAFKA_SSL_KEYFILE") or None
        tls_wanted = bool(cafile or certfile)
        default = ("SASL_" if mechanism else "") + ("SSL" if tls_wanted else "PLAINTEXT")
        protocol = (env.get("KAFKA_SECURITY_PROTOCOL") or default).upper()
        if protocol not in PROTOCOLS:
            problems.append(
                f"KAFKA_SECURITY_PROTOCOL={protocol!r}: expected one of {', '.join(PROTOCOLS)}"
            )
        password = _read_secret(env, "KAFKA_SASL_PASSWORD", problems)
        key_password = _read_secret(env, "KAFKA_SSL_KEY_PASSWORD", problems)
        username = env.get("KAFKA_SASL_USERNAME") or None
        if protocol.startswith("SASL_"):
            mechanism = mechanism or "PLAIN"
            if not username or password is None:
                problems.append(
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                    "KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE)"
                )
        elif mechanism or username:
            problems.append(
                f"KAFKA_SASL_MECHANISM/USERNAME are set but KAFKA_SECURITY_PROTOCOL is "
                f"{protocol}; use SASL_SSL (or SASL_PLAINTEXT)"
            )
        if bool(certfile) != bool(keyfile):
            problems.append("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together: set both")
        if tls_wanted and not protocol.endswith("SSL"):
            problems.append(f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL is {protocol}")
        for name, path in (
            ("KAFKA_SSL_CAFILE", cafile),
            ("KAFKA_SSL_CERTFILE", certfile),
            ("KAFKA_SSL_KEYFILE", keyfile),
        ):
            if path and not os.path.isfile(path):
                problems.append(f"{name}={path!r}: no such file")
        check = (env.get("KAFKA_SSL_CHECK_HOSTNAME") or "true").strip().lower()
        if check not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            problems.append(f"KAFKA_SSL_CHECK_HOSTNAME={check!r}: expected true or false")
        if problems:
            raise SecurityConfigError("invalid Kafka security settings: " + "; ".join(problems))
        return cls(
            protocol=protocol,
            sasl_mechanism=mechanism if protocol.startswith("SASL_") else None,
            sasl_username=username,
            sasl_password=password,
            ssl_cafile=cafile,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
            ssl_key_password=key_password,
            ssl_check_hostname=check in ("1", "true", "yes", "on"),
        )

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context: the CA file (or the system's CAs), an optional client cert."""
        if not self.uses_tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_cafile)
        ctx.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile and self.ssl_keyfile:
            ctx.load_cert_chain(
                self.ssl_certfile,
                self.ssl_keyfile,
                password=self.ssl_key_password.reveal() if self.ssl_key_password else None,
            )
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        ctx = self.ssl_context()
        if ctx is not None:
            kwargs["ssl_context"] = ctx
        if self.protocol.startswith("SASL_"):
            assert self.sasl_password is not None
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.reveal()
        return kwargs

    def faust_credentials(self) -> Any:
        """faust's ``broker_credentials`` for the same setup (None for PLAINTEXT)."""
        from faust.auth import SASLCredentials, SSLCredentials
        from faust.types.auth import SASLMechanism

        if self.protocol == "PLAINTEXT":
            return None
        if self.protocol == "SSL":
            return SSLCredentials(self.ssl_context())
        assert self.sasl_password is not None and self.sasl_mechanism is not None
        creds = SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password.reveal(),
            ssl_context=self.ssl_context(),
            mechanism=SASLMechanism(self.sasl_mechanism),
        )
        if self.protocol == "SASL_PLAINTEXT":  # faust infers SASL_SSL only from a context
            from faust.types.auth import AuthProtocol

            creds.protocol = AuthProtocol.SASL_PLAINTEXT
        return creds

    def describe(self) -> str:
        """What a log line may say about the setup: never a secret.

        >>> SecuritySettings(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        ...     sasl_username="turnout", sasl_password=Secret("s3cret")).describe()
        'SASL_SSL SCRAM-SHA-512 as turnout'
        """
        parts = [self.protocol]
        if self.sasl_mechanism:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username}")
        if self.ssl_certfile:
            parts.append("with a client certificate")
        return " ".join(parts)
