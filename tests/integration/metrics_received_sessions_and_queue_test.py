"""The metrics of issue #6 point 1 on the real /metrics: messages received by listener and
account class (an authenticated submission, a trusted relay client, the local Unix socket),
inbound and outbound session durations, the queue by state and by site once a server defers
every recipient (451), and the bounded site label: with [delivery] metrics_site_labels = 2 the
first two unknown MX sets keep their own label and the third one is "other"."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from dns_server import DnsServer  # noqa: E402
from smtp_test_server import SmtpTestServer  # noqa: E402

PASSWORD = "alice password 1"
LISTENERS = [
    {"name": "relay", "address": "127.0.0.1:0", "role": "relay", "tls": "none",
     "trusted_networks": ["127.0.0.0/8"]},
    {"name": "submission", "address": "127.0.0.1:0", "role": "submission", "tls": "starttls"},
    {"name": "local", "address": "unix:facteur.sock"},
]
SITE_A = "mx:mx.a.test"
SITE_B = "mx:mx.b.test"


sample = harness.metric_sample


class MetricsReceivedSessionsAndQueueTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Every recipient is deferred: the messages stay queued, scheduled for a retry.
        cls.sink = SmtpTestServer(rcpt_reply="451 4.3.0 try again later").start()
        cls.dns = DnsServer(
            mx=[("a.test", "mx.a.test", 10), ("b.test", "mx.b.test", 10),
                ("c.test", "mx.c.test", 10)],
            addresses=[("mx.a.test", "127.0.0.1"), ("mx.b.test", "127.0.0.1"),
                       ("mx.c.test", "127.0.0.1")])
        cls.dns.start()
        extra = harness.delivery_extra(cls.dns, cls.sink.port, delivery=[
            "metrics_site_labels = 2", 'connection_idle_timeout = "1s"'])
        cls.server = harness.Facteur(listeners=LISTENERS, extra=extra)
        try:
            cls.server.add_account("alice", PASSWORD, "alice@asso.example")
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            cls.dns.cleanup()
            cls.sink.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sink.stop()

    def metrics(self):
        return self.server.metrics()

    def wait_for(self, name, value, **labels):
        """Waits until the series has `value`; returns the whole exposition."""
        texts = []

        def check():
            texts[:] = [self.metrics()]
            return sample(texts[0], name, **labels) == value
        try:
            harness.wait_until(check, timeout=20, what="%s%r == %s" % (name, labels, value))
        except AssertionError as error:
            raise AssertionError("%s\n%s" % (error, texts[0] if texts else "")) from None
        return texts[0]

    def relay(self, recipient):
        with self.server.smtp("relay") as client:
            client.sendmail("app@asso.example", [recipient],
                            harness.simple_message(to=recipient))

    def test_counters_histograms_queue_and_site_labels(self):
        text = self.metrics()
        for account_class in ("authenticated", "trusted", "local"):
            self.assertEqual(sample(text, "facteur_messages_received_total", listener="relay",
                                    account_class=account_class), 0.0, text)

        # An authenticated submission and a trusted relay client, both to the first MX set.
        with self.server.smtp("submission") as client:
            client.ehlo("client.example")
            client.starttls(context=harness.insecure_tls_context())
            client.ehlo("client.example")
            client.login("alice", PASSWORD)
            client.sendmail("alice@asso.example", ["x@a.test"],
                            harness.simple_message(sender="alice@asso.example", to="x@a.test"))
        self.relay("y@a.test")
        self.wait_for("facteur_messages_deferred_total", 2.0, site=SITE_A)
        # Then one more MX set (the last to get its own label) and one past the limit.
        self.relay("y@b.test")
        self.wait_for("facteur_messages_deferred_total", 1.0, site=SITE_B)
        self.relay("y@c.test")
        text = self.wait_for("facteur_messages_deferred_total", 1.0, site="other")
        self.assertIsNone(sample(text, "facteur_messages_deferred_total", site="mx:mx.c.test"))
        # The local socket, without AUTH.
        raw = self.server.raw_unix()
        try:
            self.assertEqual(raw.reply()[0], 220)
            for command in ("EHLO cron.local\r\n", "MAIL FROM:<cron@asso.example>\r\n",
                            "RCPT TO:<z@c.test>\r\n"):
                self.assertEqual(raw.command(command)[0], 250, command)
            self.assertEqual(raw.command("DATA\r\n")[0], 354)
            code, reply = raw.command(harness.simple_message(to="z@c.test") + b"\r\n.\r\n")
            self.assertEqual(code, 250, reply)
            raw.command("QUIT\r\n")
        finally:
            raw.close()
        text = self.wait_for("facteur_messages_deferred_total", 2.0, site="other")

        received = {(listener, account_class): sample(
            text, "facteur_messages_received_total", listener=listener,
            account_class=account_class)
            for listener in ("relay", "submission", "local")
            for account_class in ("authenticated", "trusted", "local")}
        self.assertEqual(received[("submission", "authenticated")], 1.0, text)
        self.assertEqual(received[("relay", "trusted")], 3.0, text)
        self.assertEqual(received[("local", "local")], 1.0, text)
        self.assertEqual(sum(received.values()), 5.0, received)

        # Sessions: every closed inbound one is in its listener's histogram; the outbound
        # connections close after their 1 s idle timeout.
        text = self.wait_for("facteur_smtp_session_seconds_count", 3.0, listener="relay")
        self.assertEqual(sample(text, "facteur_smtp_session_seconds_count",
                                listener="submission"), 1.0, text)
        self.assertEqual(sample(text, "facteur_smtp_session_seconds_count", listener="local"),
                         1.0, text)
        harness.wait_until(
            lambda: (sample(self.metrics(), "facteur_delivery_session_seconds_count") or 0) >= 1,
            what="an outbound session in facteur_delivery_session_seconds")

        # The queue: five messages waiting for their retry, by the site that deferred them.
        text = self.metrics()
        self.assertEqual(sample(text, "facteur_queue_messages", state="scheduled"), 5.0, text)
        self.assertEqual(sample(text, "facteur_queue_messages", state="ready"), 0.0, text)
        self.assertEqual(sample(text, "facteur_queue_messages", state="in_flight"), 0.0, text)
        self.assertEqual(sample(text, "facteur_queue_scheduled_messages", site=SITE_A), 2.0, text)
        self.assertEqual(sample(text, "facteur_queue_scheduled_messages", site=SITE_B), 1.0, text)
        self.assertEqual(sample(text, "facteur_queue_scheduled_messages", site="other"), 2.0, text)
        self.assertEqual(sample(text, "facteur_queue_scheduled_messages", site="unattempted"),
                         0.0, text)
        self.assertEqual(sample(text, "facteur_accounts_suspended"), 0.0, text)
        # The shards' sweep (every 5 s): nothing waits in them, no pair is suspended.
        text = self.wait_for("facteur_queue_ready_recipients", 0.0, site=SITE_B)
        self.assertEqual(sample(text, "facteur_site_pairs_suspended", site=SITE_A), 0.0, text)
        self.assertIsNone(sample(text, "facteur_queue_ready_recipients", site="mx:mx.c.test"))


if __name__ == "__main__":
    harness.main()
