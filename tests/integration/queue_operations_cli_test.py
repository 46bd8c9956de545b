"""Queue operations against a running server, through the CLI and the admin API: suspend and
resume a domain (resume delivers at once), bounce a domain's recipients (DSN to the sender),
delete a message (no DSN), retry, and the errors for bad input or a stopped server."""

import email
import email.policy
import json
import threading
import time
import unittest

import harness
from smtp_test_server import SmtpTestServer




class QueueOperationsTest(harness.ServerTestCase):
    sink = None

    @classmethod
    def config_extra(cls):
        # Everything waits, except the sender's own mailbox, where DSNs arrive.
        cls.sink = SmtpTestServer(rcpt_reply="451 4.3.0 not now",
                                  rcpt_replies={"app@asso.example": "250 2.1.5 Ok"}).start()
        lines = ["[delivery]"]
        for domain in ("hold.test", "asso.example"):
            lines += ["[[route]]", 'domain = "%s"' % domain,
                      'destination = "[127.0.0.1]:%d"' % cls.sink.port, 'tls = "none"']
        return "\n".join(lines)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        cls.sink.stop()

    def submit(self, recipient, subject):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", [recipient],
                            harness.simple_message(to=recipient, subject=subject))
        for message in self.queue("ls")["messages"]:
            if recipient in message["recipients"]:
                return message["id"]
        raise AssertionError("not queued: " + recipient)

    def queue(self, *args):
        return json.loads(self.server.cli("queue", *args, "--json").stdout)

    def show(self, queue_id):
        return self.queue("show", queue_id)

    def attempted(self, queue_id):
        return self.show(queue_id)["attempts"] >= 1

    def test_suspend_then_resume_delivers(self):
        self.server.cli("queue", "suspend", "hold.test")
        self.assertEqual(json.loads(self.server.cli(
            "queue", "suspend", "hold.test", "--json").stdout)["messages"], 0)
        queue_id = self.submit("s@hold.test", "suspended")
        # The manager looked at it and put it off without any attempt.
        harness.wait_until(lambda: self.show(queue_id)["next_attempt"] > self.show(queue_id)["received_at"],
                   what="message put off")
        self.assertEqual(self.show(queue_id)["attempts"], 0)
        # Suspending again says how many messages the suspension holds (it said 0).
        self.assertEqual(self.queue("suspend", "hold.test")["messages"], 1)
        self.assertFalse([t for t in self.sink.transactions if "s@hold.test" in t.rcpt_to]
                         or [s for s in self.sink.sessions
                             if any("s@hold.test" in c for c in s.commands)])
        self.sink.rcpt_replies["s@hold.test"] = "250 2.1.5 Ok"
        result = self.server.cli("queue", "resume", "hold.test")
        self.assertIn("1 message", result.stdout.decode())
        self.sink.wait_for(lambda: self.sink.delivered_to("s@hold.test"))
        # The server log says it plainly (it read 'resume {\"domain\":\"hold.test\"}: 1
        # message(s), 0 recipient(s)').
        self.assertIn("admin: queue resume domain=hold.test: 1 message(s), 1 recipient(s)\n",
                      self.server.log())

    def test_bounce_domain_sends_a_dsn(self):
        queue_id = self.submit("b@hold.test", "to be bounced")
        harness.wait_until(lambda: self.attempted(queue_id), what="first attempt")
        answer = self.queue("bounce", "--domain", "hold.test")
        self.assertGreaterEqual(answer["messages"], 1)
        self.sink.wait_for(lambda: [t for t in self.sink.delivered_to("app@asso.example")
                                    if b"b@hold.test" in t.data])
        dsn_data = [t for t in self.sink.delivered_to("app@asso.example")
                    if b"b@hold.test" in t.data][0].data
        dsn = email.message_from_bytes(dsn_data, policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertIn(b"cancelled by the administrator", dsn_data)
        harness.wait_until(lambda: queue_id not in [m["id"] for m in self.queue("ls")["messages"]],
                   what="bounced message removed")

    def test_delete_and_retry(self):
        queue_id = self.submit("d@hold.test", "to be deleted")
        harness.wait_until(lambda: self.attempted(queue_id), what="first attempt")
        retried = self.queue("retry", queue_id)
        self.assertEqual(retried["messages"], 1)
        self.assertEqual(retried["recipients"], 1)
        harness.wait_until(lambda: self.show(queue_id)["attempts"] >= 2, what="second attempt")
        self.server.cli("queue", "delete", queue_id)
        harness.wait_until(lambda: queue_id not in [m["id"] for m in self.queue("ls")["messages"]],
                   what="deleted")
        self.assertFalse([t for t in self.sink.delivered_to("app@asso.example")
                          if b"d@hold.test" in t.data])
        # The audit trail: the recipient left undelivered, and why.
        [deletion] = [e for e in harness.read_events(self.server)
                      if e.get("queue_id") == queue_id and e["type"] == "deletion"]
        self.assertEqual(deletion["recipient"], "d@hold.test")
        self.assertEqual(deletion["detail"], "deleted by the administrator")
        self.assertIn("admin: queue delete %s: 1 message(s)" % queue_id, self.server.log())
        missing = self.server.cli("queue", "retry", queue_id, check=False)
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn("not in the queue", missing.stderr.decode())

    def test_delete_during_delivery_logs_what_went(self):
        # Deleted while the server takes it: the attempt is not cut off, the CLI says so, and
        # the delivery that happened is in the events log (before, nothing was).
        answering = threading.Event()

        def slow_rcpt(*_):
            answering.set()
            time.sleep(3)
            return "250 2.1.5 Ok"

        self.sink.rcpt_replies["slow@hold.test"] = slow_rcpt
        queue_id = self.submit("slow@hold.test", "deleted in flight")
        self.assertTrue(answering.wait(20), "no delivery attempt")
        result = self.server.cli("queue", "delete", queue_id)
        self.assertIn("1 message(s); 1 of them out for delivery now", result.stdout.decode())
        self.sink.wait_for(lambda: self.sink.delivered_to("slow@hold.test"), timeout=20)
        harness.wait_until(lambda: queue_id not in [m["id"] for m in self.queue("ls")["messages"]],
                           what="deleted")
        events = harness.wait_until(
            lambda: [e["type"] for e in harness.read_events(self.server)
                     if e.get("queue_id") == queue_id and e["type"] != "reception"],
            what="the attempt's outcome in the events log")
        self.assertEqual(events, ["delivery"])

    def test_bad_input(self):
        bad = self.server.cli("queue", "retry", "not-an-id", check=False)
        self.assertEqual(bad.returncode, 64)
        missing_domain = self.server.cli("queue", "suspend", check=False)
        self.assertEqual(missing_domain.returncode, 64)
        # Not a domain: refused, not held (it was accepted, and logged as a suspension).
        garbage = self.server.cli("queue", "suspend", "not a domain", check=False)
        self.assertNotEqual(garbage.returncode, 0)
        self.assertIn("must be a domain name", garbage.stderr.decode())
        self.assertNotIn("not a domain", self.server.cli("queue", "suspended").stdout.decode())

    def test_the_held_domains_are_listed_and_a_resume_says_when_none_was(self):
        self.server.cli("queue", "suspend", "listed.test")
        held = self.server.cli("queue", "suspended").stdout.decode().split()
        self.assertIn("listed.test", held)
        self.assertEqual(self.queue("suspended")["domains"], held)
        self.server.cli("queue", "resume", "listed.test")
        self.assertNotIn("listed.test", self.server.cli("queue", "suspended").stdout.decode())
        again = self.server.cli("queue", "resume", "listed.test").stdout.decode()
        self.assertIn("resume: listed.test was not held", again)
        # An internationalised domain is one domain in all its forms, as delivery has it.
        self.server.cli("queue", "suspend", "B\u00dcCHER.test")
        self.assertIn("xn--bcher-kva.test", self.queue("suspended")["domains"])
        resumed = self.server.cli("queue", "resume", "xn--bcher-kva.TEST").stdout.decode()
        self.assertNotIn("was not held", resumed)
        self.assertNotIn("xn--bcher-kva.test", self.queue("suspended")["domains"])


class QueueOperationsNeedAServerTest(unittest.TestCase):
    def test_stopped_server(self):
        server = harness.Facteur()
        try:
            result = server.cli("queue", "flush", check=False)
            self.assertEqual(result.returncode, 69)
            self.assertIn("no running server", result.stderr.decode())
        finally:
            server.cleanup()


if __name__ == "__main__":
    harness.main()
