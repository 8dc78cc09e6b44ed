"""Security: the shipped broker configuration (TLS, passwords, least-privilege ACL) and the
gateway's TLS and password settings.

A private mosquitto starts from configs/mosquitto.conf and configs/mosquitto.acl (ports and file
paths replaced), with certificates this test generates: clients without credentials are refused,
a camera can neither publish as another device nor read another device's results, the gateway
serves over TLS with a password and a client certificate, and the password appears nowhere in
its logs or `defed/stats`. A gateway whose TLS files are missing or do not load exits 2 with
one line.
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faults_helpers import Gateway, wait_until
from gateway_helpers import gateway_settings, png, write_config
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.broker import PrivateBroker, free_port
from gateway.errors import UserError
from gateway.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"defed": f"gw-{uuid.uuid4().hex}", "monitor": f"mon-{uuid.uuid4().hex}",
             "cam1": f"c1-{uuid.uuid4().hex}", "cam2": f"c2-{uuid.uuid4().hex}"}


# --- certificates --------------------------------------------------------------------------------


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
                issuer_key: ec.EllipticCurvePrivateKey, ca: bool, sans: list[x509.GeneralName]) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("defed test CA", ca_key, None, ca_key, True, [])
    files = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, sans in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                       ("client", [])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(f"defed test {name}", key, ca.subject, ca_key, False, sans)
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"] = write_key(folder / f"{name}.key", key)
    return files


# --- the hub broker, from the shipped configuration ------------------------------------------


def hub_config(shipped: str, plain_port: int, tls_port: int, files: dict[str, Path], folder: Path) -> str:
    """The shipped mosquitto.conf with our ports, files and user; every other line as shipped."""
    values = {"cafile": files["ca"], "certfile": files["server"], "keyfile": files["server_key"],
              "password_file": files["passwd"], "acl_file": REPO / "configs" / "mosquitto.acl",
              "persistence_location": f"{folder}/", "log_dest": f"file {folder / 'mosquitto.log'}"}
    listeners = iter([f"listener {plain_port} 127.0.0.1", f"listener {tls_port} 127.0.0.1"])
    lines = []
    for line in shipped.splitlines():
        key = line.split(" ", 1)[0]
        if key == "listener":
            line = next(listeners)
        elif key in values:
            line = f"{key} {values[key]}"
        lines.append(line)
    # As root, mosquitto would switch to the `mosquitto` user, who cannot read our temporary files.
    return "\n".join([f"user {getpass.getuser()}", *lines, "log_type all"]) + "\n"


class Hub:
    def __init__(self, broker: PrivateBroker, tls_port: int, files: dict[str, Path]) -> None:
        self.broker, self.tls_port, self.files = broker, tls_port, files

    def client(self, client_id: str, user: str | None, password: str | None = None,
               tls: bool = True) -> tuple[paho.Client, ReasonCode]:
        """A connected MQTT 5 client (or one the broker refused) and the CONNACK's reason code."""
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        if tls:
            client.tls_set(ca_certs=str(self.files["ca"]))
        if user is not None:
            client.username_pw_set(user, password if password is not None else PASSWORDS[user])
        answered = threading.Event()
        reasons: list[ReasonCode] = []
        client.on_connect = lambda _c, _u, _f, reason, _p: (reasons.append(reason), answered.set())
        client.connect("127.0.0.1", self.tls_port if tls else self.broker.port)
        client.loop_start()
        assert answered.wait(30), "no CONNACK"
        return client, reasons[0]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    files = make_pki(folder / "pki")
    files["passwd"] = folder / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(files["passwd"]), user, password],
                       check=True, capture_output=True)
    broker, tls_port = PrivateBroker(), free_port()
    broker.log_path = folder / "mosquitto.log"
    broker.config.write_text(hub_config((REPO / "configs" / "mosquitto.conf").read_text(), broker.port, tls_port,
                                        files, folder))
    with broker:
        yield Hub(broker, tls_port, files)


