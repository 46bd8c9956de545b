"""A relay listener accepts plain SMTP from smtplib: each message gets an id, is in the queue
with its envelope while the server runs and after it stops, and is stored with the trace and
identification headers the server adds (issue #2 points 6 and 8). Several messages on one
connection, and pipelined commands, are each answered in order."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class SubmitPlainSmtplibTest(harness.unittest.TestCase):
    def setUp(self):
        self.server = harness.Facteur()
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def send(self, client, sender, recipients, message):
        client.mail(sender)
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            self.assertEqual((code, text[:5]), (250, b"2.1.5"), text)
        code, text = client.data(message)
        self.assertEqual(code, 250, text)
        text = text.decode()
        self.assertRegex(text, r"^2\.0\.0 Ok: queued as [0-9A-Za-z]{26}$")
        return harness.queued_id(text)

    def show(self, message_id):
        result = self.server.cli("queue", "show", message_id, "--json")
        return json.loads(result.stdout)

    def test_greeting_and_ehlo_keywords(self):
        with self.server.smtp() as client:
            code, text = client.ehlo("client.example")
            self.assertEqual(code, 250)
            for keyword in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes",
                            "chunking"):
                self.assertTrue(client.has_extn(keyword), (keyword, text))
            self.assertFalse(client.has_extn("starttls"), text)  # tls = "none"
            self.assertFalse(client.has_extn("auth"), text)  # relay: no AUTH, and no TLS
        raw = self.server.raw()
        self.addCleanup(raw.close)
        code, text = raw.reply()
        self.assertEqual((code, text), (220, "220 relay.test.example ESMTP facteur\r\n"))

    def test_one_message_is_queued_and_readable_running_and_stopped(self):
        message = harness.simple_message(subject="plain one")
        with self.server.smtp() as client:
            client.ehlo("client.example")
            message_id = self.send(client, "app@asso.example",
                                   ["bob@example.com", "carol@example.org"], message)

        shown = self.show(message_id)
        self.assertEqual(shown["id"], message_id)
        self.assertEqual(shown["sender"], "app@asso.example")
        self.assertEqual(sorted(shown["recipients"]), ["bob@example.com", "carol@example.org"])
        self.assertEqual(shown["listener"], "relay")
        self.assertEqual(shown["account"], "")
        self.assertGreater(shown["size"], len(message))
        self.assertEqual(self.server.cli("queue", "count").stdout.strip(), b"1")

        body = self.server.cli("queue", "show", message_id, "--body").stdout
        header, _, text = body.partition(b"\r\n\r\n")
        if not text:  # the CLI may print with LF line ends
            header, _, text = body.replace(b"\r\n", b"\n").partition(b"\n\n")
        header = header.decode()
        self.assertTrue(header.startswith("Received: from client.example ([127.0.0.1])"), header)
        self.assertIn("by relay.test.example (facteur)", header)
        self.assertIn(message_id, header)
        self.assertRegex(header, r"(?mi)^Message-ID: <[^>]+>$")
        self.assertRegex(header, r"(?mi)^Date: ")
        self.assertIn("Subject: plain one", header)
        self.assertIn(b"this is a test.", text)

        self.assertEqual(self.server.stop(), 0)
        stopped = self.show(message_id)
        self.assertEqual(stopped["sender"], "app@asso.example")
        self.assertEqual(sorted(stopped["recipients"]), ["bob@example.com", "carol@example.org"])
        self.assertEqual(self.server.cli("queue", "count").stdout.strip(), b"1")
        self.assertEqual(json.loads(self.server.cli("queue", "count", "--json").stdout),
                         {"count": 1})
        listed = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
        self.assertEqual([m["id"] for m in listed], [message_id])

    def test_client_headers_are_kept(self):
        message = (b"From: app@asso.example\r\nTo: bob@example.com\r\n"
                   b"Message-ID: <mine@asso.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                   b"Subject: keep\r\n\r\n..starts with a dot\r\nbody\r\n")
        with self.server.smtp() as client:
            client.ehlo("client.example")
            message_id = self.send(client, "app@asso.example", ["bob@example.com"], message)
        body = self.server.cli("queue", "show", message_id, "--body").stdout
        self.assertEqual(body.count(b"Message-ID:"), 1, body)
        self.assertIn(b"Message-ID: <mine@asso.example>", body)
        self.assertEqual(body.count(b"\nDate:"), 1, body)
        # smtplib dot-stuffed the line; the server removed the stuffing (RFC 5321 section 4.5.2).
        self.assertIn(b"\n..starts with a dot", body)

    def test_several_messages_on_one_connection(self):
        ids = []
        with self.server.smtp() as client:
            client.ehlo("client.example")
            for n in range(5):
                ids.append(self.send(client, "app@asso.example", ["bob%d@example.com" % n],
                                     harness.simple_message(subject="msg %d" % n)))
                code, _ = client.rset()
                self.assertEqual(code, 250)
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(self.server.cli("queue", "count").stdout.strip(), b"5")
        for n, message_id in enumerate(ids):
            self.assertEqual(self.show(message_id)["recipients"], ["bob%d@example.com" % n])

    def test_pipelined_transactions_are_answered_in_order(self):
        raw = self.server.raw()
        self.addCleanup(raw.close)
        self.assertEqual(raw.reply()[0], 220)
        self.assertEqual(raw.command("EHLO client.example\r\n")[0], 250)
        message = harness.simple_message(subject="pipelined")
        # RFC 2920: MAIL, RCPT, RCPT, DATA in one write; then the text, and a second transaction
        # after the final dot in the same write.
        raw.send(b"MAIL FROM:<app@asso.example>\r\nRCPT TO:<bob@example.com>\r\n"
                 b"RCPT TO:<bad address>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n")
        self.assertEqual(raw.reply()[1][:9], "250 2.1.0")
        self.assertEqual(raw.reply()[1][:9], "250 2.1.5")
        self.assertEqual(raw.reply()[1][:9], "501 5.1.3")
        self.assertEqual(raw.reply()[1][:9], "250 2.1.5")
        self.assertEqual(raw.reply()[0], 354)
        raw.send(message + b".\r\nMAIL FROM:<app@asso.example>\r\nRCPT TO:<dave@example.com>\r\n"
                 b"DATA\r\n")
        code, first = raw.reply()
        self.assertEqual(first[:9], "250 2.0.0", first)
        self.assertEqual(raw.reply()[1][:9], "250 2.1.0")
        self.assertEqual(raw.reply()[1][:9], "250 2.1.5")
        self.assertEqual(raw.reply()[0], 354)
        raw.send(message + b".\r\nQUIT\r\n")
        code, second = raw.reply()
        self.assertEqual(second[:9], "250 2.0.0", second)
        self.assertEqual(raw.reply()[1][:9], "221 2.0.0")
        first_id, second_id = harness.queued_id(first), harness.queued_id(second)
        self.assertNotEqual(first_id, second_id)
        self.assertEqual(sorted(self.show(first_id)["recipients"]),
                         ["bob@example.com", "carol@example.com"])
        self.assertEqual(self.show(second_id)["recipients"], ["dave@example.com"])


if __name__ == "__main__":
    harness.main()
