"""SIGTERM stops within a bound (issue #6 point 5). A delivery hangs in DATA against a server
that stops answering mid-data; with [delivery] shutdown_grace = "2s", SIGTERM makes facteur stop
accepting, wait the grace for that transaction, abandon it and exit 0 within grace + a few
seconds. The abandoned attempt is neither delivered, failed nor counted: stopped, the spool
still holds the message with its recipient pending and no attempt recorded, and no
transient_failure event was written. Restarted against a server that answers, the message is
delivered once."""

import json
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