def close(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


# --- the broker's access control ----------------------------------------------------------------


class TestBrokerAccess:
    def test_shipped_configuration_starts(self, hub: Hub) -> None:
        """mosquitto accepts configs/mosquitto.conf as shipped (paths and ports aside)."""
        assert hub.broker.process is not None and hub.broker.process.poll() is None
        log = hub.broker.log_path.read_text(errors="replace")
        assert "Error" not in log and "Opening ipv4 listen socket on port" in log

    @pytest.mark.parametrize("tls", [True, False])
    def test_client_without_credentials_is_refused(self, hub: Hub, tls: bool) -> None:
        """No user name: CONNACK refused, on the TLS listener and on the loopback one."""
        client, reason = hub.client("intruder", None, tls=tls)
        close(client)
        assert reason.is_failure and reason.value in (0x86, 0x87), reason  # bad credentials / not authorised

    def test_wrong_password_is_refused(self, hub: Hub) -> None:
        """A camera's name with a wrong password: refused."""
        client, reason = hub.client("cam1-guess", "cam1", "not-the-password")
        close(client)
        assert reason.is_failure

    def test_camera_cannot_publish_as_another_device(self, hub: Hub) -> None:
        """cam2 publishing on cam1's frame topic gets 'Not authorized' and the message goes nowhere."""
        spy, _ = hub.client("spy-monitor", "defed")  # what the gateway would see
        seen: list[str] = []
        spy.on_message = lambda _c, _u, m: seen.append(m.topic)
        spy.subscribe("cameras/+/frames", qos=1)
        cam2, reason = hub.client("cam2", "cam2")
        assert not reason.is_failure
        acked = threading.Event()
        codes: list[ReasonCode] = []
        cam2.on_publish = lambda _c, _u, _m, code, _p: (codes.append(code), acked.set())
        cam2.publish("cameras/cam1/frames", b"forged", qos=1)
        assert acked.wait(30)
        acked.clear()
        cam2.publish("cameras/cam2/frames", b"own", qos=1)  # its own topic is fine
        assert acked.wait(30)
        close(cam2)
        close(spy)
        assert codes[0].value == 0x87 and not codes[1].is_failure, codes
        assert "cameras/cam1/frames" not in seen

    def test_camera_cannot_read_another_devices_results(self, hub: Hub) -> None:
        """A result for cam1 reaches cam1 and not cam2, though mosquitto grants cam2's subscription
        (its ACL is checked when a message is delivered, not in the SUBACK)."""
        received: dict[str, list[str]] = {"cam1": [], "cam2": []}
        subscribed = threading.Semaphore(0)
        clients = []
        for user in ("cam1", "cam2"):
            client, _ = hub.client(f"{user}-reader", user)
            client.on_message = lambda _c, _u, m, user=user: received[user].append(m.topic)
            client.on_subscribe = lambda *_args: subscribed.release()
            client.subscribe("defed/cam1/label", qos=1)
            clients.append(client)
        assert subscribed.acquire(timeout=30) and subscribed.acquire(timeout=30)
        gateway, _ = hub.client("gateway-like", "defed")
        gateway.publish("defed/cam1/label", b"{}", qos=1).wait_for_publish(30)
        close(gateway)
        assert wait_until(lambda: received["cam1"] == ["defed/cam1/label"], 30)
        for client in clients:
            close(client)
        assert received["cam2"] == []


# --- the gateway over TLS -------------------------------------------------------------------------


class TestGatewayOverTls:
    def test_serves_over_tls_with_a_password_it_never_shows(
            self, hub: Hub, bundles: dict[str, Path], digits: np.ndarray, tmp_path: Path,
            figures: dict[str, Any]) -> None:
        """The gateway (user defed, client certificate, shared subscription) answers cam1 over TLS;
        cam2 sees nothing of it; the password is in no log line and no stats message."""
        files = hub.files
        settings = gateway_settings(tmp_path / "state", hub.tls_port, bundles["none"], stats_interval_s=0.5, mqtt={
            "username": "defed", "password": PASSWORDS["defed"], "tls_ca": files["ca"],
            "tls_cert": files["client"], "tls_key": files["client_key"], "shared_group": "hub"})
        monitor, _ = hub.client("monitor", "monitor")
        stats: list[bytes] = []
        monitor.on_message = lambda _c, _u, m: stats.append(m.payload)
        monitor.subscribe("defed/stats", qos=1)
        cam1, _ = hub.client("cam1", "cam1")
        cam2, _ = hub.client("cam2-eavesdropper", "cam2")
        answers: dict[str, list[str]] = {"cam1": [], "cam2": []}
        got = threading.Event()
        cam1.on_message = lambda _c, _u, m: (answers["cam1"].append(m.topic), got.set())
        cam2.on_message = lambda _c, _u, m: answers["cam2"].append(m.topic)
        cam1.subscribe("defed/cam1/label", qos=1)
        cam2.subscribe("defed/+/label", qos=1)  # granted as a filter, but cam1's results are not cam2's to read
        gateway = Gateway(settings, tmp_path).start()
        try:
            cam1.publish("cameras/cam1/frames", png(digits[0]), qos=1)
            assert got.wait(60), gateway.log()
            gateway.signal(signal.SIGTERM)
            assert gateway.wait(60) == 0
        finally:
            gateway.stop()
            for client in (cam1, cam2, monitor):
                close(client)
        assert answers["cam1"] == ["defed/cam1/label"] and answers["cam2"] == []
        assert stats, "the monitor user reads defed/stats"
        password = PASSWORDS["defed"]
        assert password not in gateway.log_path.read_text(errors="replace")
        assert not any(password.encode() in s for s in stats)
        figures |= {"tls": True, "acl_denied_reads": len(answers["cam2"]), "stats_messages": len(stats)}

    def test_wrong_password_is_logged_without_the_password(self, hub: Hub, bundles: dict[str, Path],
                                                           tmp_path: Path) -> None:
        """Refused credentials: the gateway says so and retries; the password it tried is not logged."""
        wrong = f"wrong-{uuid.uuid4().hex}"
        settings = gateway_settings(tmp_path / "state", hub.tls_port, bundles["none"], mqtt={
            "username": "defed", "password": wrong, "tls_ca": hub.files["ca"]})
        gateway = Gateway(settings, tmp_path).start(wait_ready=False)
        try:
            gateway.wait_for_log("broker refused connection", 90)
        finally:
            gateway.stop()
        assert wrong not in gateway.log_path.read_text(errors="replace")


# --- TLS settings that cannot work: exit 2, one line, before anything starts -------------------


def serve_exit(config: Path) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=240)
    return done.returncode, done.stderr.strip()


