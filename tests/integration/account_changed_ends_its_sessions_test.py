"""An account changed while its sessions are open (an address revoked, a new password, the
account deleted) stops sending through them at once: the next MAIL FROM, DATA or end of data
gets 421 4.7.0 and the session closes, with the real binary, smtplib and the CLI going through
the running server's admin API. A new session then authenticates with what the account is now.
Another account's sessions go on."""

import smtplib

import harness

PASSWORD = "account change password"


class AccountChangedEndsItsSessionsTest(harness.ServerTestCase):
    listeners = [
        {"name": "smtps", "address": "127.0.0.1:0", "role": "submission", "tls": "implicit"},
    ]

    @classmethod
    def prepare(cls, server):
        for name in ("alice", "bob", "carol", "dave"):
            server.add_account(name, PASSWORD, "%s@asso.example" % name)

    def login(self, account, password=PASSWORD, expect=235):
        client = self.server.smtp_ssl("smtps")
        self.addCleanup(client.close)
        client.ehlo("client.example")
        try:
            code, text = client.login(account, password)
        except smtplib.SMTPAuthenticationError as error:
            code, text = error.smtp_code, error.smtp_error
        self.assertEqual(code, expect, text)
        return client

    def send(self, client, account):
        sender = "%s@asso.example" % account
        code, text = client.mail(sender)
        self.assertEqual(code, 250, text)
        code, text = client.rcpt("x@example.com")
        self.assertEqual(code, 250, text)
        code, text = client.data(harness.simple_message(sender=sender, to="x@example.com"))
        self.assertEqual(code, 250, text)

    def assert_closed_with_421(self, code, text, account):
        self.assertEqual((code, text[:5]), (421, b"4.7.0"), text)
        self.assertIn(b"Account '%s' changed since you authenticated" % account.encode(), text)

    def test_a_revoked_address_ends_the_session_at_the_next_mail(self):
        alice = self.login("alice")
        self.send(alice, "alice")
        bystander = self.login("dave")
        self.server.cli("account", "revoke", "alice", "alice@asso.example")
        code, text = alice.mail("alice@asso.example")
        self.assert_closed_with_421(code, text, "alice")
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            alice.noop()
        # A new session acts for the account as it is now: that address is no longer its.
        code, text = self.login("alice").mail("alice@asso.example")
        self.assertEqual((code, text[:5]), (553, b"5.7.1"), text)
        self.send(bystander, "dave")  # another account's session goes on

    def test_a_new_password_ends_the_session_at_data(self):
        bob = self.login("bob")
        code, text = bob.mail("bob@asso.example")
        self.assertEqual(code, 250, text)
        code, text = bob.rcpt("x@example.com")
        self.assertEqual(code, 250, text)
        self.server.cli("account", "passwd", "bob", input=b"a brand new password\n")
        code, text = bob.docmd("DATA")
        self.assert_closed_with_421(code, text, "bob")
        self.login("bob", expect=535)
        self.send(self.login("bob", password="a brand new password"), "bob")

    def test_a_deleted_account_sends_nothing_more(self):
        carol = self.login("carol")
        self.send(carol, "carol")
        self.server.cli("account", "del", "carol")
        code, text = carol.mail("carol@asso.example")
        self.assert_closed_with_421(code, text, "carol")
        self.login("carol", expect=535)


if __name__ == "__main__":
    harness.main()
