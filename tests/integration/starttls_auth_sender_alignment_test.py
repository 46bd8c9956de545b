"""Submission rules (issue #2 point 7, RFC 3207, RFC 4954, RFC 6409): AUTH only once TLS is up,
530 for unauthenticated MAIL, 535 for a wrong password, 553 when an account sends as an
address it was not granted (in MAIL FROM or in From:), success for owned addresses and
@domain grants, an account added while the server runs can log in at once, implicit TLS, and
no open relay for untrusted clients."""

import json
import os
import smtplib
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ALICE_PASSWORD = "alice password 1"

LISTENERS = [
    {"name": "submission", "address": "127.0.0.1:0", "role": "submission", "tls": "starttls"},
    {"name": "smtps", "address": "127.0.0.1:0", "role": "submission", "tls": "implicit"},
    {"name": "closed", "address": "127.0.0.1:0", "role": "relay", "tls": "none",
     "trusted_networks": ["192.0.2.0/24"]},
]


def message_from(author, to="bob@example.com", subject="aligned"):
    return harness.simple_message(sender=author, to=to, subject=subject)


class StartTlsAuthSenderAlignmentTest(harness.ServerTestCase):
    listeners = LISTENERS

    @classmethod
    def prepare(cls, server):
        server.add_account("alice", ALICE_PASSWORD, "alice@asso.example", "@team.example")

    def submission(self):
        client = self.server.smtp("submission")
        self.addCleanup(client.close)
        code, _ = client.ehlo("client.example")
        self.assertEqual(code, 250)
        return client

    def secured(self):
        client = self.submission()
        code, text = client.starttls(context=harness.insecure_tls_context())
        self.assertEqual((code, text[:5]), (220, b"2.0.0"), text)
        code, _ = client.ehlo("client.example")
        self.assertEqual(code, 250)
        return client

    def logged_in(self, user="alice", password=ALICE_PASSWORD):
        client = self.secured()
        code, text = client.login(user, password)
        self.assertEqual((code, text[:5]), (235, b"2.7.0"), text)
        return client

    def submit(self, client, sender, message, recipient="bob@example.com"):
        code, text = client.mail(sender)
        self.assertEqual((code, text[:5]), (250, b"2.1.0"), text)
        code, text = client.rcpt(recipient)
        self.assertEqual((code, text[:5]), (250, b"2.1.5"), text)
        code, text = client.data(message)
        self.assertEqual((code, text[:5]), (250, b"2.0.0"), text)
        return harness.queued_id(text.decode())

    def shown(self, message_id):
        return json.loads(self.server.cli("queue", "show", message_id, "--json").stdout)

    # -- before TLS ------------------------------------------------------------------------

    def test_auth_is_not_offered_before_tls(self):
        client = self.submission()
        self.assertTrue(client.has_extn("starttls"))
        self.assertFalse(client.has_extn("auth"), client.esmtp_features)
        client = self.secured()
        self.assertFalse(client.has_extn("starttls"), client.esmtp_features)
        self.assertEqual(client.esmtp_features.get("auth", "").upper().split(), ["PLAIN", "LOGIN"])

    def test_auth_before_tls_is_538(self):
        client = self.submission()
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlAGFsaWNlIHBhc3N3b3JkIDE=")
        self.assertEqual((code, text[:6]), (538, b"5.7.11"), text)
        code, text = client.docmd("AUTH", "LOGIN")
        self.assertEqual((code, text[:6]), (538, b"5.7.11"), text)

    def test_unauthenticated_mail_is_530(self):
        client = self.submission()
        code, text = client.mail("alice@asso.example")
        self.assertEqual((code, text[:5]), (530, b"5.7.0"), text)
        client = self.secured()
        code, text = client.mail("alice@asso.example")
        self.assertEqual((code, text[:5]), (530, b"5.7.0"), text)

    def test_commands_pipelined_after_starttls_are_discarded(self):
        raw = self.server.raw("submission")
        self.addCleanup(raw.close)
        self.assertEqual(raw.reply()[0], 220)
        self.assertEqual(raw.command("EHLO client.example\r\n")[0], 250)
        # CVE-2011-0411: what was sent in clear after STARTTLS must not run inside TLS.
        raw.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<alice@asso.example>\r\n")
        code, text = raw.reply()
        self.assertEqual(text[:9], "220 2.0.0", text)
        self.assertEqual(raw.buffer, b"", "a reply to a pipelined command came in clear")
        tls = harness.insecure_tls_context().wrap_socket(raw.sock, server_hostname="relay")
        secured = harness.RawSmtp(tls)
        self.addCleanup(secured.close)
        code, text = secured.command("EHLO client.example\r\n")
        self.assertEqual(code, 250)
        self.assertTrue(text.startswith("250-relay.test.example"), text)
        code, text = secured.command("NOOP\r\n")
        self.assertEqual(text[:9], "250 2.0.0", text)

    # -- AUTH --------------------------------------------------------------------------------

    def test_wrong_password_is_535(self):
        client = self.secured()
        client.user, client.password = "alice", "not the password"
        with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
            client.auth("PLAIN", client.auth_plain)
        self.assertEqual(caught.exception.smtp_code, 535)
        self.assertTrue(caught.exception.smtp_error.startswith(b"5.7.8"), caught.exception)
        with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        self.assertEqual(caught.exception.smtp_code, 535)
        self.assertTrue(caught.exception.smtp_error.startswith(b"5.7.8"), caught.exception)
        client.user = "nobody"
        with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
            client.auth("PLAIN", client.auth_plain)
        self.assertEqual(caught.exception.smtp_code, 535)
        code, text = client.mail("alice@asso.example")  # still not authenticated
        self.assertEqual((code, text[:5]), (530, b"5.7.0"), text)
        # Each failure is a server log line with the address and the name tried (fail2ban),
        # never the password.
        log = self.server.log()
        self.assertIn("authentication failed for account 'alice' from 127.0.0.1", log)
        self.assertIn("authentication failed for account 'nobody' from 127.0.0.1", log)
        self.assertNotIn("not the password", log)

    def test_auth_login_mechanism(self):
        client = self.secured()
        client.user, client.password = "alice", ALICE_PASSWORD
        code, text = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        self.assertEqual((code, text[:5]), (235, b"2.7.0"), text)
        message_id = self.submit(client, "alice@asso.example", message_from("alice@asso.example"))
        self.assertEqual(self.shown(message_id)["account"], "alice")

    # -- sender alignment ----------------------------------------------------------------------

    def test_owned_address_is_accepted(self):
        client = self.logged_in()
        message_id = self.submit(client, "alice@asso.example",
                                 message_from("Alice <alice@asso.example>"))
        shown = self.shown(message_id)
        self.assertEqual(shown["sender"], "alice@asso.example")
        self.assertEqual(shown["account"], "alice")
        self.assertEqual(shown["listener"], "submission")

    def test_domain_grant_is_accepted(self):
        client = self.logged_in()
        message_id = self.submit(client, "anyone@team.example",
                                 message_from("anyone@team.example"))
        self.assertEqual(self.shown(message_id)["sender"], "anyone@team.example")

    def test_foreign_mail_from_is_553(self):
        client = self.logged_in()
        for foreign in ("alice@private.example", "bob@asso.example"):
            code, text = client.mail(foreign)
            self.assertEqual((code, text[:5]), (553, b"5.7.1"), (foreign, text))
            self.assertGreater(len(text), 10, "553 must say why")
            client.rset()
            self.assertIn("sender <%s> refused (553) for account 'alice' from 127.0.0.1" % foreign,
                          self.server.log())

    def test_foreign_from_header_is_553(self):
        client = self.logged_in()
        before = self.server.cli("queue", "count").stdout
        code, _ = client.mail("alice@asso.example")
        self.assertEqual(code, 250)
        code, _ = client.rcpt("bob@example.com")
        self.assertEqual(code, 250)
        code, text = client.data(message_from("Alice <alice@private.example>"))
        self.assertEqual((code, text[:5]), (553, b"5.7.1"), text)
        self.assertIn("message refused (553) for account 'alice' from 127.0.0.1",
                      self.server.log())
        # The session goes on: the same account may send a well-aligned message next.
        self.submit(client, "alice@asso.example", message_from("alice@asso.example"))
        after = int(self.server.cli("queue", "count").stdout)
        self.assertEqual(after, int(before) + 1)

    def test_account_added_while_running_can_log_in_at_once(self):
        self.server.cli("account", "add", "carol", input=b"carol password\n")
        self.server.cli("account", "grant", "carol", "carol@asso.example")
        client = self.logged_in("carol", "carol password")
        message_id = self.submit(client, "carol@asso.example", message_from("carol@asso.example"))
        self.assertEqual(self.shown(message_id)["account"], "carol")
        code, text = client.mail("alice@asso.example")  # alice's, not carol's
        self.assertEqual((code, text[:5]), (553, b"5.7.1"), text)

    # -- implicit TLS --------------------------------------------------------------------------

    def test_implicit_tls_with_smtp_ssl(self):
        client = self.server.smtp_ssl("smtps")
        self.addCleanup(client.close)
        self.assertIsInstance(client.sock, ssl.SSLSocket)
        code, _ = client.ehlo("client.example")
        self.assertEqual(code, 250)
        self.assertFalse(client.has_extn("starttls"))
        self.assertTrue(client.has_extn("auth"))
        code, text = client.mail("alice@asso.example")
        self.assertEqual((code, text[:5]), (530, b"5.7.0"), text)
        code, text = client.login("alice", ALICE_PASSWORD)
        self.assertEqual(code, 235)
        message_id = self.submit(client, "alice@asso.example", message_from("alice@asso.example"))
        self.assertEqual(self.shown(message_id)["listener"], "smtps")

    # -- no open relay -------------------------------------------------------------------------

    def test_untrusted_client_on_relay_listener_is_554(self):
        client = self.server.smtp("closed")
        self.addCleanup(client.close)
        client.ehlo("client.example")
        code, text = client.mail("app@asso.example")
        self.assertEqual(code, 250, text)
        code, text = client.rcpt("bob@example.com")
        self.assertEqual((code, text[:5]), (554, b"5.7.1"), text)
        code, text = client.docmd("DATA")
        self.assertEqual(code // 100, 5, text)


if __name__ == "__main__":
    harness.main()
