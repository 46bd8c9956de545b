"""The Postfix receiving MX fixture (postfix_mx.py) does what delivery scenarios rely on: it
greets on its own loopback address, delivers a valid recipient's message into a Maildir with the
bytes the client sent, refuses an unknown user with 550 5.1.1 and other domains with 554 5.7.1
at RCPT, offers STARTTLS with its certificate, lays its queue out as `postfix check` wants, runs
next to a second instance, sweeps a killed run's leftovers, and closes its port when stopped.
It does not need the facteur binary."""

import os
import smtplib
import ssl
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import postfix_mx  # noqa: E402


def no_verify_context():
    """The certificate is self-signed: it is compared byte for byte below instead."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class PostfixMxSelfTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.mx = postfix_mx.PostfixMx(["dest.example", "other.example"], address="127.0.0.2",
                                      tls=True, valid_users=["bob", "carol@other.example"])
        cls.mx.start()
        sys.stderr.write("postfix started in %.2fs on %s:%d\n" % (
            cls.mx.start_seconds, cls.mx.address, cls.mx.port))

    @classmethod
    def tearDownClass(cls):
        cls.mx.cleanup()

    def tearDown(self):
        # Our main.cf and master.cf should not make Postfix complain about anything.
        self.assertNotRegex(self.mx.log(), r"postfix/\S+\[\d+\]: (warning|error|fatal|panic):")

    def smtp(self):
        return smtplib.SMTP(self.mx.address, self.mx.port, timeout=10)

    def delivered_to(self, recipient, marker, count, timeout=10.0):
        """The messages to `recipient` holding `marker`, once there are `count` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = [d for d in self.mx.deliveries()
                     if d.recipient == recipient and marker in d.raw]
            if len(found) >= count or time.monotonic() > deadline:
                self.assertEqual(len(found), count, self.mx.log())
                return found
            time.sleep(0.02)

    def test_greeting_names_the_instance(self):
        with self.smtp() as client:
            code, text = client.ehlo("client.example")
            self.assertEqual(code, 250)
            self.assertIn(b"STARTTLS", text)
            self.assertEqual(client.docmd("NOOP")[0], 250)
        self.assertTrue(self.mx.greets())

    def test_valid_user_is_delivered_and_unknown_user_gets_550_5_1_1(self):
        message = (b"From: app@asso.example\r\nTo: bob@dest.example\r\n"
                   b"Subject: valid\r\n\r\nthe body of the valid message\r\n")
        with self.smtp() as client:
            self.assertEqual(client.sendmail("app@asso.example", ["bob@dest.example"], message),
                             {})
            client.ehlo_or_helo_if_needed()
            self.assertEqual(client.mail("app@asso.example")[0], 250)
            code, text = client.rcpt("nobody@dest.example")
            self.assertEqual(code, 550, text)
            self.assertTrue(text.startswith(b"5.1.1 <nobody@dest.example>"), text)
            # carol exists only in other.example: not in dest.example.
            code, text = client.rcpt("carol@dest.example")
            self.assertEqual(code, 550, text)
            # Not one of its domains: an MX does not relay.
            code, text = client.rcpt("bob@elsewhere.example")
            self.assertEqual(code, 554, text)
            self.assertTrue(text.startswith(b"5.7.1 "), text)
            self.assertEqual(client.rset()[0], 250)

        delivered = self.delivered_to("bob@dest.example", b"valid message", 1)[0]
        self.assertEqual(delivered.message, message)
        self.assertEqual(delivered.sender, "app@asso.example")
        self.assertIn(b"the body of the valid message", delivered.raw)
        self.assertTrue(delivered.raw.startswith(b"Return-Path: <app@asso.example>\n"))
        self.assertIn("by %s (Postfix)" % self.mx.hostname, delivered.received)
        self.assertTrue(delivered.path.startswith(self.mx.mail_directory))
        self.assertEqual(self.delivered_to("nobody@dest.example", b"", 0, timeout=0), [])
        self.assertIn("550 5.1.1 <nobody@dest.example>", self.mx.log())

    def test_message_bytes_are_kept(self):
        # Leading dots (dot-stuffed on the wire), 8-bit UTF-8, a folded header, a long line,
        # a header-like body line, no Message-ID or Date to add. (Not a bare CR: Postfix
        # turns it into a space.)
        message = ("From: app@asso.example\r\nTo: carol@other.example\r\n"
                   "Subject: =?utf-8?q?caf=C3=A9?=\r\n folded on\r\n\tseveral lines\r\n"
                   "X-Test: kept\r\n\r\n"
                   ".a line starting with a dot\r\n..two dots\r\n.\r\n"
                   "caf\u00e9 \u2014 na\u00efve\r\nReceived: not a header here\r\n"
                   "x" * 990 + "\r\n").encode("utf-8")
        with self.smtp() as client:
            self.assertEqual(client.sendmail("app@asso.example", ["Carol@Other.Example"],
                                             message, mail_options=["BODY=8BITMIME"]), {})
        # Delivered-To: keeps the case of RCPT TO.
        delivered = self.delivered_to("Carol@Other.Example", b"two dots", 1)[0]
        self.assertEqual(delivered.original_recipient, "Carol@Other.Example")
        self.assertEqual(delivered.message, message)

    def test_starttls_with_the_instance_certificate(self):
        with open(self.mx.cert_path) as f:
            expected = ssl.PEM_cert_to_DER_cert(f.read())
        with self.smtp() as client:
            client.ehlo("client.example")
            self.assertEqual(client.starttls(context=no_verify_context())[0], 220)
            self.assertEqual(client.sock.getpeercert(binary_form=True), expected)
            client.ehlo("client.example")
            self.assertNotIn(b"STARTTLS", client.ehlo_resp)
            self.assertEqual(client.sendmail("", ["carol@other.example"],
                                             b"Subject: tls\r\n\r\nsecret\r\n"), {})
        delivered = self.delivered_to("carol@other.example", b"secret", 1)
        self.assertIn("with ESMTPS", delivered[0].received)
        self.assertEqual(delivered[0].sender, "")  # the null sender

    def test_layout_passes_postfix_check(self):
        code, output = self.mx.postfix_check()
        self.assertEqual(code, 0, output)
        self.assertNotIn("warning", output)
        self.assertNotIn("fatal", output)

    def test_second_instance_at_the_same_time_then_stop(self):
        # A killed run's directory: its owner is gone (a process we started and reaped).
        dead = subprocess.Popen(["/bin/true"])
        dead.wait()
        leftover = os.path.join(postfix_mx.parent_directory(),
                                "%sleft-%d" % (postfix_mx.DIR_PREFIX, os.getpid()))
        os.makedirs(os.path.join(leftover, "queue"), exist_ok=True)
        with open(os.path.join(leftover, "owner.pid"), "w") as f:
            f.write("%d\n" % dead.pid)

        second = postfix_mx.PostfixMx(["second.example"], address="127.0.0.3")
        try:
            second.start()
            self.assertFalse(os.path.exists(leftover), "a dead run's directory was kept")
            self.assertTrue(os.path.isdir(self.mx.base), "a live instance's directory went")
            self.assertNotEqual(second.base, self.mx.base)
            with smtplib.SMTP(second.address, second.port, timeout=10) as client:
                client.ehlo("client.example")
                self.assertNotIn(b"STARTTLS", client.ehlo_resp)
                # Without valid_users, every local part of its domains is accepted.
                self.assertEqual(client.sendmail("app@asso.example",
                                                 ["anyone@second.example", "else@second.example"],
                                                 b"Subject: second\r\n\r\nsecond body\r\n"), {})
                self.assertEqual(client.mail("app@asso.example")[0], 250)
                code, text = client.rcpt("bob@dest.example")  # the first instance's domain
                self.assertEqual(code, 554, text)
            second.wait_for_messages(2)
            self.assertEqual(sorted(second.messages()), [
                ("anyone@second.example", b"Subject: second\r\n\r\nsecond body\r\n"),
                ("else@second.example", b"Subject: second\r\n\r\nsecond body\r\n")])
            self.assertFalse([d for d in self.mx.deliveries() if b"second body" in d.raw])

            pgid = second.process.pid
            second.stop()
            self.assertTrue(second.port_closed())
            # master and every daemon of that instance are gone.
            self.assertEqual(postfix_mx.group_members(pgid), [])
            sys.stderr.write("second instance: started in %.2fs, stopped in %.2fs\n" % (
                second.start_seconds, second.stop_seconds))
        finally:
            base = second.base
            second.cleanup()
        self.assertFalse(os.path.exists(base))
        self.assertTrue(self.mx.greets(), "stopping one instance stopped the other")


if __name__ == "__main__":
    unittest.main(verbosity=2)
