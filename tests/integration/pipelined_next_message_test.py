"""Pipelining across messages (RFC 2920 §3.1: message content may open a group): on a
connection to a server that offers PIPELINING, the next message's MAIL, RCPT and DATA go out in
the same write as the previous message's end of data, one round trip less per message.

Five recipients at a site that takes one per message over one connection: five transactions on
one session, each after the first pipelined behind the previous end of data. The server refuses
the second at its end of data (554) and defers the fourth (451), replies that arrive in the
same read as the next message's MAIL and RCPT replies: each lands on its own recipient — the
second bounced, the fourth kept for a retry, the three others delivered, once each.

A server that drops the connection where it should answer a message's end of data: the message
pipelined behind it never reached its DATA, so it is sent again at once on the next connection,
as never tried (no failure recorded against it), while the first waits for its retry.

A server that answers a message's end of data with a rate limit, which pauses the site (10
minutes by default): the message pipelined behind it is not sent into the pause: the connection
closes before its data, and it waits in the queue, untried.

The same five to Debian's Postfix as the MX, set as Postfix 3.9 is by default against SMTP
smuggling (smtpd_forbid_unauth_pipelining = yes: a client that pipelines where RFC 2920 does not
allow it is disconnected with 554 5.5.0), plus reject_unauth_pipelining at DATA: Postfix takes
all five on one connection and logs no pipelining violation."""

import re
import unittest

import harness
from postfix_mx import PostfixMx
from smtp_test_server import DROP, SmtpTestServer

RECIPIENTS = ["r%d@pipe.test" % i for i in range(5)]
# Every recipient a message of its own, all over one connection.
ONE_PER_MESSAGE_ONE_CONNECTION = {"max_recipients_per_message": 1, "max_connections": 1,
                                  "messages_per_hour": 0}
REFUSED = {"r1@pipe.test": "554 5.7.1 rejected by content filter",
           "r3@pipe.test": "451 4.3.0 try again later"}


def end_of_data_reply(transaction):
    for recipient in transaction.rcpt_to:
        if recipient in REFUSED:
            return REFUSED[recipient]
    return "250 2.0.0 Ok: queued"


class ScriptedMxCase(unittest.TestCase):
    """A site of DOMAIN that takes one recipient per message over one connection, its MX an
    SmtpTestServer on ADDRESS that answers each end of data with end_of_data_reply(transaction)."""
    DOMAIN = ADDRESS = None

    @classmethod
    def end_of_data_reply(cls, transaction):
        raise NotImplementedError

    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpTestServer(host=cls.ADDRESS,
                                  end_of_data_reply=cls.end_of_data_reply).start()
        harness.start_one_site_relay(cls, cls.DOMAIN, cls.ADDRESS, cls.sink.port,
                                     cls.DOMAIN.split(".")[0], ONE_PER_MESSAGE_ONE_CONNECTION)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sink.stop()


class PipelinedNextMessageTest(ScriptedMxCase):
    DOMAIN, ADDRESS = "pipe.test", "127.0.0.65"

    @classmethod
    def end_of_data_reply(cls, transaction):
        return end_of_data_reply(transaction)

    def test_next_message_follows_the_end_of_data(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", RECIPIENTS,
                            harness.simple_message(to=RECIPIENTS[0], subject="pipelined"))
        self.sink.wait_for(lambda: len(self.sink.transactions) >= 5)
        transactions = self.sink.transactions
        self.assertEqual([t.rcpt_to for t in transactions], [[r] for r in RECIPIENTS])
        self.assertEqual(len({id(s) for s in self.sink.sessions if s.transactions}), 1,
                         "one connection")
        # The first MAIL opened a group of its own; every other one came with the previous
        # message's final ".".
        self.assertEqual([t.after_end_of_data for t in transactions],
                         [False, True, True, True, True])
        for t in transactions:
            self.assertIn(b"Subject: pipelined", t.data)
        self.assertEqual([t.accepted for t in transactions], [True, False, True, False, True])

        outcome = lambda events: {(e["type"], e["recipient"]) for e in events
                                  if e["type"] != "reception" and e["recipient"] in RECIPIENTS}
        events = outcome(harness.events_when(
            self.server, lambda events: len(outcome(events)) >= 5, what="five outcomes"))
        self.assertEqual(events, {("delivery", "r0@pipe.test"), ("bounce", "r1@pipe.test"),
                                  ("delivery", "r2@pipe.test"),
                                  ("transient_failure", "r3@pipe.test"),
                                  ("delivery", "r4@pipe.test")})


