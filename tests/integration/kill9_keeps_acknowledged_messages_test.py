"""Crash safety (issue #2 point 8): 20 concurrent submitters, `kill -9` mid-flight, restart on the
same data directory; every message that got its 250 is in the queue with a readable body, and
no half-written message appears. Three kill/restart rounds on one spool."""

import json
import os
import random
import smtplib
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SUBMITTERS = 20
ROUNDS = 3
RUN_SECONDS = 1.5
MAX_MESSAGES_PER_SUBMITTER = 20000  # a bound; the kill comes first
FILLER = "x" * 76 + "\r\n"


def message(submitter, round_number, sequence):
    marker = "r%d-s%d-m%d" % (round_number, submitter, sequence)
    text = ("From: app@asso.example\r\nTo: bob@example.com\r\nSubject: %s\r\n\r\n%s"
            "END %s\r\n" % (marker, FILLER * 24, marker))
    return marker, text.encode()


class Submitter(threading.Thread):
    def __init__(self, host, port, index, round_number):
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.index, self.round_number = index, round_number
        self.acknowledged = []  # (id, marker)
        self.error = None

    def run(self):
        try:
            client = smtplib.SMTP(self.host, self.port, timeout=10)
            client.ehlo("submitter%d.example" % self.index)
            for sequence in range(MAX_MESSAGES_PER_SUBMITTER):
                marker, text = message(self.index, self.round_number, sequence)
                code, reply = client.mail("app@asso.example")
                if code != 250:
                    raise AssertionError("MAIL: %d %r" % (code, reply))
                code, reply = client.rcpt("bob%d@example.com" % self.index)
                if code != 250:
                    raise AssertionError("RCPT: %d %r" % (code, reply))
                code, reply = client.data(text)
                if code != 250:
                    raise AssertionError("DATA: %d %r" % (code, reply))
                self.acknowledged.append((harness.queued_id(reply.decode()), marker))
        except (OSError, smtplib.SMTPException, AssertionError) as error:
            self.error = error  # OSError or SMTPServerDisconnected: the server was killed


class Kill9KeepsAcknowledgedMessagesTest(harness.unittest.TestCase):
    def setUp(self):
        self.server = harness.Facteur()
        self.addCleanup(self.server.cleanup)

    def listed(self):
        result = self.server.cli("queue", "ls", "--json", "--limit", "1000000")
        return {m["id"]: m for m in json.loads(result.stdout)["messages"]}

    def check_body(self, message_id, marker):
        body = self.server.cli("queue", "show", message_id, "--body").stdout
        self.assertIn(b"Subject: " + marker.encode(), body, message_id)
        self.assertIn(b"END " + marker.encode(), body, "%s: truncated body" % message_id)

    def test_every_acknowledged_message_survives_kill9(self):
        acknowledged = {}  # id -> marker, over all rounds
        seen_unacknowledged = set()  # checked whole in an earlier round
        for round_number in range(ROUNDS):
            self.server.start()
            host, port = self.server.host_port("relay")
            submitters = [Submitter(host, port, i, round_number) for i in range(SUBMITTERS)]
            for submitter in submitters:
                submitter.start()
            time.sleep(RUN_SECONDS)  # let them run; the kill must land mid-flight
            self.server.kill9()
            for submitter in submitters:
                submitter.join(timeout=30)
                self.assertFalse(submitter.is_alive(), "a submitter hangs after kill -9")
            this_round = {}
            for submitter in submitters:
                if isinstance(submitter.error, (AssertionError, smtplib.SMTPResponseException)):
                    self.fail("submitter %d: %r" % (submitter.index, submitter.error))
                this_round.update(submitter.acknowledged)
            self.assertGreater(len(this_round), SUBMITTERS,
                               "round %d: too few messages accepted to test anything"
                               % round_number)
            acknowledged.update(this_round)

            # Restart on the same data directory: recovery, then the checks.
            self.server.start()
            listed = self.listed()
            missing = sorted(set(acknowledged) - set(listed))
            self.assertEqual(missing, [], "round %d: %d of %d acknowledged messages lost"
                             % (round_number, len(missing), len(acknowledged)))
            count = int(self.server.cli("queue", "count").stdout)
            self.assertGreaterEqual(count, len(acknowledged))
            self.assertEqual(count, len(listed))
            for message_id, entry in listed.items():  # nothing half-written
                self.assertTrue(entry["sender"] and entry["recipients"], entry)

            # Bodies: the last acknowledged messages of each submitter (written just before
            # the kill), a random sample of the rest, and every message that was written but
            # never acknowledged (cut between the synced write and the 250).
            # (Each CLI call costs ~0.1 s: the sample keeps a round under ~5 s.)
            last = [s.acknowledged[-1] for s in submitters if s.acknowledged]
            rest = sorted(set(this_round.items()) - set(last))
            sample = last + random.Random(round_number).sample(rest, min(5, len(rest)))
            for message_id, marker in sample:
                self.check_body(message_id, marker)
            for message_id, marker in sample[::4]:
                shown = json.loads(self.server.cli("queue", "show", message_id, "--json").stdout)
                self.assertEqual(shown["id"], message_id)
                self.assertEqual(shown["sender"], "app@asso.example")
                self.assertEqual(shown["recipients"], [listed[message_id]["recipients"][0]])
            unacknowledged = sorted(set(listed) - set(acknowledged) - seen_unacknowledged)
            seen_unacknowledged.update(unacknowledged)
            sys.stderr.write("round %d: %d acknowledged (%d in all), %d written but never "
                             "acknowledged this round\n" % (round_number, len(this_round),
                                                  len(acknowledged), len(unacknowledged)))
            for message_id in unacknowledged:
                body = self.server.cli("queue", "show", message_id, "--body").stdout
                subject = [line for line in body.split(b"\n") if line.startswith(b"Subject: ")]
                self.assertEqual(len(subject), 1, body[:500])
                marker = subject[0][len(b"Subject: "):].strip()
                self.assertIn(b"END " + marker, body, "%s: half-written" % message_id)
            self.assertEqual(self.server.stop(), 0)
        # After a clean stop, the CLI reads the same queue from the stopped server's data dir.
        listed = self.listed()
        self.assertEqual(sorted(set(acknowledged) - set(listed)), [])


if __name__ == "__main__":
    harness.main()
