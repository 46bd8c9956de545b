"""DKIM signing on the submission path (issue #4), against the real binary:

keys made with `facteur dkim keygen` (Ed25519 and RSA for one domain: dual signing); a message
submitted by DATA and one by BDAT are queued with both DKIM-Signature fields, which dkimpy
(Debian's python3-dkim) verifies on the queued bytes; a domain without a key stays unsigned and
is counted; the metrics count signatures; `facteur dkim check` finds the published records in a
real DNS server (dnsmasq) and tells a wrong key apart; SIGHUP reloads a replaced key file; and a
key file that others may read stops the start with a message naming it."""

import json
import os
import re
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import dns_server  # noqa: E402

import dkim  # noqa: E402  (Debian's python3-dkim: run with /usr/bin/python3)

KEYS = [("asso.test", "ed", "ed25519"), ("asso.test", "rsa", "rsa-2048")]

CONFIG = """
[delivery]
enabled = false
validate_recipient_domains = false
[dkim]
threads = 2
[[dkim.key]]
domain = "asso.test"
selector = "ed"
algorithm = "ed25519-sha256"
key_file = "dkim/asso.test.ed.pem"
[[dkim.key]]
domain = "asso.test"
selector = "rsa"
algorithm = "rsa-sha256"
key_file = "dkim/asso.test.rsa.pem"
"""


def keygen(server, domain, selector, algorithm, out=None):
    args = ["dkim", "keygen", "--domain", domain, "--selector", selector,
            "--algorithm", algorithm, "--json"]
    if out:
        args += ["--out", out]
    return json.loads(server.cli(*args).stdout)


def signatures(message):
    headers, _ = dkim.rfc822_parse(message)
    return [dkim.util.parse_tag_value(v) for k, v in headers if k.lower() == b"dkim-signature"]


class DkimSignedSubmissionTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Facteur(extra=CONFIG)
        cls.dns = None
        try:
            cls.records = {}
            for domain, selector, algorithm in KEYS:
                made = keygen(cls.server, domain, selector, algorithm)
                assert os.stat(made["key_file"]).st_mode & 0o777 == 0o600, made
                cls.records[made["name"]] = made["value"]
            cls.dns = dns_server.DnsServer(
                txt=[(name, [value]) for name, value in cls.records.items()])
            cls.dns.start()
            # The nameserver is known only now: its table goes at the end of the file.
            with open(cls.server.config_path, "a") as f:
                f.write("[dns]\nnameservers = [%s]\n" % harness.toml_string(cls.dns.nameserver))
            cls.server.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        if cls.dns is not None:
            cls.dns.cleanup()

    def dnsfunc(self, name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return self.records.get(name.rstrip("."), "").encode()

    def queued(self, reply_text):
        return self.server.cli("queue", "show", harness.queued_id(reply_text), "--body").stdout

    def assert_verifies(self, message, expected_signatures=2):
        found = signatures(message)
        self.assertEqual(len(found), expected_signatures, message[:1500])
        d = dkim.DKIM(message)
        for i in range(len(found)):
            self.assertTrue(d.verify(idx=i, dnsfunc=self.dnsfunc),
                            "signature %d (%s) does not verify:\n%s" % (
                                i, found[i].get(b"a"), message[:2000]))
        # Tampering is noticed: the check above can fail.
        changed = message.replace(b"this is a test", b"this is a TEST")
        self.assertNotEqual(changed, message)
        try:
            tampered_ok = dkim.DKIM(changed).verify(idx=0, dnsfunc=self.dnsfunc)
        except dkim.ValidationError:  # "body hash mismatch" comes as an exception
            tampered_ok = False
        self.assertFalse(tampered_ok)
        return found

    def test_data_submission_is_dual_signed(self):
        with self.server.smtp() as client:
            client.ehlo("client.test")
            reply = client.sendmail("app@asso.test", ["bob@example.test"], harness.simple_message(
                sender="App <app@asso.test>", to="bob@example.test", subject="signed by DATA"))
            self.assertEqual(reply, {})
        message = self.last_message("signed by DATA")
        found = self.assert_verifies(message)
        self.assertEqual(sorted(s[b"a"] for s in found), [b"ed25519-sha256", b"rsa-sha256"])
        for s in found:
            self.assertEqual(s[b"d"], b"asso.test")
            self.assertEqual(s[b"c"], b"relaxed/relaxed")
            self.assertNotIn(b"l", s)
            self.assertLessEqual(abs(int(s[b"t"]) - time.time()), 120)
            # Over-signing: From and Subject are listed once more than they occur.
            names = [n.strip().lower() for n in s[b"h"].split(b":")]
            self.assertEqual(names.count(b"from"), 2)
            self.assertEqual(names.count(b"subject"), 2)
            self.assertIn(b"list-unsubscribe-post", names)

    def last_message(self, subject):
        return harness.queued_message_with_subject(self.server, subject)

    def test_bdat_submission_is_dual_signed(self):
        raw = self.server.raw()
        try:
            self.assertEqual(raw.reply()[0], 220)
            self.assertEqual(raw.command("EHLO client.test\r\n")[0], 250)
            message = harness.simple_message(sender="app@asso.test", to="bob@example.test",
                                             subject="signed by BDAT")
            half = len(message) // 2
            self.assertEqual(raw.command("MAIL FROM:<app@asso.test>\r\n")[0], 250)
            self.assertEqual(raw.command("RCPT TO:<bob@example.test>\r\n")[0], 250)
            self.assertEqual(raw.command(b"BDAT %d\r\n" % half + message[:half])[0], 250)
            code, text = raw.command(b"BDAT %d LAST\r\n" % (len(message) - half) + message[half:])
            self.assertEqual(code, 250, text)
        finally:
            raw.close()
        self.assert_verifies(self.queued(text))

    def test_domain_without_key_stays_unsigned(self):
        before = self.metric("facteur_dkim_unsigned_total")
        with self.server.smtp() as client:
            client.sendmail("app@other.test", ["bob@example.test"], harness.simple_message(
                sender="app@other.test", to="bob@example.test", subject="not signed"))
        message = self.last_message("not signed")
        self.assertEqual(signatures(message), [])
        self.assertNotIn(b"DKIM-Signature", message)
        self.assertEqual(self.metric("facteur_dkim_unsigned_total"), before + 1)

    def metric(self, name):
        with urllib.request.urlopen(self.server.admin_url("/metrics"), timeout=10) as response:
            text = response.read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(name + " ") or line.startswith(name + "{")]
        return sum(values)

    def test_metrics_count_signatures(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.test", ["bob@example.test"], harness.simple_message(
                sender="app@asso.test", to="bob@example.test", subject="counted"))
        with urllib.request.urlopen(self.server.admin_url("/metrics"), timeout=10) as response:
            text = response.read().decode()
        for algorithm in ("ed25519-sha256", "rsa-sha256"):
            match = re.search(r'facteur_dkim_signatures_total\{algorithm="%s",engine="native"\} (\S+)'
                              % algorithm, text)
            self.assertIsNotNone(match, text)
            self.assertGreaterEqual(float(match.group(1)), 1)
        self.assertIn("facteur_dkim_sign_seconds_count", text)
        self.assertIn("facteur_dkim_queue_depth", text)

    def test_dkim_check_against_dns(self):
        result = self.server.cli("dkim", "check", "asso.test")
        out = result.stdout.decode()
        self.assertEqual(out.count("ok "), 2, out)
        self.assertIn("ed._domainkey.asso.test", out)
        # Another key for a published selector: a mismatch, exit 65.
        other = os.path.join(self.server.data_dir, "other.pem")
        keygen(self.server, "asso.test", "x", "ed25519", out=other)
        result = self.server.cli("dkim", "check", "asso.test", "--selector", "ed", "--key", other,
                                 check=False)
        self.assertEqual(result.returncode, 65, result)
        self.assertIn(b"MISMATCH", result.stdout)
        # A selector nobody published.
        result = self.server.cli("dkim", "check", "asso.test", "--selector", "nope", "--key",
                                 other, check=False)
        self.assertEqual(result.returncode, 65, result)
        self.assertIn(b"missing", result.stdout)

    def test_keygen_refuses_what_a_dkim_key_refuses(self):
        # The domain and selector also name the key file: one that [[dkim.key]] would refuse,
        # or that walks out of DATA_DIR/dkim, writes nothing.
        dkim_dir = os.path.join(self.server.data_dir, "dkim")
        before = sorted(os.listdir(self.server.data_dir)), sorted(os.listdir(dkim_dir))
        for domain, selector, wrong in [("bad domain", "s1", b"--domain"),
                                        ("asso.test", "../../escaped", b"--selector"),
                                        ("asso.test", "a/b", b"--selector")]:
            result = self.server.cli("dkim", "keygen", "--domain", domain, "--selector",
                                     selector, "--algorithm", "ed25519", check=False)
            self.assertEqual(result.returncode, 64, result)
            self.assertIn(wrong, result.stderr)
        self.assertEqual((sorted(os.listdir(self.server.data_dir)), sorted(os.listdir(dkim_dir))),
                         before)

    def test_zz_sighup_reloads_a_replaced_key(self):
        # Runs last (name order): it changes the Ed25519 key of the shared server.
        new = os.path.join(self.server.data_dir, "dkim", "new-ed.pem")
        made = keygen(self.server, "asso.test", "ed", "ed25519", out=new)
        os.replace(new, os.path.join(self.server.data_dir, "dkim", "asso.test.ed.pem"))
        old_records = dict(self.records)
        self.records["ed._domainkey.asso.test"] = made["value"]
        self.server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        attempt = 0
        while True:
            attempt += 1
            subject = "after reload %d" % attempt
            with self.server.smtp() as client:
                client.sendmail("app@asso.test", ["bob@example.test"], harness.simple_message(
                    sender="app@asso.test", to="bob@example.test", subject=subject))
            message = self.last_message(subject)
            index = [s[b"s"] for s in signatures(message)].index(b"ed")
            if dkim.DKIM(message).verify(idx=index, dnsfunc=self.dnsfunc):
                break
            self.assertLess(time.monotonic(), deadline, "the new key was never used")
            time.sleep(0.1)
        self.records = old_records  # the old record no longer matches what is signed now
        self.records["ed._domainkey.asso.test"] = made["value"]
        self.assertIn("DKIM keys loaded", self.server.log())


class DkimKeyPermissionsTest(harness.unittest.TestCase):
    def test_key_readable_by_others_stops_the_start(self):
        server = harness.Facteur(extra=CONFIG)
        self.addCleanup(server.cleanup)
        for domain, selector, algorithm in KEYS:
            keygen(server, domain, selector, algorithm)
        path = os.path.join(server.data_dir, "dkim", "asso.test.rsa.pem")
        os.chmod(path, 0o644)
        with self.assertRaises(AssertionError) as raised:
            server.start()
        self.assertIn(path, str(raised.exception))
        self.assertIn("chmod 600", str(raised.exception))


if __name__ == "__main__":
    harness.main()