class UnansweredNextMessageTest(ScriptedMxCase):
    DOMAIN, ADDRESS = "unanswered.test", "127.0.0.67"
    RECIPIENTS = ["u%d@unanswered.test" % i for i in range(3)]
    dropped = []

    @classmethod
    def end_of_data_reply(cls, transaction):
        # u0's first end of data: the connection drops instead of an answer.
        if transaction.rcpt_to == [cls.RECIPIENTS[0]] and not cls.dropped:
            cls.dropped.append(transaction)
            return DROP
        return "250 2.0.0 Ok: queued"

    def test_the_message_behind_an_unanswered_end_of_data_goes_again_at_once(self):
        u0, u1, u2 = self.RECIPIENTS
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", self.RECIPIENTS,
                            harness.simple_message(to=u0, subject="unanswered"))
        # u1 and u2 delivered on the next connection, long before any retry (5 minutes).
        self.sink.wait_for(lambda: self.sink.delivered_to(u1) and self.sink.delivered_to(u2),
                           timeout=20)
        first = [s for s in self.sink.sessions if s.transactions][0]
        self.assertEqual([t.rcpt_to for t in first.transactions], [[u0]])
        # The test is of the case it names: u1's MAIL, RCPT and DATA had come with u0's ".".
        self.assertIn(b"RCPT TO:<%s>" % u1.encode(), first.unread_at_drop)
        self.assertEqual(sorted(r for t in self.sink.transactions if t.accepted
                                for r in t.rcpt_to), [u1, u2])

        outcome = lambda events: sorted((e["type"], e["recipient"]) for e in events
                                        if e["type"] != "reception"
                                        and e["recipient"] in self.RECIPIENTS)
        events = outcome(harness.events_when(
            self.server, lambda events: len(outcome(events)) >= 3, what="three outcomes"))
        # One failure, u0's (its end of data was out: it may even have been delivered); u1's
        # message was never in the server's hands, and is not counted a failed attempt.
        self.assertEqual(events, [("delivery", u1), ("delivery", u2),
                                  ("transient_failure", u0)])


class RateLimitAtTheFirstEndOfDataTest(ScriptedMxCase):
    DOMAIN, ADDRESS = "slowdown.test", "127.0.0.69"
    RECIPIENTS = ["v%d@slowdown.test" % i for i in range(3)]

    @classmethod
    def end_of_data_reply(cls, transaction):
        if transaction.rcpt_to == [cls.RECIPIENTS[0]]:
            return "451 4.7.28 rate limited, slow down"
        return "250 2.0.0 Ok: queued"

    def test_the_next_message_is_not_sent_into_the_pause(self):
        v0, v1, _ = self.RECIPIENTS
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", self.RECIPIENTS,
                            harness.simple_message(to=v0, subject="slow down"))
        events = harness.events_when(
            self.server, lambda events: any(e["type"] == "suspension" for e in events),
            what="the site's pause")
        self.sink.wait_for(lambda: self.sink.sessions and all(s.closed for s in self.sink.sessions),
                           timeout=20)
        (session,) = [s for s in self.sink.sessions if s.transactions]
        # v1's MAIL and RCPT had come with v0's final "." and were answered; its data never came.
        self.assertIn("RCPT TO:<%s>" % v1, session.commands)
        self.assertEqual([t.rcpt_to for t in self.sink.transactions], [[v0]])
        self.assertEqual(self.sink.accepted(), [])
        suspension = [e for e in events if e["type"] == "suspension"][0]
        self.assertIn("rate_limit", suspension["detail"])
        # One message split in three transactions: it reports once all three have, and v1 and
        # v2 wait out the pause; nothing was counted against v1.
        outcomes = [e for e in harness.read_events(self.server)
                    if e["type"] in ("delivery", "transient_failure", "bounce")]
        self.assertEqual(outcomes, [])


class PipelinedToPostfixTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.postfix = PostfixMx(["pipe-postfix.test"], address="127.0.0.66", extra={
            "smtpd_forbid_unauth_pipelining": "yes",
            "smtpd_data_restrictions": "reject_unauth_pipelining",
        })
        cls.postfix.start()
        harness.start_one_site_relay(cls, "pipe-postfix.test", "127.0.0.66", cls.postfix.port,
                                     "pipe-postfix", ONE_PER_MESSAGE_ONE_CONNECTION)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.postfix.cleanup()

    def test_postfix_takes_the_pipelined_messages(self):
        recipients = ["r%d@pipe-postfix.test" % i for i in range(5)]
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", recipients,
                            harness.simple_message(to=recipients[0], subject="to postfix"))
        deliveries = self.postfix.wait_for_messages(5, timeout=30)
        self.assertEqual(sorted(d.recipient for d in deliveries), recipients)
        log = self.postfix.log()
        self.assertNotIn("improper command pipelining", log)
        self.assertNotIn("synchronization", log)
        # One connection carried the five (still open: facteur keeps it idle); the other one
        # was PostfixMx's readiness probe, which only said QUIT.
        connections = len(re.findall(r"\]: connect from ", log))
        probes = len(re.findall(r"disconnect from .* quit=1 commands=1$", log, re.M))
        self.assertEqual(connections - probes, 1, log)


if __name__ == "__main__":
    harness.main()
