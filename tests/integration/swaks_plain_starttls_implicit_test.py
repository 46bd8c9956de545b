"""swaks, an independent SMTP client, submits through every kind of listener (issue #2 point 9):
plain with PIPELINING on a relay listener, STARTTLS with AUTH PLAIN and AUTH LOGIN on a
submission listener, and implicit TLS (--tls-on-connect) on an implicit listener."""

import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SWAKS = "/usr/bin/swaks"
PASSWORD = "correct horse battery staple"

LISTENERS = [
    {"name": "relay", "address": "127.0.0.1:0", "role": "relay", "tls": "none"},
    {"name": "submission", "address": "127.0.0.1:0", "role": "submission", "tls": "starttls"},
    {"name": "smtps", "address": "127.0.0.1:0", "role": "submission", "tls": "implicit"},
]


class SwaksTest(harness.ServerTestCase):
    listeners = LISTENERS

    @classmethod
    def prepare(cls, server):
        # deploy/setup.sh installs swaks: its absence is a broken setup, not a reason to skip.
        assert os.access(SWAKS, os.X_OK), "%s is not installed" % SWAKS
        # Made with the server stopped, straight into the store.
        server.add_account("alice", PASSWORD, "alice@asso.example")

    def swaks(self, listener, *options):
        host, port = self.server.host_port(listener)
        command = [SWAKS, "--server", "%s:%d" % (host, port), "--helo", "client.example",
                   "--timeout", "10"] + list(options)
        result = subprocess.run(command, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        return result.returncode, result.stdout.decode("utf-8", "replace") + \
            result.stderr.decode("utf-8", "replace")

    def assert_queued(self, transcript, sender, recipient, account, listener):
        match = re.search(r"250 2\.0\.0 Ok: queued as ([0-9A-Za-z]{26})", transcript)
        self.assertIsNotNone(match, transcript)
        shown = json.loads(self.server.cli("queue", "show", match.group(1), "--json").stdout)
        self.assertEqual(shown["sender"], sender)
        self.assertEqual(shown["recipients"], [recipient])
        self.assertEqual(shown["account"], account)
        self.assertEqual(shown["listener"], listener)
        return match.group(1)

    def test_plain_with_pipelining(self):
        code, transcript = self.swaks("relay", "--pipeline", "--from", "app@asso.example",
                                      "--to", "bob@example.com")
        self.assertEqual(code, 0, transcript)
        self.assertIn("PIPELINING", transcript)
        self.assert_queued(transcript, "app@asso.example", "bob@example.com", "", "relay")

    def test_starttls_auth_plain(self):
        code, transcript = self.swaks("submission", "--tls", "--auth", "PLAIN",
                                      "--auth-user", "alice", "--auth-password", PASSWORD,
                                      "--from", "alice@asso.example", "--to", "bob@example.com")
        self.assertEqual(code, 0, transcript)
        self.assertIn("220 2.0.0", transcript)  # STARTTLS answered
        self.assertIn("235 2.7.0", transcript)
        self.assert_queued(transcript, "alice@asso.example", "bob@example.com", "alice",
                           "submission")

    def test_starttls_auth_login(self):
        code, transcript = self.swaks("submission", "--tls", "--auth", "LOGIN",
                                      "--auth-user", "alice", "--auth-password", PASSWORD,
                                      "--from", "alice@asso.example", "--to", "carol@example.com")
        self.assertEqual(code, 0, transcript)
        self.assertIn("235 2.7.0", transcript)
        self.assert_queued(transcript, "alice@asso.example", "carol@example.com", "alice",
                           "submission")

    def test_starttls_pipelined(self):
        code, transcript = self.swaks("submission", "--tls", "--pipeline", "--auth", "PLAIN",
                                      "--auth-user", "alice", "--auth-password", PASSWORD,
                                      "--from", "alice@asso.example", "--to", "dan@example.com")
        self.assertEqual(code, 0, transcript)
        self.assert_queued(transcript, "alice@asso.example", "dan@example.com", "alice",
                           "submission")

    def test_implicit_tls_auth_plain(self):
        code, transcript = self.swaks("smtps", "--tls-on-connect", "--auth", "PLAIN",
                                      "--auth-user", "alice", "--auth-password", PASSWORD,
                                      "--from", "alice@asso.example", "--to", "erin@example.com")
        self.assertEqual(code, 0, transcript)
        self.assertIn("220 relay.test.example ESMTP facteur", transcript)
        self.assert_queued(transcript, "alice@asso.example", "erin@example.com", "alice", "smtps")

    def test_wrong_password_is_refused(self):
        code, transcript = self.swaks("submission", "--tls", "--auth", "PLAIN",
                                      "--auth-user", "alice", "--auth-password", "wrong",
                                      "--from", "alice@asso.example", "--to", "bob@example.com")
        self.assertNotEqual(code, 0, transcript)
        self.assertIn("535 5.7.8", transcript)
        self.assertNotIn("queued as", transcript)


if __name__ == "__main__":
    harness.main()
