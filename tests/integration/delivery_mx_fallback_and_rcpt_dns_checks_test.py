"""MX routing against a real DNS server (dnsmasq on loopback): the preferred MX refuses the
connection and the next one its greeting (421), so the message falls through to the third
(RFC 5321 §5.1); a domain without MX but with an
address is delivered to that address (implicit MX); and at RCPT time a null-MX domain gets
556 5.1.10, a domain that does not exist 550 5.1.2, and a DNS failure 451 4.4.3 — never a 250
for mail that can never leave."""

import socket
import time
import unittest

import harness
from dns_server import DnsServer
from smtp_test_server import SmtpTestServer


def wait_for_event(server, recipient, kind):
    return harness.wait_until(
        lambda: [e for e in harness.read_events(server)
                 if e.get("recipient") == recipient and e["type"] == kind],
        what="a %s event for %s" % (kind, recipient))


class MxAndRcptChecksTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpTestServer(host="127.0.0.32").start()
        # The second choice answers its greeting with 421: the third one must get the mail.
        cls.busy = SmtpTestServer(host="127.0.0.31", port=cls.sink.port,
                                  greeting="421 4.3.2 busy, try another MX").start()
        # The only MX of refusing.test refuses every session at the greeting.
        cls.refusing = SmtpTestServer(host="127.0.0.35", port=cls.sink.port,
                                      greeting="554 5.7.1 no service for you").start()
        # tlsbroken.test's first MX resets the connection after its 220 to STARTTLS, then
        # refuses the plain-text retry at its greeting; its second MX speaks TLS.
        cls.tls_broken = SmtpTestServer(host="127.0.0.36", port=cls.sink.port, starttls=True,
                                        starttls_breaks="reset",
                                        greeting=["220 mx0 ESMTP", "421 4.3.2 not now"]).start()
        cls.tls_next = SmtpTestServer(host="127.0.0.37", port=cls.sink.port, starttls=True).start()
        cls.dns = DnsServer(
            mx=[("mail.test", "mx0.mail.test", 5), ("mail.test", "mx1.mail.test", 10),
                ("mail.test", "mx2.mail.test", 20), ("refusing.test", "mx.refusing.test", 10),
                # bücher.test, as DNS knows it (RFC 5890 A-label).
                ("xn--bcher-kva.test", "mx2.mail.test", 10),
                ("tlsbroken.test", "mx0.tlsbroken.test", 5),
                ("tlsbroken.test", "mx1.tlsbroken.test", 10)],
            addresses=[("mx0.mail.test", "127.0.0.30"), ("mx1.mail.test", "127.0.0.31"),
                       ("mx2.mail.test", "127.0.0.32"), ("implicit.test", "127.0.0.32"),
                       ("mx.refusing.test", "127.0.0.35"), ("mx0.tlsbroken.test", "127.0.0.36"),
                       ("mx1.tlsbroken.test", "127.0.0.37")],
            null_mx=["nullmx.test"])
        cls.dns.start()
        extra = "\n".join([
            "[dns]",
            "nameservers = [%s]" % harness.toml_string(cls.dns.nameserver),
            'timeout = "3s"',
            "[delivery]",
            "smtp_port = %d" % cls.sink.port,
            'connect_timeout = "2s"',
        ])
        cls.server = harness.Facteur(extra=extra)
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            cls.dns.cleanup()
            cls.sink.stop()
            cls.busy.stop()
            cls.refusing.stop()
            cls.tls_broken.stop()
            cls.tls_next.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sink.stop()
        cls.busy.stop()
        cls.refusing.stop()
        cls.tls_broken.stop()
        cls.tls_next.stop()

    def rcpt(self, address):
        raw = self.server.raw()
        try:
            self.assertEqual(raw.reply()[0], 220)
            self.assertEqual(raw.command("EHLO client.test\r\n")[0], 250)
            self.assertEqual(raw.command("MAIL FROM:<app@asso.example>\r\n")[0], 250)
            return raw.command("RCPT TO:<%s>\r\n" % address)
        finally:
            raw.close()

    def test_falls_through_to_the_next_mx(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["someone@mail.test"],
                            harness.simple_message(to="someone@mail.test", subject="fallback"))
        self.sink.wait_for(lambda: self.sink.delivered_to("someone@mail.test"), timeout=20)
        # mx0 refused the connection, mx1 refused the greeting, mx2 took it.
        events = wait_for_event(self.server, "someone@mail.test", "delivery")
        self.assertTrue(events[0]["mx"].startswith("mx2.mail.test[127.0.0.32]"), events[0])
        self.assertTrue(self.busy.sessions, "the 421 MX was tried first")
        self.assertEqual(self.busy.transactions, [])

    def test_a_5xx_greeting_defers_instead_of_bouncing(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["someone@refusing.test"],
                            harness.simple_message(to="someone@refusing.test", subject="refused"))
        events = wait_for_event(self.server, "someone@refusing.test", "transient_failure")
        self.assertEqual(events[0]["code"], 451, events[0])
        self.assertIn("554 no service for you", events[0]["response"])
        self.assertFalse([e for e in harness.read_events(self.server)
                          if e.get("recipient") == "someone@refusing.test" and e["type"] == "bounce"])

    def test_implicit_mx(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["someone@implicit.test"],
                            harness.simple_message(to="someone@implicit.test", subject="implicit"))
        self.sink.wait_for(lambda: self.sink.delivered_to("someone@implicit.test"), timeout=20)

    def test_null_mx_refused_at_rcpt(self):
        code, text = self.rcpt("someone@nullmx.test")
        self.assertEqual(code, 556, text)
        self.assertIn("5.1.10", text)
        self.assertIn("Domain does not accept mail (nullMX)", text)

    def test_nxdomain_refused_at_rcpt(self):
        code, text = self.rcpt("someone@does-not-exist.test")
        self.assertEqual(code, 550, text)
        self.assertIn("5.1.2", text)

    def test_dns_refusal_is_temporary(self):
        # dnsmasq refuses names outside its zones: the answer says nothing about the domain.
        code, text = self.rcpt("someone@outside.example")
        self.assertEqual(code, 451, text)
        self.assertIn("4.4.3", text)

    def test_an_internationalised_domain_is_checked_and_delivered_by_its_a_label(self):
        # RFC 6531: the client names u@bücher.test in UTF-8; DNS and routing use the A-label
        # (RFC 5890). A name that is no IDN (a snowman, IDNA2008 disallows it) is refused.
        raw = self.server.raw()
        try:
            self.assertEqual(raw.reply()[0], 220)
            self.assertEqual(raw.command("EHLO client.test\r\n")[0], 250)
            self.assertEqual(raw.command("MAIL FROM:<app@asso.example> SMTPUTF8\r\n")[0], 250)
            code, text = raw.command("RCPT TO:<u@\u2603.test>\r\n")
            self.assertEqual(code, 550, text)
            self.assertIn("5.1.2", text)
            code, text = raw.command("RCPT TO:<u@b\u00fccher.test>\r\n")
            self.assertEqual(code, 250, text)
            self.assertEqual(raw.command("DATA\r\n")[0], 354)
            code, text = raw.command(harness.simple_message(
                to="u@b\u00fccher.test", subject="idn").decode() + "\r\n.\r\n")
            self.assertEqual(code, 250, text)
        finally:
            raw.close()
        self.sink.wait_for(lambda: self.sink.delivered_to("u@b\u00fccher.test"), timeout=20)
        events = wait_for_event(self.server, "u@b\u00fccher.test", "delivery")
        self.assertTrue(events[0]["mx"].startswith("mx2.mail.test[127.0.0.32]"), events[0])

    def test_a_broken_tls_sends_that_address_only_in_plain_text(self):
        # Opportunistic TLS broke at mx0 (a reset): mx0 again in plain text (it refuses), then
        # mx1 with STARTTLS as usual; before, the rest of the attempt went without it.
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["someone@tlsbroken.test"],
                            harness.simple_message(to="someone@tlsbroken.test", subject="tls"))
        self.tls_next.wait_for(lambda: self.tls_next.delivered_to("someone@tlsbroken.test"),
                               timeout=20)
        self.assertTrue(self.tls_next.delivered_to("someone@tlsbroken.test")[0].tls)
        self.assertEqual(len(self.tls_broken.sessions), 2)  # with STARTTLS, then without

    def test_known_domain_accepted(self):
        code, text = self.rcpt("someone@mail.test")
        self.assertEqual(code, 250, text)


class DnsTimeoutAtRcptTest(unittest.TestCase):
    """A nameserver that never answers: RCPT gets 451 4.4.3 once the configured timeout passed."""

    def test_timeout(self):
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        extra = "\n".join([
            "[dns]",
            'nameservers = ["127.0.0.1:%d"]' % silent.getsockname()[1],
            'timeout = "1s"',
            "attempts = 1",
            "[delivery]",
        ])
        server = harness.Facteur(extra=extra)
        try:
            server.start()
            raw = server.raw(timeout=20)
            self.assertEqual(raw.reply()[0], 220)
            raw.command("EHLO client.test\r\n")
            raw.command("MAIL FROM:<app@asso.example>\r\n")
            started = time.monotonic()
            code, text = raw.command("RCPT TO:<someone@slow.test>\r\n")
            elapsed = time.monotonic() - started
            raw.close()
            self.assertEqual(code, 451, text)
            self.assertIn("4.4.3", text)
            self.assertGreater(elapsed, 0.5)
            self.assertLess(elapsed, 5.0)
        finally:
            server.cleanup()
            silent.close()


if __name__ == "__main__":
    harness.main()
