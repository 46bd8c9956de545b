"""After [smtp] auth_max_failures failed AUTH attempts from one address, further attempts from
that address get 454 4.7.0 without any password check — even with the right password — while
clients from other addresses still authenticate. Guesses sent on many connections at once do
not get more password checks than 8 at once: the checks still running count. (The end of the
window is covered by a unit test on a simulated clock.)"""

import smtplib

import harness

PASSWORD = "correct horse battery"


class AuthFailuresLockOutTheAddressTest(harness.ServerTestCase):
    listeners = [
        {"name": "smtps", "address": "127.0.0.1:0", "role": "submission", "tls": "implicit"},
    ]
    extra = '[smtp]\nauth_max_failures = 3\nauth_failure_window = "10m"\n'

    @classmethod
    def prepare(cls, server):
        server.add_account("alice", PASSWORD, "alice@asso.example")

    def client(self, source):
        host, port = self.server.host_port("smtps")
        client = smtplib.SMTP_SSL(host, port, timeout=20, source_address=(source, 0),
                                  context=harness.insecure_tls_context())
        client.ehlo("client.example")
        return client

    def auth_plain(self, client, password):
        return client.docmd("AUTH", "PLAIN " + harness.plain_response("alice", password))

    def test_lockout_is_per_address(self):
        with self.client("127.0.0.1") as guesser:
            for attempt in range(3):
                code, text = self.auth_plain(guesser, "wrong-%d" % attempt)
                self.assertEqual((code, text[:5]), (535, b"5.7.8"), (attempt, text))
            code, text = self.auth_plain(guesser, PASSWORD)
            self.assertEqual((code, text[:5]), (454, b"4.7.0"), text)
        with self.client("127.0.0.1") as again:  # a new session from the same address
            code, text = self.auth_plain(again, PASSWORD)
            self.assertEqual((code, text[:5]), (454, b"4.7.0"), text)
        with self.client("127.0.0.2") as other:
            code, text = self.auth_plain(other, PASSWORD)
            self.assertEqual((code, text[:5]), (235, b"2.7.0"), text)

    def test_guesses_sent_at_once_get_no_more_checks_than_the_limit(self):
        guessers = [self.client("127.0.0.3") for _ in range(20)]
        try:
            # Every guess is on the wire before the first argon2 check can end.
            for number, guesser in enumerate(guessers):
                guesser.putcmd("AUTH", "PLAIN " + harness.plain_response("alice", "guess-%d" % number))
            replies = [guesser.getreply() for guesser in guessers]
        finally:
            for guesser in guessers:
                guesser.close()
        # While the address has no failure, 8 checks may run at once (a NAT, a webmail host).
        codes = sorted(code for code, _ in replies)
        self.assertEqual(codes, [454] * 12 + [535] * 8, replies)


if __name__ == "__main__":
    harness.main()
