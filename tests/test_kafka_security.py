"""Kafka TLS and SASL: settings -> client kwargs (kafka-python and librdkafka), and real brokers.

tansu 0.6 cannot serve TLS (its `--cert` is accepted and ignored; `--cert` with `--key` is refused) and
its SASL needs users that cannot be created once `--authentication` is on (memory store). So:
* TLS: HAProxy terminates TLS (mutual: it requires a client certificate from the test CA) in front of
  a plain tansu that advertises the proxy's address; admin, producer (kafka-python and librdkafka),
  consumer and `count_records` all go through it. Certificates are made at test time (cryptography).
* SASL: tansu with `--authentication` rejects the SCRAM exchange of an unknown user / wrong password;
  the client must surface that as one BrokerError line naming the mechanism and user, never the password.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pipelines.errors import BrokerError
from pipelines.kafka_io import (
    FastProducer,
    client_security,
    count_records,
    create_topics,
    librdkafka_security,
    make_consumer,
    make_producer,
    topic_partitions,
    wait_for_broker,
    with_bootstrap,
)
from pipelines.settings import Settings


def _secure(settings: Settings, **kafka) -> Settings:
    """A copy of `settings` with kafka fields replaced, validated (so a password becomes a SecretStr)."""
    merged = type(settings.kafka).model_validate({**settings.kafka.model_dump(), **kafka})
    return settings.model_copy(update={"kafka": merged})


# --- settings -> client kwargs (no broker) ---------------------------------------------------------

def test_plaintext_adds_nothing():
    assert client_security(Settings()) == {} and librdkafka_security(Settings()) == {}


def test_sasl_ssl_maps_to_both_clients(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    s = Settings.model_validate({"kafka": {"security_protocol": "SASL_SSL", "ssl_cafile": str(ca),
                                           "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "argus-fraud",
                                           "sasl_password": "inline", "sasl_password_file": str(pw)}})
    assert client_security(s) == {"security_protocol": "SASL_SSL", "ssl_check_hostname": True, "ssl_cafile": str(ca),
                                  "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "argus-fraud",
                                  "sasl_plain_password": "from-file"}  # the file wins, newline dropped
    assert librdkafka_security(s) == {"security.protocol": "sasl_ssl", "ssl.endpoint.identification.algorithm": "https",
                                      "ssl.ca.location": str(ca), "sasl.mechanisms": "SCRAM-SHA-512",
                                      "sasl.username": "argus-fraud", "sasl.password": "from-file"}


def test_environment_names_and_masking(monkeypatch):
    monkeypatch.setenv("ARGUS_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ARGUS_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("ARGUS_KAFKA__SASL_USERNAME", "u")
    monkeypatch.setenv("ARGUS_KAFKA__SASL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("ARGUS_KAFKA__SSL_PASSWORD", "key-secret")
    s = Settings()
    assert client_security(s)["sasl_plain_password"] == "hunter2-secret"
    shown = str(s.masked())
    assert "hunter2-secret" not in shown and "key-secret" not in shown and "'sasl_username': 'u'" in shown


def test_misconfiguration_is_one_clear_line(tmp_path):
    with pytest.raises(BrokerError, match=r"kafka.ssl_cafile .*missing.pem is not a file"):
        client_security(_secure(Settings(), security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem"))
    with pytest.raises(BrokerError, match="needs kafka.sasl_mechanism and kafka.sasl_username"):
        client_security(_secure(Settings(), security_protocol="SASL_SSL"))
    with pytest.raises(BrokerError, match="sasl_password_file"):
        client_security(_secure(Settings(), security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u",
                                sasl_password_file=tmp_path / "absent"))
    with pytest.raises(ValueError):
        Settings.model_validate({"kafka": {"sasl_mechanism": "GSSAPI"}})


# --- real brokers -----------------------------------------------------------------------------------

def _make_certs(d: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca=False, sans=None):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(hours=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def pem(c):
        return c.public_bytes(serialization.Encoding.PEM)

    def key_pem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    out: dict[str, Path] = {}
    for ca_name in ("ca", "other_ca"):
        k = ec.generate_private_key(ec.SECP256R1())
        c = cert(f"argus test {ca_name}", k, f"argus test {ca_name}", k, ca=True)
        (d / f"{ca_name}.pem").write_bytes(pem(c))
        out[ca_name], out[f"{ca_name}_obj"], out[f"{ca_name}_key"] = d / f"{ca_name}.pem", c, k
    ca_key = out.pop("ca_key")
    ca_subject = "argus test ca"
    for leaf, sans in (("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       ("misnamed", [x509.DNSName("broker.elsewhere.example")]), ("client", None)):
        k = ec.generate_private_key(ec.SECP256R1())
        c = cert(leaf, k, ca_subject, ca_key, sans=sans)
        (d / f"{leaf}.pem").write_bytes(pem(c))
        (d / f"{leaf}.key").write_bytes(key_pem(k))
        (d / f"{leaf}-bundle.pem").write_bytes(pem(c) + key_pem(k))  # HAProxy wants cert + key in one file
        out[leaf], out[f"{leaf}_key"], out[f"{leaf}_bundle"] = d / f"{leaf}.pem", d / f"{leaf}.key", d / f"{leaf}-bundle.pem"
    return out


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """tansu (plain, on a private port) behind HAProxy terminating mutual TLS; yields (settings, certs)."""
    from infra.broker_binary import broker_binary
    from infra.local_broker import free_port

    haproxy = shutil.which("haproxy")
    assert haproxy, "haproxy is needed for the TLS test (apt-get install -y haproxy; .ci/run installs it)"
    d = tmp_path_factory.mktemp("tls")
    certs = _make_certs(d)
    backend, front, misnamed = free_port(), free_port(), free_port()
    url = f"tcp://127.0.0.1:{front}"  # clients are sent back to the TLS port, never to tansu's own
    tansu = subprocess.Popen([str(broker_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{backend}",
                              "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    cfg = d / "haproxy.cfg"
    cfg.write_text(f"""global
    maxconn 512
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend kafka_tls
    bind 127.0.0.1:{front} ssl crt {certs['server_bundle']} ca-file {certs['ca']} verify required
    default_backend tansu
