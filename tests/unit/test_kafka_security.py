"""Kafka security settings: parsed from the environment, every problem at once, no leaks."""

import ssl
import subprocess
import sys

import pytest
from aiokafka import errors as kerrors

from turnout.kafka.admin import describe_failure
from turnout.kafka.security import SecurityConfigError, SecuritySettings

PASSWORD = "pa55-very-secret-word"


def test_default_is_plaintext_with_no_credentials():
    """No variables: PLAINTEXT, and the aiokafka kwargs say only that."""
    s = SecuritySettings.from_env({})
    assert s.protocol == "PLAINTEXT"
    assert s.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert s.faust_credentials() is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_over_tls_from_env(tmp_path, mechanism):
    """Mechanism, user and password, with a CA file, give SASL_SSL kwargs and a TLS context."""
    ca = _self_signed_ca(tmp_path)
    s = SecuritySettings.from_env(
        {
            "KAFKA_SASL_MECHANISM": mechanism,
            "KAFKA_SASL_USERNAME": "turnout",
            "KAFKA_SASL_PASSWORD": PASSWORD,
            "KAFKA_SSL_CAFILE": str(ca),
        }
    )
    kwargs = s.client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism.upper()
    assert kwargs["sasl_plain_username"] == "turnout"
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    creds = s.faust_credentials()
    assert creds.mechanism.value == mechanism.upper()
    assert creds.protocol.value == "SASL_SSL"


def test_password_from_file(tmp_path):
    """KAFKA_SASL_PASSWORD_FILE is read and stripped of its trailing newline."""
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    s = SecuritySettings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD_FILE": str(f),
        }
    )
    assert s.client_kwargs()["sasl_plain_password"] == PASSWORD
    assert s.faust_credentials().protocol.value == "SASL_PLAINTEXT"


def test_every_problem_is_reported_at_once_without_the_password(tmp_path):
    """Bad mechanism, missing user, both password forms, missing CA: one message, no secret."""
    f = tmp_path / "pw"
    f.write_text(PASSWORD)
    with pytest.raises(SecurityConfigError) as info:
        SecuritySettings.from_env(
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_PASSWORD": PASSWORD,
                "KAFKA_SASL_PASSWORD_FILE": str(f),
                "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem",
            }
        )
    message = str(info.value)
    assert "KAFKA_SASL_MECHANISM='GSSAPI'" in message
    assert "not both" in message
    assert "needs KAFKA_SASL_USERNAME" in message
    assert "/nonexistent/ca.pem" in message
    assert PASSWORD not in message


def test_repr_and_describe_never_show_secrets():
    """The settings' repr and describe() hide the password."""
    s = SecuritySettings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": PASSWORD,
        }
    )
    assert PASSWORD not in repr(s)
    assert PASSWORD not in s.describe()
    assert s.describe() == "SASL_PLAINTEXT PLAIN as u"


def test_turnout_settings_output_has_no_secret_values():
    """`turnout settings` lists the security variables but never their values."""
    import os

    env = {
        **os.environ,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_KEY_PASSWORD": PASSWORD + "2",
    }
    out = subprocess.run(
        [sys.executable, "-m", "turnout.cli", "settings"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "KAFKA_SASL_PASSWORD" in out
    assert "TURNOUT_REPLICATION_FACTOR" in out
    assert PASSWORD not in out


@pytest.mark.parametrize(
    ("errors", "starts"),
    [
        ([kerrors.SaslAuthenticationFailed("bad")], "authentication failed at b:1 as u"),
        ([ConnectionRefusedError(111, "x")], "Kafka not reachable at b:1 (connection refused)"),
        ([ssl.SSLCertVerificationError(1, "certificate verify failed")], "TLS handshake with b:1"),
        ([TimeoutError()], "Kafka at b:1 did not answer in time with SASL_SSL"),
        ([kerrors.UnsupportedSaslMechanismError("PLAIN not enabled")], "authentication failed"),
    ],
)
def test_startup_failures_are_one_line_naming_the_cause(errors, starts):
    """Unreachable, refused credentials, untrusted certificate, wrong protocol read differently."""
    s = SecuritySettings(protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u")
    line = describe_failure("b:1", s, errors)
    assert line.startswith(starts)
    assert "\n" not in line


def _self_signed_ca(tmp_path):
    key, cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert
