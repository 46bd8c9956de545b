"""kill -9 while messages are being delivered: the receiving server has the data of every
message but has not answered the final dot. After a restart (the server now answering) each
message is delivered — at least once, as DESIGN.md promises — and the queue empties."""

import json
import unittest

import harness
from smtp_test_server import STALL, SmtpTestServer

MESSAGES = 5


class Kill9DuringDeliveryTest(unittest.TestCase):
    def setUp(self):
        self.sink = SmtpTestServer(end_of_data_reply=STALL).start()
        extra = "\n".join([
            "[delivery]",
            "[[route]]",
            'domain = "kill.test"',
            'destination = "[127.0.0.1]:%d"' % self.sink.port,
            'tls = "none"',
        ])
        self.server = harness.Facteur(extra=extra)
        self.server.start()

    def tearDown(self):
        self.server.cleanup()
        self.sink.stop()

    def test_nothing_acknowledged_is_lost(self):
        subjects = ["kill9 message %d" % n for n in range(MESSAGES)]
        with self.server.smtp() as client:
            for subject in subjects:
                client.sendmail("app@asso.example", ["rcpt@kill.test"],
                                harness.simple_message(to="rcpt@kill.test", subject=subject))
        # Every message reached the receiving server, which holds back its final reply.
        self.sink.wait_for(lambda: len(self.sink.transactions) == MESSAGES, timeout=30)
        self.assertEqual(self.sink.accepted(), [])
        self.server.kill9()

        self.sink.end_of_data_reply = "250 2.0.0 Ok: queued"
        self.server.start()

        def delivered_subjects():
            return {s for s in subjects
                    for t in self.sink.accepted()
                    if ("Subject: " + s + "\r\n").encode() in t.data}

        self.sink.wait_for(lambda: delivered_subjects() == set(subjects), timeout=60)
        harness.wait_until(
            lambda: json.loads(self.server.cli("queue", "count", "--json").stdout)["count"] == 0,
            timeout=30, what="an empty queue once all is delivered")


if __name__ == "__main__":
    harness.main()