class TestTlsSettings:
    def test_missing_ca_file_exits_2(self, tmp_path: Path) -> None:
        """tls_ca naming no file: `defed: invalid setting mqtt.tls_ca: no such file …`, exit 2."""
        config = write_config(tmp_path / "g.toml", {"state_dir": tmp_path, "mqtt": {"tls_ca": tmp_path / "ca.pem"}})
        code, err = serve_exit(config)
        assert code == 2 and "\n" not in err and re.match(r"defed: invalid setting mqtt\.tls_ca: no such file", err)

    def test_certificate_that_does_not_load_exits_2(self, hub: Hub, tmp_path: Path) -> None:
        """A tls_cert that is not a certificate: one line naming it, exit 2."""
        garbage = tmp_path / "client.pem"
        garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        config = write_config(tmp_path / "g.toml", {"state_dir": tmp_path, "mqtt": {
            "tls_ca": hub.files["ca"], "tls_cert": garbage, "tls_key": hub.files["client_key"]}})
        code, err = serve_exit(config)
        assert code == 2 and "\n" not in err and "tls_cert" in err and str(garbage) in err, err

    def test_unreadable_ca_file_exits_2(self, hub: Hub, tmp_path: Path) -> None:
        """A tls_ca the daemon may not read: one line saying so, exit 2 (as root every file is readable)."""
        if getpass.getuser() == "root":
            pytest.skip("root reads any file; permissions cannot make one unreadable")
        unreadable = tmp_path / "ca.pem"
        unreadable.write_bytes(hub.files["ca"].read_bytes())
        unreadable.chmod(0)
        code, err = serve_exit(write_config(tmp_path / "g.toml", {"state_dir": tmp_path,
                                                                   "mqtt": {"tls_ca": unreadable}}))
        assert code == 2 and "cannot read" in err and "\n" not in err

    def test_a_bad_password_setting_is_not_echoed(self, tmp_path: Path) -> None:
        """An invalid password value is reported by name, never by value."""
        config = tmp_path / "g.toml"
        config.write_text("[mqtt]\npassword = 271828182845\n")
        with pytest.raises(UserError) as caught:
            load_settings(config)
        assert "mqtt.password" in str(caught.value) and "271828182845" not in str(caught.value)
