"""The scriptable test SMTP server (smtp_test_server.py) does what delivery scenarios rely on:
it records transactions byte for byte, answers per recipient, speaks STARTTLS with the
certificate it generated, refuses, drops and stalls where it is told, sees pipelined commands
as one read, falls back to HELO, and serves many connections at once. Driven by smtplib and
raw sockets; it needs no facteur binary."""

import os
import smtplib
import socket
import ssl
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smtp_test_server import DROP, STALL, Close, SmtpTestServer  # noqa: E402

MESSAGE = (b"From: a@origin.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\n"
           b"line one\r\n.leading dot\r\n..two dots\r\nlast\r\n")


class SmtpTestServerSelfTest(unittest.TestCase):
    def server(self, **settings):
        server = SmtpTestServer(**settings).start()
        self.addCleanup(server.stop)
        return server

    def client(self, server, timeout=10):
        client = smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test",
                              timeout=timeout)
        self.addCleanup(client.close)
        return client

    def test_accepts_and_records_the_transaction(self):
        server = self.server()
        client = self.client(server)
        refused = client.sendmail("a@origin.test", ["b@dest.test", "c@dest.test"], MESSAGE,
                                  mail_options=["BODY=8BITMIME"])
        self.assertEqual(refused, {})
        client.quit()
        server.wait_for(lambda: len(server.accepted()) == 1)
        t = server.transactions[0]
        self.assertEqual(t.mail_from, "a@origin.test")
        self.assertIn("BODY=8BITMIME", t.mail_params)
        self.assertEqual(t.rcpt_to, ["b@dest.test", "c@dest.test"])
        self.assertEqual(t.data, MESSAGE)  # smtplib stuffed the dots; the server unstuffed
        self.assertEqual(t.ehlo, "client.test")
        self.assertFalse(t.tls)
        self.assertEqual(t.peer[0], "127.0.0.1")
        self.assertTrue(t.reply.startswith("250 2.0.0 Ok: queued as TEST"))
        self.assertEqual(server.delivered_to("C@dest.test"), [t])

    def test_per_recipient_replies(self):
        server = self.server(rcpt_replies={
            "bad@dest.test": "550 5.1.1 no such user",
            "grey@dest.test": ["450 4.2.0 greylisted", "250 2.1.5 Ok"],
        })
        client = self.client(server)
        refused = client.sendmail("a@origin.test",
                                  ["good@dest.test", "bad@dest.test", "grey@dest.test"], MESSAGE)
        self.assertEqual(refused, {"bad@dest.test": (550, b"5.1.1 no such user"),
                                   "grey@dest.test": (450, b"4.2.0 greylisted")})
        # The greylisting list moves on: the second attempt is accepted.
        refused = client.sendmail("a@origin.test", ["grey@dest.test"], MESSAGE)
        self.assertEqual(refused, {})
        server.wait_for(lambda: len(server.accepted()) == 2)
        first, second = server.transactions
        self.assertEqual(first.rcpt_to, ["good@dest.test"])
        self.assertEqual([r for r, _ in first.refused], ["bad@dest.test", "grey@dest.test"])
        self.assertEqual(second.rcpt_to, ["grey@dest.test"])

    def test_starttls_with_a_generated_certificate(self):
        server = self.server(starttls=True, require_tls=True)
        client = self.client(server)
        client.ehlo()
        self.assertTrue(client.has_extn("starttls"))
        code, _ = client.mail("a@origin.test")
        self.assertEqual(code, 530)  # require_tls
        client.rset()
        # The certificate verifies against itself for 127.0.0.1 (its subjectAltName).
        context = ssl.create_default_context(cafile=server.certfile)
        code, _ = client.starttls(context=context)
        self.assertEqual(code, 220)
        client.ehlo()
        self.assertFalse(client.has_extn("starttls"))
        client.sendmail("a@origin.test", ["b@dest.test"], MESSAGE)
        server.wait_for(lambda: len(server.accepted()) == 1)
        t = server.transactions[0]
        self.assertTrue(t.tls)
        self.assertEqual(server.sessions[0].ehlo_names, ["client.test", "client.test"])
        self.assertTrue(server.sessions[0].tls_version.startswith("TLS"))

    def test_greeting_refusal_then_acceptance(self):
        server = self.server(greeting=["421 4.3.2 too busy", "220 ready"])
        with self.assertRaises(smtplib.SMTPConnectError):
            smtplib.SMTP("127.0.0.1", server.port, timeout=10)
        client = self.client(server)
        self.assertEqual(client.noop()[0], 250)

    def test_mail_and_data_refusals(self):
        server = self.server(mail_reply="451 4.3.0 try later",
                             end_of_data_reply="554 5.7.1 spam")
        client = self.client(server)
        with self.assertRaises(smtplib.SMTPSenderRefused):
            client.sendmail("a@origin.test", ["b@dest.test"], MESSAGE)
        server.mail_reply = "250 2.1.0 Ok"
        with self.assertRaises(smtplib.SMTPDataError):
            client.sendmail("a@origin.test", ["b@dest.test"], MESSAGE)
        server.wait_for(lambda: len(server.transactions) == 1)
        self.assertFalse(server.transactions[0].accepted)
        self.assertEqual(server.transactions[0].data, MESSAGE)

    def test_close_after_reply_and_clock_stamps(self):
        ticks = iter(range(100, 200))
        server = self.server(rcpt_replies={"busy@dest.test": Close("421 4.3.2 bye")},
                             clock=lambda: next(ticks))
        client = self.client(server)
        client.sendmail("a@origin.test", ["b@dest.test"], MESSAGE)
        client.mail("a@origin.test")
        self.assertEqual(client.rcpt("busy@dest.test"), (421, b"4.3.2 bye"))
        # The reply was sent, then the connection closed.
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            client.noop()
        server.wait_for(lambda: server.sessions[0].closed)
        t = server.transactions[0]
        # Stamped by the server's clock, read once at accept, MAIL, RCPT and end of data.
        self.assertEqual((server.sessions[0].opened_at, t.started, t.finished), (100, 101, 103))

    def test_drop_mid_data(self):
        server = self.server(drop_mid_data=True)
        client = self.client(server)
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            client.sendmail("a@origin.test", ["b@dest.test"], MESSAGE)
        server.wait_for(lambda: server.sessions and server.sessions[0].closed)
        self.assertEqual(server.transactions, [])

    def test_drop_and_stall_at_rcpt(self):
        server = self.server(rcpt_replies={"gone@dest.test": DROP, "slow@dest.test": STALL})
        client = self.client(server)
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            client.sendmail("a@origin.test", ["gone@dest.test"], MESSAGE)
        client = self.client(server, timeout=0.5)
        client.ehlo()
        client.mail("a@origin.test")
        # smtplib turns its read timeout into a disconnection, "timed out".
        with self.assertRaisesRegex(smtplib.SMTPServerDisconnected, "timed out"):
            client.rcpt("slow@dest.test")

    def test_stall_at_end_of_data(self):
        server = self.server(end_of_data_reply=STALL)
        client = self.client(server, timeout=0.5)
        with self.assertRaisesRegex(smtplib.SMTPServerDisconnected, "timed out"):
            client.sendmail("a@origin.test", ["b@dest.test"], MESSAGE)
        # The data was read to its end; no reply was given.
        server.wait_for(lambda: len(server.transactions) == 1)
        self.assertFalse(server.transactions[0].accepted)

    def test_helo_fallback_and_pipelined_batch(self):
        server = self.server(ehlo_reply="502 5.5.2 Error: command not recognized")
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.addCleanup(sock.close)
        reader = sock.makefile("rb")
        self.assertTrue(reader.readline().startswith(b"220 "))
        sock.sendall(b"EHLO client.test\r\n")
        self.assertTrue(reader.readline().startswith(b"502 "))
        sock.sendall(b"HELO client.test\r\n")
        self.assertTrue(reader.readline().startswith(b"250 "))
        sock.sendall(b"MAIL FROM:<a@origin.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n")
        replies = [reader.readline()[:3] for _ in range(3)]
        self.assertEqual(replies, [b"250", b"250", b"354"])
        sock.sendall(b"x\r\n.\r\n")
        self.assertTrue(reader.readline().startswith(b"250 "))
        server.wait_for(lambda: len(server.accepted()) == 1)
        self.assertIn(["MAIL FROM:<a@origin.test>", "RCPT TO:<b@dest.test>", "DATA"],
                      server.sessions[0].batches)
        self.assertEqual(server.transactions[0].data, b"x\r\n")

    def test_advertised_extensions(self):
        server = self.server(pipelining=False, smtputf8=False, dsn=False, size=None)
        client = self.client(server)
        client.ehlo()
        for keyword in ("pipelining", "smtputf8", "dsn", "size", "starttls"):
            self.assertFalse(client.has_extn(keyword), keyword)
        self.assertTrue(client.has_extn("8bitmime"))
        server.dsn = True
        server.size = 1000
        client.ehlo()
        self.assertTrue(client.has_extn("dsn"))
        self.assertEqual(client.esmtp_features["size"], "1000")
        code, _ = client.mail("a@origin.test", ["SIZE=2000"])
        self.assertEqual(code, 552)

    def test_many_concurrent_connections(self):
        server = self.server()
        count = 8
        barrier = threading.Barrier(count)
        errors = []

        def send(i):
            try:
                with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                    barrier.wait(timeout=10)  # every connection open at once
                    client.sendmail("a@origin.test", ["r%d@dest.test" % i], MESSAGE)
            except Exception as e:  # noqa: BLE001 — reported below
                errors.append(e)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(errors, [])
        server.wait_for(lambda: len(server.accepted()) == count)
        self.assertEqual(sorted(t.rcpt_to[0] for t in server.transactions),
                         sorted("r%d@dest.test" % i for i in range(count)))
        self.assertEqual(len({t.peer for t in server.transactions}), count)


if __name__ == "__main__":
    unittest.main(verbosity=2)
