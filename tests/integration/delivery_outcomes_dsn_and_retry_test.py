"""Delivery through a static route to a scriptable SMTP server: one pipelined transaction per
domain with per-recipient outcomes (250, 451, 550), an RFC 3464 DSN for the refused recipient sent
back to the sender and parsed with Python's email package, the transient one kept and delivered on
`facteur queue retry`, connection reuse for the next message, and the events log."""

import email
import email.policy
import json
import os
import signal
import unittest

import harness
from smtp_test_server import SmtpTestServer




class DeliveryOutcomesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpTestServer(rcpt_replies={
            "unknown@dest.test": "550 5.1.1 <unknown@dest.test>: no such user",
            "later@dest.test": "451 4.3.0 try again later",
        }).start()
        extra = "\n".join([
            "[delivery]",
            "connection_idle_timeout = \"30s\"",
            # One egress address with its own EHLO name: connections are bound to it.
            "[[source]]",
            'name = "out1"',
            'address = "127.0.0.5"',
            'ehlo_name = "out1.asso.example"',
            "[[route]]",
            'domain = "dest.test"',
            'destination = "[127.0.0.1]:%d"' % cls.sink.port,
            'tls = "none"',
            "[[route]]",
            'domain = "asso.example"',  # where DSNs to the sender go
            'destination = "[127.0.0.1]:%d"' % cls.sink.port,
            'tls = "none"',
        ])
        cls.server = harness.Facteur(extra=extra)
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            cls.sink.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.sink.stop()

    def queue_json(self, *args):
        result = self.server.cli("queue", *args, "--json")
        return json.loads(result.stdout)

    def events(self):
        return harness.read_events(self.server)

    def test_outcomes_dsn_retry_and_reuse(self):
        with self.server.smtp() as client:
            refused = client.sendmail(
                "app@asso.example", ["ok@dest.test", "unknown@dest.test", "later@dest.test"],
                harness.simple_message(to="ok@dest.test", subject="three outcomes"))
            self.assertEqual(refused, {})  # the relay accepts all three for delivery
        # One transaction carried the three recipients; MAIL, the RCPTs and DATA were pipelined.
        self.sink.wait_for(lambda: any("ok@dest.test" in t.rcpt_to for t in self.sink.transactions))
        transaction = self.sink.delivered_to("ok@dest.test")[0]
        self.assertEqual(transaction.mail_from, "app@asso.example")
        self.assertEqual(sorted(r for r, _ in transaction.refused),
                         ["later@dest.test", "unknown@dest.test"])
        self.assertIn(b"Subject: three outcomes", transaction.data)
        self.assertEqual(transaction.peer[0], "127.0.0.5")  # bound to the source address
        self.assertEqual(transaction.ehlo, "out1.asso.example")
        session = [s for s in self.sink.sessions if transaction in s.transactions][0]
        self.assertTrue(any(len(batch) >= 5 and batch[0].upper().startswith("MAIL")
                            for batch in session.batches), session.batches)

        # The DSN for unknown@ comes back to the sender, from the null sender.
        self.sink.wait_for(lambda: self.sink.delivered_to("app@asso.example"))
        dsn_transaction = self.sink.delivered_to("app@asso.example")[0]
        self.assertEqual(dsn_transaction.mail_from, "")
        dsn = email.message_from_bytes(dsn_transaction.data, policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        parts = list(dsn.iter_parts())
        status = [p for p in parts if p.get_content_type() == "message/delivery-status"][0]
        blocks = status.get_payload()
        self.assertIn("dns;", blocks[0]["Reporting-MTA"])
        recipients = blocks[1:]
        self.assertEqual(len(recipients), 1, [dict(b) for b in recipients])
        block = recipients[0]
        self.assertIn("unknown@dest.test", block["Final-Recipient"])
        self.assertEqual(block["Action"].strip(), "failed")
        self.assertEqual(block["Status"].strip(), "5.1.1")
        self.assertIn("550 5.1.1", block["Diagnostic-Code"])
        self.assertNotIn("later@dest.test", dsn_transaction.data.decode("utf-8", "replace"))

        # unknown@ is now on the suppression list: the next message to it is refused at RCPT.
        harness.wait_until(
            lambda: b"unknown@dest.test" in self.server.cli("suppression", "list").stdout,
            what="unknown@dest.test on the suppression list")
        raw = self.server.raw()
        try:
            self.assertEqual(raw.reply()[0], 220)
            self.assertEqual(raw.command("EHLO client.test\r\n")[0], 250)
            self.assertEqual(raw.command("MAIL FROM:<app@asso.example>\r\n")[0], 250)
            code, text = raw.command("RCPT TO:<unknown@dest.test>\r\n")
            self.assertEqual(code, 550, text)
            self.assertIn("5.1.1", text)
        finally:
            raw.close()

        # later@ is still queued, pending, after one attempt.
        messages = self.queue_json("ls")["messages"]
        original = [m for m in messages if m["sender"] == "app@asso.example"]
        self.assertEqual(len(original), 1, messages)
        # The listing names the recipients still to deliver, as mailq does.
        self.assertEqual(original[0]["recipients"], ["later@dest.test"])
        queue_id = original[0]["id"]
        shown = self.queue_json("show", queue_id)
        states = {r["address"]: r["state"] for r in shown["recipient_states"]}
        self.assertEqual(states, {"ok@dest.test": "delivered", "unknown@dest.test": "bounced",
                                  "later@dest.test": "pending"})
        self.assertEqual(sorted(shown["recipients"]), sorted(states))  # show keeps them all
        self.assertEqual(shown["attempts"], 1)
        # Why it is still here, as mailq says it: who answered what.
        last = {r["address"]: r["last_reply"] for r in shown["recipient_states"]}
        self.assertEqual(last["later@dest.test"],
                         "127.0.0.1[127.0.0.1]:%d said: 451 4.3.0 try again later"
                         % self.sink.port)
        self.assertEqual(last["ok@dest.test"], "")
        text = self.server.cli("queue", "show", queue_id).stdout.decode()
        self.assertIn("<later@dest.test> pending (127.0.0.1[127.0.0.1]:%d said: 451 4.3.0 try "
                      "again later)" % self.sink.port, text)

        # The server now takes it; a retry makes it due at once instead of in five minutes.
        self.sink.rcpt_replies.pop("later@dest.test")
        self.server.cli("queue", "retry", queue_id)
        self.sink.wait_for(lambda: self.sink.delivered_to("later@dest.test"))
        harness.wait_until(lambda: self.queue_json("count")["count"] == 0, what="empty queue")

        # The events log tells each recipient's story.
        events = harness.wait_until(lambda: [e for e in self.events() if e.get("queue_id") == queue_id
                                     and e["type"] != "reception"] or None, what="events")
        kinds = sorted((e["type"], e["recipient"]) for e in events)
        self.assertIn(("delivery", "ok@dest.test"), kinds)
        self.assertIn(("bounce", "unknown@dest.test"), kinds)
        self.assertIn(("transient_failure", "later@dest.test"), kinds)
        self.assertIn(("delivery", "later@dest.test"), kinds)
        reception = [e for e in self.events()
                     if e["type"] == "reception" and e.get("queue_id") == queue_id]
        self.assertEqual(len(reception), 1)
        self.assertEqual(reception[0]["recipients"], 3)
        self.assertEqual(reception[0]["listener"], "relay")
        delivery = [e for e in events if e["type"] == "delivery"][0]
        for field in ("time", "queue_id", "recipient", "site", "mx", "code", "attempt"):
            self.assertIn(field, delivery)
        self.assertEqual(delivery["code"], 250)
        self.assertEqual(delivery["source_ip"], "127.0.0.5")
        retried = [e for e in events if e["type"] == "delivery" and e["recipient"] == "later@dest.test"]
        self.assertEqual(retried[0]["attempt"], 2)

    def test_sighup_reopens_the_events_log(self):
        path = os.path.join(self.server.data_dir, "events.log")
        harness.wait_until(lambda: os.path.exists(path), what="an events log")
        rotated = path + ".1"
        os.rename(path, rotated)
        self.server.process.send_signal(signal.SIGHUP)
        # The server reopens the log when it handles the signal, which it does on its own time:
        # a message sent before that would be logged, rightly, in the old file.
        harness.wait_until(lambda: os.path.exists(path), what="the events log reopened")
        # Lines written after the signal go to a new file at the path.
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["rotated@dest.test"],
                            harness.simple_message(to="rotated@dest.test", subject="rotated"))
        events = harness.wait_until(
            lambda: [e for e in harness.read_events(self.server)
                     if e.get("recipient") == "rotated@dest.test" and e["type"] == "delivery"],
            what="the delivery event in the reopened log")
        self.assertEqual(len(events), 1)
        with open(rotated) as f:
            self.assertNotIn("rotated@dest.test", f.read())

    def test_connection_is_reused_for_the_next_message(self):
        before = len(self.sink.sessions)
        for number in range(2):
            with self.server.smtp() as client:
                client.sendmail("app@asso.example", ["reuse@dest.test"],
                                harness.simple_message(to="reuse@dest.test",
                                                       subject="reuse %d" % number))
            self.sink.wait_for(lambda: len(self.sink.delivered_to("reuse@dest.test")) == number + 1)
        sessions = [s for s in self.sink.sessions[before:]
                    if any("reuse@dest.test" in t.rcpt_to for t in s.transactions)]
        self.assertEqual(len(sessions), 1, "both messages should share one SMTP session")
        self.assertEqual(len(sessions[0].transactions), 2)



