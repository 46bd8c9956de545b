"""SIGTERM stops within a bound (issue #6 point 5). A delivery hangs in DATA against a server
that stops answering mid-data; with [delivery] shutdown_grace = "2s", SIGTERM makes facteur stop
accepting, wait the grace for that transaction, abandon it and exit 0 within grace + a few
seconds. The abandoned attempt is neither delivered, failed nor counted: stopped, the spool
still holds the message with its recipient pending and no attempt recorded, and no
transient_failure event was written. Restarted against a server that answers, the message is
delivered once.

A message split in transactions (a site that takes one recipient per message) stopped half
way: SIGTERM comes while the server takes its time over the second part's end of data, with the
third part pipelined behind it and the fourth still waiting. The parts under way finish within
the grace; what they delivered is recorded, so that after the restart only the fourth recipient
is sent, and every recipient reaches the server once."""

import json
import threading
import time
import unittest

import harness
from smtp_test_server import SmtpTestServer

GRACE = 2.0


class SigtermGracefulShutdownTest(unittest.TestCase):
    def setUp(self):
        self.sink = SmtpTestServer(stall_mid_data=True).start()
        extra = "\n".join([
            "[delivery]", 'shutdown_grace = "%ds"' % GRACE, "validate_recipient_domains = false",
            "[[route]]", 'domain = "stall.test"',
            'destination = "[127.0.0.1]:%d"' % self.sink.port, 'tls = "none"'])
        self.server = harness.Facteur(extra=extra)
        self.server.start_or(self.tearDown)

    def tearDown(self):
        self.server.cleanup()
        self.sink.stop()

    def queue_show(self, queue_id):
        return json.loads(self.server.cli("queue", "show", queue_id, "--json").stdout)

    def test_stalled_delivery_is_abandoned_within_the_grace(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["bob@stall.test"],
                            harness.simple_message(to="bob@stall.test"))
        queue_id = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"][0]["id"]
        # The transaction is in DATA and the server has stopped answering.
        self.sink.wait_for(lambda: any(
            any(str(c).upper().startswith("DATA") for c in s.commands)
            for s in self.sink.sessions), timeout=15)
        time.sleep(0.3)  # the first body bytes reach the server

        started = time.monotonic()
        code = self.server.stop()
        elapsed = time.monotonic() - started
        self.assertEqual(code, 0, self.server.log())
        self.assertLess(elapsed, GRACE + 4, "stop took %.1fs" % elapsed)
        # The transaction in progress was given its grace before it was abandoned.
        self.assertGreaterEqual(elapsed, GRACE * 0.9, "stop took %.1fs" % elapsed)
        self.assertIn("shutdown grace over", self.server.log())

        # Stopped: the message is queued as it was, its recipient pending, no attempt counted.
        shown = self.queue_show(queue_id)
        self.assertEqual(shown["attempts"], 0, shown)
        self.assertEqual([r["state"] for r in shown["recipient_states"]], ["pending"], shown)
        self.assertNotIn(queue_id, [e.get("id") for e in harness.read_events(self.server)
                                    if e["type"] in ("transient_failure", "delivery", "bounce")])

        # Restarted against a server that answers: delivered, once.
        self.sink.stall_mid_data = False
        self.server.start()
        self.sink.wait_for(lambda: len(self.sink.transactions) >= 1, timeout=20)
        self.assertEqual(len(self.sink.accepted()), 1)


class SplitMessageStoppedHalfWayTest(unittest.TestCase):
    RECIPIENTS = ["s%d@split-stop.test" % i for i in range(4)]

    @classmethod
    def setUpClass(cls):
        cls.second_end_of_data = threading.Event()

        def end_of_data_reply(transaction):
            if transaction.rcpt_to == [cls.RECIPIENTS[1]] and not cls.second_end_of_data.is_set():
                cls.second_end_of_data.set()
                time.sleep(1.5)  # a slow MX: the test's SIGTERM comes meanwhile
            return "250 2.0.0 Ok: queued"

        cls.sink = SmtpTestServer(host="127.0.0.68", end_of_data_reply=end_of_data_reply).start()
        harness.start_one_site_relay(
            cls, "split-stop.test", "127.0.0.68", cls.sink.port, "split-stop",
            {"max_recipients_per_message": 1, "max_connections": 1, "messages_per_hour": 0},
            delivery=['shutdown_grace = "10s"', 'first_retry = "1s"'])

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sink.stop()

    def test_what_the_parts_delivered_is_not_sent_again(self):
        s0, s1, s2, s3 = self.RECIPIENTS
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", self.RECIPIENTS,
                            harness.simple_message(to=s0, subject="split and stopped"))
        self.assertTrue(self.second_end_of_data.wait(20), "the second part's end of data")
        self.assertEqual(self.server.stop(), 0, self.server.log())
        # Stopped after s1 and s2 (pipelined behind s1's end of data) were answered; s3 was
        # never sent.
        delivered = sorted(r for t in self.sink.accepted() for r in t.rcpt_to)
        self.assertEqual(delivered, [s0, s1, s2])
        events = {(e["type"], e["recipient"]) for e in harness.read_events(self.server)
                  if e["type"] != "reception"}
        self.assertEqual(events, {("delivery", s0), ("delivery", s1), ("delivery", s2),
                                  ("transient_failure", s3)})

        self.server.start()
        # The parts go in order over the site's one connection: any part sent again would
        # reach the server before s3.
        self.sink.wait_for(lambda: self.sink.delivered_to(s3), timeout=20)
        delivered = sorted(r for t in self.sink.accepted() for r in t.rcpt_to)
        self.assertEqual(delivered, [s0, s1, s2, s3])


class ShutdownGraceDefaultTest(unittest.TestCase):
    def test_idle_server_stops_at_once(self):
        # Nothing in progress: SIGTERM does not wait for the grace (the default bound, 20 s +
        # kShutdownMargin < 30 s, is checked by tests/unit/engine/config/config_test.cc).
        server = harness.Facteur()
        try:
            server.start()
            started = time.monotonic()
            self.assertEqual(server.stop(), 0)
            self.assertLess(time.monotonic() - started, 5)
        finally:
            server.cleanup()



if __name__ == "__main__":
    harness.main()
