"""A site's max_recipients_per_message (issue #5 point 2) splits a message's recipients at one
domain into several transactions — here 5 recipients at a site that takes 2 per message: three
transactions of 2, 2 and 1 — which report as one attempt: every recipient is delivered once,
the queue empties, and the events log has one delivery per recipient, each on attempt 1."""

import unittest

import harness
from smtp_test_server import SmtpTestServer

RECIPIENTS = ["r%d@split.test" % i for i in range(5)]


class SiteRecipientLimitSplitsTransactionsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpTestServer(host="127.0.0.63").start()
        harness.start_one_site_relay(cls, "split.test", "127.0.0.63", cls.sink.port, "split",
                                     {"max_recipients_per_message": 2, "messages_per_hour": 0})

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sink.stop()

    def test_three_transactions_one_attempt(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", RECIPIENTS,
                            harness.simple_message(to=RECIPIENTS[0], subject="split"))
        self.sink.wait_for(lambda: sum(len(t.rcpt_to) for t in self.sink.accepted()) >= 5)
        sizes = sorted(len(t.rcpt_to) for t in self.sink.accepted())
        self.assertEqual(sizes, [1, 2, 2])
        delivered = sorted(r for t in self.sink.accepted() for r in t.rcpt_to)
        self.assertEqual(delivered, RECIPIENTS)
        harness.wait_until(
            lambda: b'"count": 0' in self.server.cli("queue", "count", "--json").stdout
            or b'"count":0' in self.server.cli("queue", "count", "--json").stdout,
            what="an empty queue")
        deliveries = lambda events: [e for e in events if e["type"] == "delivery"]
        events = deliveries(harness.events_when(
            self.server, lambda events: len(deliveries(events)) >= 5, what="five delivery events"))
        self.assertEqual(sorted(e["recipient"] for e in events), RECIPIENTS)
        self.assertEqual({e["attempt"] for e in events}, {1})
        self.assertEqual({e["site"] for e in events}, {"split"})


if __name__ == "__main__":
    harness.main()
