"""SIGHUP reloads without dropping a connection (issue #6 point 5). A STARTTLS listener starts
with certificate A and a shaping file giving the site "shaped" 2 connections. With an SMTP
session open (after STARTTLS, in the middle of a transaction), the certificate files are
replaced by B, the shaping file gives 5 connections, and SIGHUP arrives: a new STARTTLS
connection presents B, the open session (still on A) completes its message, and the pair
already known shows the new limit on /metrics. Then a broken configuration: SIGHUP logs its
file:line, changes nothing (B stays) and the relay still accepts mail (`facteur reload` refuses
to send it at all); a changed io_threads, reloaded through `facteur reload`, is named as needing
a restart."""

import os
import shutil
import signal
import smtplib
import ssl
import tempfile
import unittest
import urllib.request

import harness
from dns_server import DnsServer
from smtp_test_server import SmtpTestServer, make_self_signed_cert

SHAPING = ('[[site]]\nname = "shaped"\nmx = ["*.shaped.test"]\n'
           "[site.limits]\nmax_connections = %d\nmessages_per_hour = 0\n")
GAUGE = 'facteur_site_max_connections{site="shaped",source="default"} %d'


def client_context():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class SighupReloadTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="facteur-certs-")
        for name in ("a", "b"):
            os.mkdir(os.path.join(cls.certs, name))
        cls.cert_a = make_self_signed_cert(os.path.join(cls.certs, "a"), "a.relay.test")
        cls.cert_b = make_self_signed_cert(os.path.join(cls.certs, "b"), "b.relay.test")
        cls.sink = SmtpTestServer(host="127.0.0.63", hostname="mx1.shaped.test").start()
        cls.dns = DnsServer(mx=[("shaped.test", "mx1.shaped.test", 10)],
                            addresses=[("mx1.shaped.test", "127.0.0.63")])
        cls.dns.start()
        extra = ('[tls]\ncertificate_file = "cert.pem"\nprivate_key_file = "key.pem"\n' +
                 harness.delivery_extra(cls.dns, cls.sink.port, delivery=['tls = "none"'],
                                        shaping_file="shaping.toml"))
        cls.server = harness.Facteur(
            listeners=[{"name": "relay", "address": "127.0.0.1:0", "role": "relay",
                        "tls": "starttls"}],
            extra=extra)
        cls.install(cls.cert_a)
        cls.server.write_file("shaping.toml", SHAPING % 2)
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sink.stop()
        shutil.rmtree(cls.certs, ignore_errors=True)

    @classmethod
    def install(cls, pair):
        for source, name in zip(pair, ("cert.pem", "key.pem")):
            shutil.copy(source, os.path.join(cls.server.data_dir, name))

    @staticmethod
    def pem_der(path):
        with open(path) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    def starttls_session(self):
        client = self.server.smtp()
        client.starttls(context=client_context())
        client.ehlo()
        return client

    def metrics(self):
        return urllib.request.urlopen(self.server.admin_url("/metrics"), timeout=10).read().decode()

    def hup_and_wait(self, what, cli=False):
        before = self.server.log().count("SIGHUP: ")
        if cli:
            out = self.server.cli("reload").stdout.decode()
            self.assertIn("SIGHUP sent to facteur (pid %d)" % self.server.process.pid, out)
        else:
            self.server.process.send_signal(signal.SIGHUP)
        return harness.wait_until(
            lambda: self.server.log().count("SIGHUP: ") > before + 1 and what in self.server.log(),
            timeout=10, what=what)

    def test_reload(self):
        # A pair with the site exists: one message delivered under the first limits.
        with self.starttls_session() as first:
            first.sendmail("app@asso.example", ["one@shaped.test"],
                           harness.simple_message(to="one@shaped.test"))
        self.sink.wait_for(lambda: len(self.sink.transactions) >= 1, timeout=20)
        harness.wait_until(lambda: GAUGE % 2 in self.metrics(), timeout=15, what="limit 2")

        old = self.starttls_session()
        self.assertEqual(old.sock.getpeercert(binary_form=True), self.pem_der(self.cert_a[0]))
        self.assertEqual(old.mail("app@asso.example")[0], 250)
        self.assertEqual(old.rcpt("two@shaped.test")[0], 250)

        self.install(self.cert_b)
        self.server.write_file("shaping.toml", SHAPING % 5)
        self.hup_and_wait("SIGHUP: reloaded:")
        summary = [l for l in self.server.log().splitlines() if "SIGHUP: reloaded:" in l][-1]
        self.assertIn("TLS certificate", summary)
        self.assertIn("shaping rules", summary)

        with self.starttls_session() as new:
            self.assertEqual(new.sock.getpeercert(binary_form=True), self.pem_der(self.cert_b[0]))
            self.assertEqual(new.noop()[0], 250)
        # The session opened before the reload goes on, on certificate A.
        self.assertEqual(old.sock.getpeercert(binary_form=True), self.pem_der(self.cert_a[0]))
        code, reply = old.data(harness.simple_message(to="two@shaped.test"))
        self.assertEqual(code, 250, reply)
        old.quit()
        self.sink.wait_for(lambda: len(self.sink.transactions) >= 2, timeout=20)
        # The pair known before the reload takes the new limit.
        harness.wait_until(lambda: GAUGE % 5 in self.metrics(), timeout=15, what="limit 5")

        # A broken file: its error names file:line, nothing changes, mail is still accepted.
        with open(self.server.config_path) as f:
            good = f.read()
        broken = good.replace("io_threads = 2", "io_threads = 3") + "\n[smtp\n"
        with open(self.server.config_path, "w") as f:
            f.write(broken)
        # `facteur reload` checks first and sends nothing; a bare SIGHUP is refused by the server.
        refused = self.server.cli("reload", check=False)
        self.assertEqual(refused.returncode, 78)
        self.assertRegex(refused.stderr.decode(), r"facteur\.toml:\d+")
        self.hup_and_wait("configuration not reloaded")
        self.assertRegex(self.server.log(),
                         r"configuration not reloaded, the running one stays "
                         r"\(the events log was reopened\): .*facteur\.toml:\d+")
        with self.starttls_session() as after:
            self.assertEqual(after.sock.getpeercert(binary_form=True),
                             self.pem_der(self.cert_b[0]))
            after.sendmail("app@asso.example", ["three@shaped.test"],
                           harness.simple_message(to="three@shaped.test"))

        # A valid file with a key only a restart applies: named, the rest reloaded.
        with open(self.server.config_path, "w") as f:
            f.write(good.replace("io_threads = 2", "io_threads = 3"))
        self.hup_and_wait("io_threads changed: needs a restart", cli=True)
        self.assertIsNone(self.server.process.poll())


if __name__ == "__main__":
    harness.main()
