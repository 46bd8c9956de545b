"""[quota] reloads with SIGHUP (issue #6 point 5), without a restart and keeping the counts: an
account sends 2 messages under an hourly limit of 10; its limit is lowered to 2 in the file and
SIGHUP arrives; on the session opened before the reload, its next MAIL gets 450 4.7.1 naming the
new limit (the 2 messages already sent still count), the reload summary names [quota] and no
restart is asked for. Raised again, the same session sends at once."""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

PASSWORD = "quota reload password"
SENDER = "alice@quota.example"

# The anomaly detection stays out of the way: a burst needs more than 1000 messages.
EXTRA = """
[quota]
messages_per_hour = 50
anomaly_min_messages = 1000

[[quota.account]]
name = "alice"
messages_per_hour = %d
"""


class QuotaReloadBySighupTest(harness.ServerTestCase):
    listeners = [{"name": "smtps", "address": "127.0.0.1:0", "role": "submission",
                  "tls": "implicit"}]
    extra = EXTRA % 10

    @classmethod
    def prepare(cls, server):
        server.add_account("alice", PASSWORD, SENDER)

    def set_alice_limit(self, limit):
        with open(self.server.config_path) as f:
            text = f.read()
        current = EXTRA % (2 if limit == 10 else 10)
        self.assertIn(current, text)
        with open(self.server.config_path, "w") as f:
            f.write(text.replace(current, EXTRA % limit))

    def reload(self):
        before = self.server.log().count("SIGHUP: reloaded:")
        self.server.process.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: self.server.log().count("SIGHUP: reloaded:") > before,
                           timeout=10, what="the reload summary")
        return [line for line in self.server.log().splitlines()
                if "SIGHUP: reloaded:" in line][-1]

    def test_lowered_hourly_limit_applies_to_the_next_message(self):
        harness.wait_clear_of_hour_end()
        pid = self.server.process.pid
        client = self.server.smtp_ssl("smtps")
        self.addCleanup(client.close)
        client.ehlo("client.example")
        code, text = client.login("alice", PASSWORD)
        self.assertEqual(code, 235, text)
        for _ in range(2):
            refused = client.sendmail(SENDER, ["bob@example.com"],
                                      harness.simple_message(sender=SENDER))
            self.assertEqual(refused, {})

        self.set_alice_limit(2)
        summary = self.reload()
        self.assertIn("[quota] limits", summary)
        self.assertNotIn("needs a restart", summary)
        self.assertNotIn("[quota] changed", self.server.log())
        # The session opened before the reload: its next message is over the new limit.
        code, text = client.mail(SENDER)
        self.assertEqual((code, text[:5]), (450, b"4.7.1"), text)
        self.assertIn(b"Hourly sending quota of 2 messages reached for account alice", text)
        client.rset()

        self.set_alice_limit(10)
        self.assertIn("[quota] limits", self.reload())
        code, text = client.mail(SENDER)
        self.assertEqual(code, 250, text)
        client.rset()
        self.assertEqual(self.server.process.pid, pid)
        self.assertIsNone(self.server.process.poll())


if __name__ == "__main__":
    harness.main()
