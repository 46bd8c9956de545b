"""Every bad input of issue #2 point 6 gets its exact reply (code and enhanced code), and a
session opened before the hostile one is still served: after each hostile input it runs a whole
transaction. Includes the SMTP smuggling class (CVE-2023-51764): a bare LF or CR in DATA is
refused with 521 5.5.2 and the connection closed, "<LF>.<LF>" never ends the data, and nothing
smuggled gets queued."""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MAX_SIZE = 20000
MAX_RECIPIENTS = 3
MAX_ERRORS = 8

LIMITS = """
[smtp]
max_message_size = %d
max_recipients = %d
max_errors = %d
idle_timeout = "%s"
"""


class HostileSessionCase(harness.ServerTestCase):
    """A server per class; per test a bystander session opened before the hostile one."""

    idle_timeout = "30s"

    @classmethod
    def config_extra(cls):
        return LIMITS % (MAX_SIZE, MAX_RECIPIENTS, MAX_ERRORS, cls.idle_timeout)

    def setUp(self):
        self.bystander = self.session()
        self.hostile = self.session()

    def session(self):
        raw = self.server.raw()
        self.addCleanup(raw.close)
        self.assertEqual(raw.reply()[0], 220)
        code, text = raw.command("EHLO client.example\r\n")
        self.assertEqual(code, 250, text)
        return raw

    def count(self):
        return int(self.server.cli("queue", "count").stdout)

    def expect(self, raw, data, prefix):
        code, text = raw.command(data)
        self.assertTrue(text.startswith(prefix), (data[:80], text))
        return text

    def expect_closed(self, raw):
        self.assertTrue(raw.closed(timeout=5), "the server did not close the connection")

    def bystander_is_served(self):
        """A whole transaction on the session opened before the hostile one."""
        raw = self.bystander
        self.expect(raw, "MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect(raw, "RCPT TO:<bob@example.com>\r\n", "250 2.1.5")
        self.expect(raw, "DATA\r\n", "354 ")
        text = self.expect(raw, harness.simple_message(subject="bystander") + b".\r\n",
                           "250 2.0.0 Ok: queued as ")
        self.assertEqual(len(harness.queued_id(text)), 26)
        # And a new session is served too.
        fresh = self.session()
        self.expect(fresh, "NOOP\r\n", "250 2.0.0")
        fresh.close()

    def open_transaction(self, raw, recipients=("bob@example.com",)):
        self.expect(raw, "MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        for recipient in recipients:
            self.expect(raw, "RCPT TO:<%s>\r\n" % recipient, "250 2.1.5")
        self.expect(raw, "DATA\r\n", "354 ")


class MalformedInputRepliesTest(HostileSessionCase):
    # -- line lengths (RFC 5321 section 4.5.3.1) -------------------------------------------

    def test_command_line_over_512_octets_is_500_5_5_2(self):
        line = b"NOOP " + b"x" * (512 - len(b"NOOP \r\n")) + b"\r\n"
        self.assertEqual(len(line), 512)
        self.expect(self.hostile, line, "250 ")  # exactly 512 with CRLF: allowed
        self.expect(self.hostile, b"NOOP " + b"x" * 508 + b"\r\n", "500 5.5.2")  # 513
        self.expect(self.hostile, b"RCPT TO:<" + b"a" * 2100 + b"@example.com>\r\n", "500 5.5.2")
        self.expect(self.hostile, "NOOP\r\n", "250 2.0.0")  # the session goes on
        self.bystander_is_served()

    def test_mail_and_rcpt_may_exceed_512_octets_with_dsn_parameters(self):
        # RFC 1869 section 4.1.2 / RFC 3461: ENVID and ORCPT lengthen MAIL and RCPT past the 512
        # octets of RFC 5321 section 4.5.3.1.4 (an ORCPT alone may take 500).
        mail = "MAIL FROM:<app@asso.example> RET=HDRS ENVID=%s\r\n" % ("E" * 100)
        self.expect(self.hostile, mail, "250 2.1.0")
        orcpt = "rfc822;" + "o" * 480 + "@example.com"
        rcpt = "RCPT TO:<bob@example.com> NOTIFY=FAILURE ORCPT=%s\r\n" % orcpt
        self.assertGreater(len(rcpt), 512)
        self.expect(self.hostile, rcpt, "250 2.1.5")
        # A path still may not be longer than RFC 5321 section 4.5.3.1.3 allows.
        self.expect(self.hostile, b"RCPT TO:<" + b"a" * 600 + b"@example.com>\r\n", "501 ")
        self.expect(self.hostile, "RSET\r\n", "250 2.0.0")

    def test_endless_command_line_is_dropped_as_it_comes(self):
        before = self.count()
        chunk = b"x" * 65536
        for _ in range(32):  # 2 MiB without a line end
            self.hostile.send(chunk)
        self.bystander_is_served()  # while the hostile line is still open
        self.expect(self.hostile, "\r\n", "500 5.5.2")
        self.expect(self.hostile, "NOOP\r\n", "250 2.0.0")
        self.assertEqual(self.count(), before + 1)

    def test_text_line_over_1000_octets_is_500_5_5_6_at_end_of_data(self):
        before = self.count()
        self.open_transaction(self.hostile)
        body = harness.simple_message(body="a" * 998 + "\r\n")  # 1000 with CRLF: allowed
        self.expect(self.hostile, body + b".\r\n", "250 2.0.0 Ok: queued as ")
        self.open_transaction(self.hostile)
        self.hostile.send(harness.simple_message(body="ok\r\n" + "b" * 999 + "\r\nend\r\n"))
        self.bystander_is_served()  # while the hostile DATA is open
        self.expect(self.hostile, ".\r\n", "500 5.5.6")
        self.expect(self.hostile, "RSET\r\n", "250 2.0.0")
        self.assertEqual(self.count(), before + 2)  # the 1000-octet one and the bystander's

    # -- SIZE (RFC 1870) ---------------------------------------------------------------------

    def test_size_parameter_over_the_limit_is_552_5_3_4(self):
        code, text = self.hostile.command("EHLO client.example\r\n")
        self.assertIn("SIZE %d" % MAX_SIZE, text)
        self.expect(self.hostile, "MAIL FROM:<app@asso.example> SIZE=%d\r\n" % (MAX_SIZE + 1),
                    "552 5.3.4")
        self.expect(self.hostile, "MAIL FROM:<app@asso.example> SIZE=%d\r\n" % MAX_SIZE,
                    "250 2.1.0")
        self.bystander_is_served()

    def test_message_over_the_limit_is_552_5_3_4_at_end_of_data(self):
        before = self.count()
        self.open_transaction(self.hostile)
        line = "c" * 98 + "\r\n"
        self.hostile.send(harness.simple_message(body=line * (MAX_SIZE // 100 + 10)))
        self.bystander_is_served()
        self.expect(self.hostile, ".\r\n", "552 5.3.4")
        self.assertEqual(self.count(), before + 1)
        self.expect(self.hostile, "NOOP\r\n", "250 2.0.0")
        self.bystander_is_served()

    # -- recipients, sequence, syntax ----------------------------------------------------------

    def test_recipients_past_the_limit_are_452_4_5_3(self):
        self.expect(self.hostile, "MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        for n in range(MAX_RECIPIENTS):
            self.expect(self.hostile, "RCPT TO:<r%d@example.com>\r\n" % n, "250 2.1.5")
        self.expect(self.hostile, "RCPT TO:<extra@example.com>\r\n", "452 4.5.3")
        self.expect(self.hostile, "RCPT TO:<extra2@example.com>\r\n", "452 4.5.3")
        self.bystander_is_served()
        # The accepted recipients still get the message (RFC 5321 section 4.5.3.1.10).
        self.expect(self.hostile, "DATA\r\n", "354 ")
        text = self.expect(self.hostile, harness.simple_message() + b".\r\n",
                           "250 2.0.0 Ok: queued as ")
        shown = json.loads(self.server.cli("queue", "show", harness.queued_id(text),
                                           "--json").stdout)
        self.assertEqual(len(shown["recipients"]), MAX_RECIPIENTS)

    def test_bad_sequence_is_503_5_5_1(self):
        self.expect(self.hostile, "RCPT TO:<bob@example.com>\r\n", "503 5.5.1")
        self.expect(self.hostile, "DATA\r\n", "503 5.5.1")
        self.expect(self.hostile, "MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect(self.hostile, "MAIL FROM:<app@asso.example>\r\n", "503 5.5.1")  # nested
        self.bystander_is_served()

    def test_mail_before_ehlo_is_503(self):
        raw = self.server.raw()
        self.addCleanup(raw.close)
        self.assertEqual(raw.reply()[0], 220)
        self.expect(raw, "MAIL FROM:<app@asso.example>\r\n", "503 ")
        self.bystander_is_served()

    def test_unknown_command_is_500_5_5_1(self):
        self.expect(self.hostile, "FROB the server\r\n", "500 5.5.1")
        self.expect(self.hostile, "\r\n", "500 5.5.")  # an empty line is no command either
        self.expect(self.hostile, "NOOP\r\n", "250 2.0.0")
        self.bystander_is_served()

    def test_malformed_addresses_are_501(self):
        self.expect(self.hostile, "MAIL FROM:<not an address>\r\n", "501 5.1.7")
        self.expect(self.hostile, "MAIL FROM:<app@@asso.example>\r\n", "501 5.1.7")
        self.expect(self.hostile, "MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        self.expect(self.hostile, "RCPT TO:<bob@>\r\n", "501 5.1.3")
        self.expect(self.hostile, "RCPT TO:<bob smith@example.com>\r\n", "501 5.1.3")
        self.expect(self.hostile, "RCPT TO:<bob@exa mple.com>\r\n", "501 5.1.3")
        self.bystander_is_served()

    def test_address_literal_recipients_are_550_5_7_1(self):
        # Well-formed (RFC 5321 §4.1.3), but with no route to take them (no smarthost for
        # "*"): refused now rather than accepted and retried against a "domain" no DNS lookup
        # can answer until the message expires. A policy refusal, not a client error: as many
        # as max_errors of them do not close the session.
        self.expect(self.hostile, "MAIL FROM:<app@asso.example>\r\n", "250 2.1.0")
        for n in range(MAX_ERRORS + 1):
            self.expect(self.hostile, "RCPT TO:<bob%d@[127.0.0.1]>\r\n" % n, "550 5.7.1")
        self.expect(self.hostile, "RCPT TO:<bob@[IPv6:::1]>\r\n", "550 5.7.1")
        self.expect(self.hostile, "RCPT TO:<bob@example.com>\r\n", "250 2.1.5")
        self.bystander_is_served()

    def test_too_many_errors_is_421_4_7_0_then_close(self):
        for _ in range(MAX_ERRORS):
            self.expect(self.hostile, "FROB\r\n", "500 5.5.1")
        self.assertTrue(self.hostile.reply()[1].startswith("421 4.7.0"))
        self.expect_closed(self.hostile)
        self.bystander_is_served()

    # -- SMTP smuggling (RFC 5321 section 2.3.8; CVE-2023-51764, CVE-2023-51766) -------------

    def smuggle(self, payload):
        before = self.count()
        self.open_transaction(self.hostile)
        code, text = self.hostile.command(payload)
        self.assertTrue(text.startswith("521 5.5.2"), (payload, text))
        self.expect_closed(self.hostile)
        self.assertEqual(self.count(), before, "a smuggling attempt queued something")
        self.bystander_is_served()
        self.assertEqual(self.count(), before + 1)

    def smuggled_transaction(self, end):
        return (b"From: app@asso.example\r\nTo: bob@example.com\r\nSubject: outer\r\n\r\n"
                b"outer body" + end +
                b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<target@example.com>\r\nDATA\r\n"
                b"From: ceo@victim.example\r\n\r\nsmuggled\r\n.\r\n")

    def test_lf_dot_lf_is_521_and_smuggles_nothing(self):
        self.smuggle(self.smuggled_transaction(b"\n.\n"))

    def test_crlf_dot_lf_is_521(self):
        self.smuggle(self.smuggled_transaction(b"\r\n.\n"))

    def test_lf_dot_crlf_is_521(self):
        self.smuggle(self.smuggled_transaction(b"\n.\r\n"))

    def test_cr_dot_cr_is_521(self):
        self.smuggle(self.smuggled_transaction(b"\r.\r"))

    def test_bare_cr_inside_a_line_is_521(self):
        self.smuggle(b"Subject: x\r\n\r\nline with a bare \r in it\r\n.\r\n")


class IdleTimeoutTest(HostileSessionCase):
    idle_timeout = "1s"

    def test_idle_session_gets_421_4_4_2_then_close(self):
        # The bystander must not be idle itself: it sends a NOOP between short waits for the
        # hostile session's 421 (a bounded loop, no sleep).
        self.hostile.sock.settimeout(0.25)
        deadline = time.monotonic() + 10
        reply = None
        while reply is None and time.monotonic() < deadline:
            try:
                reply = self.hostile.reply()
            except socket.timeout:
                self.expect(self.bystander, "NOOP\r\n", "250 2.0.0")
        self.assertIsNotNone(reply, "no 421 within 10 s of a 1 s idle timeout")
        self.assertTrue(reply[1].startswith("421 4.4.2"), reply)
        self.expect_closed(self.hostile)
        self.bystander_is_served()

    def test_slow_but_active_client_is_not_cut(self):
        # Input that keeps coming, a byte at a time, well inside the timeout, is not idle.
        for byte in b"NOOP\r\n":
            self.hostile.send(bytes([byte]))
            self.expect(self.bystander, "NOOP\r\n", "250 2.0.0")
        self.assertTrue(self.hostile.reply()[1].startswith("250 2.0.0"))


class AddressLiteralThroughASmarthostTest(harness.unittest.TestCase):
    """With a smarthost route for "*", an address literal has a way out: accepted."""

    def test_address_literal_is_accepted_when_a_route_takes_it(self):
        server = harness.Facteur(extra='[[route]]\ndomain = "*"\n'
                                       'destination = "[127.0.0.1]:2525"\ntls = "none"\n')
        self.addCleanup(server.cleanup)
        server.start()
        raw = server.raw()
        self.addCleanup(raw.close)
        self.assertEqual(raw.reply()[0], 220)
        self.assertEqual(raw.command("EHLO client.test\r\n")[0], 250)
        self.assertEqual(raw.command("MAIL FROM:<app@asso.example>\r\n")[0], 250)
        code, text = raw.command("RCPT TO:<bob@[127.0.0.1]>\r\n")
        self.assertEqual(code, 250, text)


if __name__ == "__main__":
    harness.main()
