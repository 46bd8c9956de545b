"""Delivery TLS policy and failures of the receiving side: required TLS verified against a
trusted certificate, required TLS refused by a server without STARTTLS, a server that stalls past
the data-termination timeout, and one that drops the connection mid-DATA. Nothing is lost: every
failure is transient and leaves the recipient queued."""

import json
import ssl
import unittest

import harness
from smtp_test_server import STALL, SmtpTestServer




class DeliveryTlsAndTimeoutsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tls_sink = SmtpTestServer(starttls=True, hostname="mx.tls.test").start()
        cls.plain_sink = SmtpTestServer(starttls=False).start()
        cls.stall_sink = SmtpTestServer(end_of_data_reply=STALL).start()
        cls.drop_sink = SmtpTestServer(drop_mid_data=True).start()
        # Offers STARTTLS but speaks only TLS 1.0, which facteur refuses: the handshake fails.
        cls.broken_tls_sink = SmtpTestServer(starttls=True)
        cls.broken_tls_sink._tls_context.minimum_version = ssl.TLSVersion.TLSv1
        cls.broken_tls_sink._tls_context.maximum_version = ssl.TLSVersion.TLSv1
        cls.broken_tls_sink.start()
        # Say 220 to STARTTLS, then reset the connection, or never answer the handshake (a
        # middlebox that kills TLS, a path that drops the certificate's packets).
        cls.tls_reset_sink = SmtpTestServer(starttls=True, starttls_breaks="reset").start()
        cls.tls_stall_sink = SmtpTestServer(starttls=True, starttls_breaks="stall").start()
        # Reads a body at 2 MB/s: 16 MB take 8 s, more than data_block + data_termination.
        cls.slow_sink = SmtpTestServer(data_read_rate=2_000_000).start()
        routes = []
        for domain, sink, tls in (("tls.test", cls.tls_sink, "required"),
                                  ("notls.test", cls.plain_sink, "required"),
                                  ("stall.test", cls.stall_sink, "none"),
                                  ("drop.test", cls.drop_sink, "none"),
                                  ("brokentls.test", cls.broken_tls_sink, "opportunistic"),
                                  ("tlsreset.test", cls.tls_reset_sink, "opportunistic"),
                                  ("tlsstall.test", cls.tls_stall_sink, "opportunistic"),
                                  ("slow.test", cls.slow_sink, "none")):
            routes += ["[[route]]", 'domain = "%s"' % domain,
                       'destination = "[127.0.0.1]:%d"' % sink.port, 'tls = "%s"' % tls]
        extra = "\n".join([
            "[delivery]",
            "tls_ca_file = %s" % harness.toml_string(cls.tls_sink.certfile),
            'data_block_timeout = "1s"',
            # More than what the kernel's buffers hold of a body (4 MB here) takes to drain at
            # the slow sink's rate, as 10 minutes are for any link faster than 10 KB/s.
            'data_termination_timeout = "5s"',
            'command_timeout = "5s"',
        ] + routes)
        cls.server = harness.Facteur(extra=extra)
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            for sink in cls.sinks():
                sink.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        for sink in cls.sinks():
            sink.stop()

    @classmethod
    def sinks(cls):
        return (cls.tls_sink, cls.plain_sink, cls.stall_sink, cls.drop_sink,
                cls.broken_tls_sink, cls.tls_reset_sink, cls.tls_stall_sink, cls.slow_sink)

    def send(self, recipient):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", [recipient],
                            harness.simple_message(to=recipient, subject="to " + recipient))

    def events_for(self, recipient):
        return [e for e in harness.read_events(self.server) if e.get("recipient") == recipient]

    def pending_recipients(self):
        result = self.server.cli("queue", "ls", "--json")
        pending = []
        for message in json.loads(result.stdout)["messages"]:
            shown = json.loads(self.server.cli("queue", "show", message["id"], "--json").stdout)
            pending += [r["address"] for r in shown["recipient_states"] if r["state"] == "pending"]
        return pending

    def assert_deferred(self, recipient):
        events = harness.wait_until(lambda: [e for e in self.events_for(recipient)
                                     if e["type"] == "transient_failure"],
                            what="a transient failure for " + recipient)
        self.assertTrue(400 <= events[0]["code"] < 500, events[0])
        self.assertIn(recipient, self.pending_recipients())
        return events[0]

    def test_required_tls_verified(self):
        self.send("someone@tls.test")
        self.tls_sink.wait_for(lambda: self.tls_sink.delivered_to("someone@tls.test"))
        self.assertTrue(self.tls_sink.delivered_to("someone@tls.test")[0].tls)
        event = harness.wait_until(lambda: [e for e in self.events_for("someone@tls.test")
                                    if e["type"] == "delivery"], what="delivery event")[0]
        self.assertTrue(event.get("tls"))

    def test_required_tls_without_starttls_waits(self):
        self.send("someone@notls.test")
        event = self.assert_deferred("someone@notls.test")
        self.assertEqual(event["enhanced"][:4], "4.7.")
        self.assertEqual(self.plain_sink.transactions, [])  # no mail sent in clear text

    def test_stall_past_the_data_termination_timeout(self):
        self.send("someone@stall.test")
        event = self.assert_deferred("someone@stall.test")
        self.assertIn("timeout", event["response"].lower())

    def test_opportunistic_tls_falls_back_to_plain_text(self):
        self.send("someone@brokentls.test")
        self.broken_tls_sink.wait_for(
            lambda: self.broken_tls_sink.delivered_to("someone@brokentls.test"))
        self.assertFalse(self.broken_tls_sink.delivered_to("someone@brokentls.test")[0].tls)
        # The first connection tried STARTTLS; the one that carried the mail did not.
        self.assertTrue(any("STARTTLS" in c.upper() for s in self.broken_tls_sink.sessions
                            for c in s.commands))

    def test_opportunistic_tls_reset_or_stalled_falls_back_to_plain_text(self):
        # However the handshake ends (a reset, the command timeout), the same host is tried
        # again in plain text; before, only a failed handshake did, and this mail waited for
        # its queue lifetime.
        for domain, sink in (("tlsreset.test", self.tls_reset_sink),
                             ("tlsstall.test", self.tls_stall_sink)):
            recipient = "someone@" + domain
            self.send(recipient)
            sink.wait_for(lambda: sink.delivered_to(recipient), timeout=20)
            self.assertFalse(sink.delivered_to(recipient)[0].tls)
            # The first session asked for STARTTLS; the one that delivered did not.
            self.assertTrue(any("STARTTLS" in c.upper() for c in sink.sessions[0].commands))

    def test_a_body_still_being_read_is_not_timed_out(self):
        # RFC 5321 §4.5.3.2.5-6: the data-block timeout bounds each send of the body, the
        # data-termination one the wait after "." is sent; before, the two together bounded
        # the whole transfer, and a large message to a slow server failed on every try.
        recipient = "someone@slow.test"
        body = ("x" * 990 + "\r\n") * 16000  # 16 MB
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", [recipient], (
                "From: app@asso.example\r\nTo: %s\r\nSubject: big\r\n\r\n%s" % (
                    recipient, body)).encode())
        self.slow_sink.wait_for(lambda: self.slow_sink.delivered_to(recipient), timeout=30)
        [transaction] = self.slow_sink.delivered_to(recipient)
        self.assertGreater(transaction.finished - transaction.started, 6.0)  # it was slow
        self.assertFalse([e for e in self.events_for(recipient) if e["type"] != "reception"
                          and e["type"] != "delivery"])

    def test_connection_dropped_mid_data(self):
        self.send("someone@drop.test")
        self.assert_deferred("someone@drop.test")


if __name__ == "__main__":
    harness.main()