frontend kafka_tls_misnamed
    bind 127.0.0.1:{misnamed} ssl crt {certs['misnamed_bundle']} ca-file {certs['ca']} verify required
    default_backend tansu
backend tansu
    server tansu 127.0.0.1:{backend}
""")
    proxy = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    try:
        _wait_port(backend, tansu, "tansu")
        _wait_port(front, proxy, "haproxy")
        settings = _secure(with_bootstrap(Settings(), f"127.0.0.1:{front}"), security_protocol="SSL",
                           ssl_cafile=certs["ca"], ssl_certfile=certs["client"], ssl_keyfile=certs["client_key"],
                           ssl_check_hostname=True)
        yield settings, certs, misnamed
    finally:
        _stop(proxy)
        _stop(tansu)


@pytest.mark.integration
def test_admin_produce_consume_over_mutual_tls(tls_broker):
    settings, _, _ = tls_broker
    bootstrap = settings.kafka.bootstrap_servers
    wait_for_broker(bootstrap, 20, settings=settings)
    topic = f"tls.{uuid.uuid4().hex[:8]}"
    assert create_topics(bootstrap, [topic], partitions=2, settings=settings) == [topic]
    assert topic_partitions(bootstrap, topic, settings=settings) == 2

    producer = make_producer(settings)
    for i in range(20):
        producer.send(topic, {"i": i}, key=str(i))
    producer.flush(30)
    producer.close()
    fast = FastProducer(settings)  # librdkafka over the same TLS settings
    for i in range(20, 30):
        fast.send(topic, b'{"i": %d}' % i, key=str(i))
    fast.flush(30)
    assert fast.delivered == 10

    consumer = make_consumer(settings, topic, f"g-{uuid.uuid4().hex[:6]}", consumer_timeout_ms=15_000)
    seen = set()
    try:
        deadline = time.monotonic() + 30
        while len(seen) < 30 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen.update(r.value for r in records)
    finally:
        consumer.close()
    assert len(seen) == 30
    assert count_records(settings, topic, idle_timeout_s=2.0, expect=30) == 30


def _one_line_broker_error(fn) -> str:
    with pytest.raises(BrokerError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 600
    return msg


@pytest.mark.integration
def test_tls_refusals_are_one_clear_line(tls_broker):
    settings, certs, misnamed = tls_broker
    bootstrap = settings.kafka.bootstrap_servers
    # The broker's certificate does not chain to the CA we trust.
    msg = _one_line_broker_error(lambda: wait_for_broker(bootstrap, 4, settings=_secure(settings, ssl_cafile=certs["other_ca"])))
    assert f"broker at {bootstrap} over SSL not reachable" in msg and "CERTIFICATE_VERIFY_FAILED" in msg
    # The certificate names another host: refused while ssl_check_hostname is on.
    other = f"127.0.0.1:{misnamed}"
    msg = _one_line_broker_error(lambda: wait_for_broker(other, 4, settings=settings))
    assert "not reachable" in msg and ("hostname" in msg.lower() or "CERTIFICATE_VERIFY_FAILED" in msg)
    # No client certificate: the proxy requires one (mutual TLS).
    no_cert = _secure(settings, ssl_certfile=None, ssl_keyfile=None)
    msg = _one_line_broker_error(lambda: wait_for_broker(bootstrap, 4, settings=no_cert))
    assert "not reachable" in msg
    # Plain text against a TLS port does not work either.
    msg = _one_line_broker_error(lambda: wait_for_broker(bootstrap, 3, settings=_secure(settings, security_protocol="PLAINTEXT")))
    assert "not reachable" in msg


@pytest.fixture(scope="module")
def sasl_broker():
    from infra.broker_binary import broker_binary
    from infra.local_broker import free_port

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--authentication"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, "tansu --authentication")
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@pytest.mark.integration
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_wrong_password_is_one_clear_line(sasl_broker, mechanism):
    settings = _secure(with_bootstrap(Settings(), sasl_broker), security_protocol="SASL_PLAINTEXT",
                       sasl_mechanism=mechanism, sasl_username="argus-fraud", sasl_password="not-the-password")
    msg = _one_line_broker_error(lambda: wait_for_broker(sasl_broker, 4, settings=settings))
    assert msg.startswith(f"broker at {sasl_broker} over SASL_PLAINTEXT ({mechanism} as argus-fraud) not reachable")
    assert "not-the-password" not in msg and "last client error: SCRAM exchange refused by the broker" in msg
    # the same credentials reach topic creation as one line too
    msg = _one_line_broker_error(lambda: create_topics(sasl_broker, ["t"], settings=settings, timeout=3))
    assert "not-the-password" not in msg and f"{mechanism} as argus-fraud" in msg
