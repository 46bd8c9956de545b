"""Test harness for integration scenarios: runs the real build/facteur on loopback.

Each scenario file is a unittest module run by ctest with Debian's /usr/bin/python3. The server
is started on port 0; the addresses it really bound are read from <data_dir>/endpoints.json,
which `facteur serve` writes once every listener is up.
"""

import datetime
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

# A developer's shell may name a configuration for commands run without --config: never here.
os.environ.pop("FACTEUR_CONFIG", None)
BINARY = os.environ.get("FACTEUR_BINARY") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "facteur")

# The bounded wait for the server to come up or go down.
START_TIMEOUT = 30.0


def toml_string(value):
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class Facteur:
    """One facteur server process with its own data directory.

    listeners: list of dicts with keys name, address (e.g. "127.0.0.1:0" or "unix:facteur.sock"),
    role, tls, trusted_networks. extra: TOML text appended to the configuration.
    """

    def __init__(self, listeners=None, extra="", data_dir=None, admin=True, io_threads=2):
        self.owns_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="facteur-it-")
        if listeners is None:
            listeners = [
                {"name": "relay", "address": "127.0.0.1:0", "role": "relay", "tls": "none"},
                {"name": "local", "address": "unix:facteur.sock"},
            ]
        lines = [
            "data_dir = %s" % toml_string(self.data_dir),
            'hostname = "relay.test.example"',
            "io_threads = %d" % io_threads,
            "[admin]",
            'address = %s' % toml_string("127.0.0.1:0" if admin else ""),
        ]
        if "[delivery]" not in extra:
            # Scenarios about submission keep their mail: no delivery attempts, no DNS at RCPT
            # time (this machine has no resolver to ask). Delivery scenarios set [delivery].
            lines += ["[delivery]", "enabled = false", "validate_recipient_domains = false"]
        # Top-level tables must come before [[listener]] arrays only for readability; TOML
        # allows any order, but `extra` may hold tables too, so it goes before the listeners.
        lines.append(extra)
        for listener in listeners:
            lines.append("[[listener]]")
            for key, value in listener.items():
                if isinstance(value, list):
                    lines.append("%s = [%s]" % (key, ", ".join(toml_string(v) for v in value)))
                else:
                    lines.append("%s = %s" % (key, toml_string(value)))
        self.config_path = os.path.join(self.data_dir, "facteur.toml")
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.process = None
        self.endpoints = None
        self.log_path = os.path.join(self.data_dir, "facteur.log")

    # -- process control ------------------------------------------------------------------

    def start(self):
        endpoints_path = os.path.join(self.data_dir, "endpoints.json")
        if os.path.exists(endpoints_path):
            os.unlink(endpoints_path)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen(
                [BINARY, "serve", "--config", self.config_path],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("facteur exited with %s:\n%s" % (
                    self.process.returncode, self.log()))
            if os.path.exists(endpoints_path):
                try:
                    with open(endpoints_path) as f:
                        self.endpoints = json.load(f)
                    if self.endpoints.get("pid") == self.process.pid:
                        return self
                except ValueError:
                    pass  # being written
            time.sleep(0.02)
        raise AssertionError("facteur did not come up within %ss:\n%s" % (
            START_TIMEOUT, self.log()))

    def stop(self, sig=signal.SIGTERM):
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def write_file(self, name, text):
        """Writes `text` to `name` in the data directory (where relative config paths point)."""
        with open(os.path.join(self.data_dir, name), "w") as f:
            f.write(text)

    def start_or(self, cleanup):
        """start(); on failure runs `cleanup` (a test class's tearDownClass) and re-raises."""
        try:
            return self.start()
        except BaseException:
            cleanup()
            raise

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def cleanup(self):
        if self.process is not None and self.process.poll() is not None:
            # It died on its own: its log is what the test report needs.
            sys.stderr.write("facteur exited with %s; its log:\n%s\n" % (
                self.process.returncode, self.log()[-20000:]))
        code = self.stop()
        if code not in (0, None):
            sys.stderr.write("facteur stopped with %s; its log:\n%s\n" % (
                code, self.log()[-20000:]))
        if self.owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- endpoints ------------------------------------------------------------------------

    def listener(self, name):
        for listener in self.endpoints["listeners"]:
            if listener["name"] == name:
                return listener
        raise KeyError(name)

    def host_port(self, name):
        address = self.listener(name)["address"]
        host, _, port = address.rpartition(":")
        return host.strip("[]"), int(port)

    def socket_path(self):
        return self.endpoints["socket"]

    def admin_url(self, path=""):
        return "http://%s%s" % (self.endpoints["admin"], path)

    def metrics(self):
        """The text of the admin listener's /metrics."""
        with urllib.request.urlopen(self.admin_url("/metrics"), timeout=10) as response:
            return response.read().decode()

    # -- clients --------------------------------------------------------------------------

    def smtp(self, name="relay", timeout=10):
        host, port = self.host_port(name)
        return smtplib.SMTP(host, port, timeout=timeout)

    def smtp_ssl(self, name, timeout=10):
        host, port = self.host_port(name)
        return smtplib.SMTP_SSL(host, port, timeout=timeout, context=insecure_tls_context())

    def raw(self, name="relay", timeout=10):
        host, port = self.host_port(name)
        return RawSmtp(socket.create_connection((host, port), timeout=timeout))

    def raw_unix(self, timeout=10):
        """A RawSmtp session over the server's Unix socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path())
        except OSError:
            sock.close()
            raise
        return RawSmtp(sock)

    def add_account(self, name, password, *grants):
        """Creates an account with the CLI (server stopped or running) and grants it `grants`."""
        self.cli("account", "add", name, input=(password + "\n").encode())
        for pattern in grants:
            self.cli("account", "grant", name, pattern)

    def site_pair(self, site_key, source):
        """The (site, source) pair as `site list --json` shows it, or None when not listed."""
        for site in json.loads(self.cli("site", "list", "--json").stdout)["sites"]:
            if site["key"] == site_key:
                return {p["source"]: p for p in site["sources"]}.get(source)
        return None

    def cli(self, *args, input=None, check=True, data_dir=True):
        """Runs `facteur ARGS --config <this config>`; returns the CompletedProcess."""
        command = [BINARY] + list(args)
        if data_dir:
            command += ["--config", self.config_path]
        result = subprocess.run(command, input=input, capture_output=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError("%s exited %d:\nstdout: %s\nstderr: %s" % (
                command, result.returncode, result.stdout.decode(), result.stderr.decode()))
        return result


class ServerTestCase(unittest.TestCase):
    """One server for the whole class. Subclasses set `listeners` / `extra` and may override
    prepare(server), which runs before the server starts (e.g. to create accounts)."""

    listeners = None
    extra = ""

    @classmethod
    def prepare(cls, server):
        pass

    @classmethod
    def config_extra(cls):
        return cls.extra

    @classmethod
    def setUpClass(cls):
        cls.server = Facteur(listeners=cls.listeners, extra=cls.config_extra())
        try:
            cls.prepare(cls.server)
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()


def insecure_tls_context():
    """Our default certificate is self-signed: tests check TLS works, not who signed it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RawSmtp:
    """A byte-level SMTP client for inputs smtplib refuses to send."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def reply(self):
        """Reads one reply; returns (code, full text). Raises on EOF."""
        lines = []
        while True:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed after %r" % (b"".join(lines)))
                self.buffer += chunk
            line, _, self.buffer = self.buffer.partition(b"\n")
            lines.append(line + b"\n")
            line = line.rstrip(b"\r")
            if len(line) < 4 or line[3:4] == b" ":
                text = b"".join(lines).decode("utf-8", "replace")
                return int(line[:3]), text

    def command(self, data):
        self.send(data)
        return self.reply()

    def closed(self, timeout=5):
        """True when the server closed the connection (EOF) within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def delivery_extra(dns, smtp_port, delivery=(), shaping_file=None, clock=None, sources=()):
    """The `extra` TOML of a delivery scenario: DNS from `dns` (a dns_server.DnsServer), MX hosts
    on `smtp_port`, more [delivery] lines, a shaping file (a path, relative ones under the data
    directory: see Facteur.write_file), a scaled clock (test_clock.ScaledClock) and [[source]]
    tables (dicts of their keys)."""
    lines = ["[dns]", "nameservers = [%s]" % toml_string(dns.nameserver),
             "[delivery]", "smtp_port = %d" % smtp_port]
    lines += list(delivery)
    if shaping_file is not None:
        lines += ["[shaping]", "file = %s" % toml_string(shaping_file)]
    if clock is not None:
        lines += ["[clock]", "speed = %r" % clock.speed, "anchor = %r" % clock.anchor]
    for source in sources:
        lines.append("[[source]]")
        lines += ["%s = %s" % (key, toml_string(value)) for key, value in source.items()]
    return "\n".join(lines)


def start_one_site_relay(test_class, domain, mx_address, mx_port, site, limits, delivery=()):
    """The usual delivery scenario with one MX, set up as attributes of `test_class` (in its
    setUpClass): `dns`, a dns_server.DnsServer that gives `domain` the MX host mx1.<domain> at
    `mx_address`; `server`, a started Facteur delivering to port `mx_port` (more [delivery]
    lines: `delivery`), whose shaping file has one site named `site` for the MX hosts
    *.<domain>, with `limits` (a dict of integer [site.limits] keys). When facteur fails to
    start, test_class.tearDownClass runs first."""
    from dns_server import DnsServer
    mx_host = "mx1." + domain
    test_class.dns = DnsServer(mx=[(domain, mx_host, 10)], addresses=[(mx_host, mx_address)])
    test_class.dns.start()
    test_class.server = Facteur(extra=delivery_extra(test_class.dns, mx_port, delivery=delivery,
                                                     shaping_file="shaping.toml"))
    shaping = "[[site]]\nname = %s\nmx = [%s]\n[site.limits]\n" % (
        toml_string(site), toml_string("*." + domain))
    shaping += "".join("%s = %d\n" % (key, value) for key, value in limits.items())
    test_class.server.write_file("shaping.toml", shaping)
    test_class.server.start_or(test_class.tearDownClass)


def wait_clear_of_hour_end(margin=20):
    """Account quotas count per clock hour (UTC): a scenario that straddles an hour's end sees its
    count reset. Sleeps past the end (at most `margin` + 1 seconds) when it is that close."""
    left = 3600 - int(time.time()) % 3600
    if left <= margin:
        time.sleep(left + 1)


def parse_time(text):
    """Seconds since the epoch of an RFC 3339 time as the admin API writes it."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wait_until(predicate, timeout=20, what="condition"):
    """Polls predicate() (a real process is doing the work) until it returns something true,
    which is returned; raises AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("%s not met within %ss" % (what, timeout))


def metric_sample(text, name, **labels):
    """The value of the series `name` whose labels include `labels` in the /metrics `text`;
    None when absent."""
    for match in re.finditer(r"^%s\{([^}]*)\} (\S+)$" % re.escape(name), text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(2))
    match = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(match.group(1)) if match and not labels else None


def read_events(server):
    """The events log of `server` (DATA_DIR/events.log), one dict per line; [] before any."""
    path = os.path.join(server.data_dir, "events.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def events_when(server, enough, timeout=20, what="the events awaited"):
    """The events log of `server` once enough(events) is true: the writer thread may write a
    line up to 20 ms after the event (it gathers lines on a busy relay), so a test that saw the
    effect elsewhere (a message at the MX, a CLI answer) waits for the line too."""
    return wait_until(lambda: (lambda events: events if enough(events) else None)(
        read_events(server)), timeout=timeout, what=what)


def plain_response(user, password):
    """The base64 AUTH PLAIN response of RFC 4616: NUL user NUL password."""
    import base64
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


def queued_id(reply_text):
    """The id from '250 2.0.0 Ok: queued as ID'."""
    marker = "queued as "
    assert marker in reply_text, reply_text
    return reply_text.split(marker, 1)[1].split()[0]


def queued_message_with_subject(server, subject):
    """The queued message (its bytes, `queue show --body`) whose Subject: is `subject`."""
    listing = json.loads(server.cli("queue", "ls", "--json").stdout)["messages"]
    for entry in listing:
        body = server.cli("queue", "show", entry["id"], "--body").stdout
        if ("Subject: %s" % subject).encode() in body:
            return body
    raise AssertionError("no queued message with subject %r" % subject)


def simple_message(sender="app@asso.example", to="bob@example.com", subject="hello",
                   body="Hello,\r\nthis is a test.\r\n"):
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\n%s" % (sender, to, subject, body)).encode()


def main():
    unittest.main(verbosity=2)
