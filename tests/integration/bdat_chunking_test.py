"""CHUNKING (RFC 3030) over a raw socket: a message sent in BDAT chunks is queued whole, with
the id in the reply to BDAT LAST; a BDAT outside a transaction is refused with 503 while its
octets are still read, so the session keeps its framing and goes on."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class BdatChunkingTest(harness.unittest.TestCase):
    def setUp(self):
        self.server = harness.Facteur()
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.raw = self.server.raw()
        self.addCleanup(self.raw.close)
        self.assertEqual(self.raw.reply()[0], 220)
        code, text = self.raw.command("EHLO client.example\r\n")
        self.assertEqual(code, 250)
        self.assertIn("CHUNKING", text)

    def expect(self, data, prefix):
        code, text = self.raw.command(data)
        self.assertTrue(text.startswith(prefix), (data[:60], text))
        return text

    def body(self, message_id):
        return self.server.cli("queue", "show", message_id, "--body").stdout

    def test_chunks_then_last(self):
        chunks = [b"From: app@asso.example\r\nTo: bob@example.com\r\nSubject: chunked\r\n",
                  b"\r\nfirst part, and a line with a dot:\r\n.\r\n",  # no stuffing in BDAT
                  b"last part\r\n"]
        self.expect("MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect("RCPT TO:<bob@example.com>\r\n", "250 2.1.5")
        self.expect(b"BDAT %d\r\n" % len(chunks[0]) + chunks[0], "250 2.0.0")
        self.expect(b"BDAT %d\r\n" % len(chunks[1]) + chunks[1], "250 2.0.0")
        text = self.expect(b"BDAT %d LAST\r\n" % len(chunks[2]) + chunks[2],
                           "250 2.0.0 Ok: queued as ")
        message_id = harness.queued_id(text)
        self.assertEqual(len(message_id), 26)
        shown = json.loads(self.server.cli("queue", "show", message_id, "--json").stdout)
        self.assertEqual(shown["sender"], "app@asso.example")
        self.assertEqual(shown["recipients"], ["bob@example.com"])
        body = self.body(message_id)
        self.assertIn(b"Subject: chunked", body)
        self.assertIn(b"first part, and a line with a dot:\r\n.\r\nlast part\r\n",
                      body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        self.assertIn(b"Received: ", body)
        # The session goes on: a DATA transaction after a BDAT one.
        self.expect("MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect("RCPT TO:<carol@example.com>\r\n", "250 2.1.5")
        self.expect("DATA\r\n", "354")
        self.expect(harness.simple_message() + b".\r\n", "250 2.0.0 Ok: queued as ")

    def test_pipelined_chunks(self):
        message = harness.simple_message(subject="pipelined chunks")
        half = len(message) // 2
        self.raw.send(b"MAIL FROM:<app@asso.example>\r\nRCPT TO:<bob@example.com>\r\n"
                      + b"BDAT %d\r\n" % half + message[:half]
                      + b"BDAT %d LAST\r\n" % (len(message) - half) + message[half:])
        replies = [self.raw.reply()[1] for _ in range(4)]
        self.assertEqual([r[:9] for r in replies],
                         ["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0"], replies)
        self.assertIn("queued as", replies[3])
        self.assertIn(b"Subject: pipelined chunks", self.body(harness.queued_id(replies[3])))

    def test_bdat_without_transaction_is_503_and_octets_are_consumed(self):
        # The chunk holds what looks like commands: they must be read as data and dropped.
        chunk = b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.com>\r\n"
        self.expect(b"BDAT %d\r\n" % len(chunk) + chunk, "503 5.5.1")
        self.expect(b"BDAT %d LAST\r\n" % len(chunk) + chunk, "503 5.5.1")
        self.expect("NOOP\r\n", "250 2.0.0")
        # MAIL without RCPT: still no transaction a chunk could go into.
        self.expect("MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect(b"BDAT 5\r\nhello", "503 5.5.1")
        self.expect("RSET\r\n", "250 2.0.0")
        self.assertEqual(self.server.cli("queue", "count").stdout.strip(), b"0")
        # And a real transaction works afterwards on the same session.
        message = harness.simple_message(subject="after 503")
        self.expect("MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect("RCPT TO:<bob@example.com>\r\n", "250 2.1.5")
        text = self.expect(b"BDAT %d LAST\r\n" % len(message) + message, "250 2.0.0 Ok: queued as")
        self.assertEqual(self.server.cli("queue", "count").stdout.strip(), b"1")
        shown = json.loads(self.server.cli("queue", "show", harness.queued_id(text),
                                           "--json").stdout)
        self.assertEqual(shown["sender"], "app@asso.example")

    def test_data_after_bdat_is_503(self):
        self.expect("MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect("RCPT TO:<bob@example.com>\r\n", "250 2.1.5")
        self.expect(b"BDAT 4\r\nFrom", "250 2.0.0")
        self.expect("DATA\r\n", "503 5.5.1")

    def test_bdat_zero_last_ends_the_message(self):
        message = harness.simple_message(subject="zero last")
        self.expect("MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect("RCPT TO:<bob@example.com>\r\n", "250 2.1.5")
        self.expect(b"BDAT %d\r\n" % len(message) + message, "250 2.0.0")
        text = self.expect("BDAT 0 LAST\r\n", "250 2.0.0 Ok: queued as")
        self.assertIn(b"Subject: zero last", self.body(harness.queued_id(text)))


if __name__ == "__main__":
    harness.main()