class AFullMailboxIsKeptTest(unittest.TestCase):
    """A full mailbox refused with a 5xx ("552 5.2.2 Mailbox full") keeps its recipient for the
    schedule's next try (DESIGN.md §5): no DSN, and in the pair's reputation a deferral, not a
    bounce nor a final answer (a warmup cap counts final answers, and would count the recipient
    at every try)."""

    def setUp(self):
        self.sink = SmtpTestServer(rcpt_replies={
            "full@dest.test": "552 5.2.2 <full@dest.test>: Mailbox full",
        }).start()
        self.addCleanup(self.sink.stop)
        self.server = harness.Facteur(extra="\n".join([
            "[delivery]",
            "[[source]]", 'name = "out1"', 'address = "127.0.0.5"',
            "[[route]]", 'domain = "dest.test"',
            'destination = "[127.0.0.1]:%d"' % self.sink.port, 'tls = "none"',
        ]))
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def test_kept_for_the_next_try_and_no_final_answer(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["full@dest.test", "ok@dest.test"],
                            harness.simple_message(to="ok@dest.test"))

        def counted():
            pairs = json.loads(self.server.cli("reputation", "--json").stdout)["pairs"]
            day = pairs[0]["today"] if pairs else {}
            return day if day.get("delivered") == 1 and day.get("deferred") == 1 else None

        today = harness.wait_until(counted, timeout=30, what="both replies in the reputation")
        self.assertEqual(today["deferred_by_class"], {"mailbox_full": 1})
        self.assertEqual(today["bounced"], 0)
        self.assertEqual(today["final_answers"], 1)  # the delivery only
        listed = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
        # The message waits for its next try, and no DSN was queued beside it.
        self.assertEqual([m["recipients"] for m in listed], [["full@dest.test"]])


if __name__ == "__main__":
    harness.main()
