"""SMTPUTF8 is asked of the next server only for mail that needs it (RFC 6531 §3.2): an address
or a header field outside ASCII. To an MX that does not offer SMTPUTF8, an all-ASCII message
submitted with MAIL FROM ... SMTPUTF8 is delivered (without the parameter); one with a UTF-8
Subject is refused 5.6.7, and its DSN to the ASCII sender reaches that same MX (RFC 6533: the
original's UTF-8 header section travels in the DSN's body, message/global-headers, with
BODY=8BITMIME). Before, the ASCII message bounced 5.6.7 and its DSN bounced too, lost."""

import email
import email.policy

import harness
from smtp_test_server import SmtpTestServer

ASCII = (b"From: app@asso.example\r\nTo: ascii@dest.test\r\nSubject: plain\r\n"
         b"Message-ID: <ascii.1@asso.example>\r\n\r\nhello\r\n")
UTF8 = ("From: app@asso.example\r\nTo: utf8@dest.test\r\nSubject: Bonne année\r\n"
        "Message-ID: <utf8.1@asso.example>\r\n\r\nmeilleurs vœux\r\n").encode()


class Smtputf8AskedOnlyWhenNeededTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpTestServer(host="127.0.0.75", smtputf8=False).start()
        routes = ["[delivery]", "validate_recipient_domains = false"]
        for domain in ("dest.test", "asso.example"):  # asso.example: where DSNs go
            routes += ["[[route]]", 'domain = "%s"' % domain,
                       'destination = "[127.0.0.75]:%d"' % cls.sink.port, 'tls = "none"']
        cls.server = harness.Facteur(extra="\n".join(routes))
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

    def test_ascii_goes_on_and_utf8_bounces_to_its_sender(self):
        with self.server.smtp() as client:
            client.ehlo()
            self.assertTrue(client.has_extn("smtputf8"))
            client.sendmail("app@asso.example", ["ascii@dest.test"], ASCII,
                            mail_options=["SMTPUTF8", "BODY=8BITMIME"])
            client.sendmail("app@asso.example", ["utf8@dest.test"], UTF8,
                            mail_options=["SMTPUTF8", "BODY=8BITMIME"])

        # The ASCII message, without SMTPUTF8 on its MAIL.
        self.sink.wait_for(lambda: self.sink.delivered_to("ascii@dest.test"), timeout=20)
        delivered = self.sink.delivered_to("ascii@dest.test")[0]
        self.assertNotIn("SMTPUTF8", [p.upper() for p in delivered.mail_params])
        self.assertIn(b"Subject: plain", delivered.data)

        # The UTF-8 one is refused by the relay itself (the MX never sees it), and its DSN,
        # from <> to the ASCII sender, reaches the MX as 8-bit content.
        self.sink.wait_for(lambda: self.sink.delivered_to("app@asso.example"), timeout=20)
        self.assertEqual(self.sink.delivered_to("utf8@dest.test"), [])
        dsns = self.sink.delivered_to("app@asso.example")
        self.assertEqual(len(dsns), 1, dsns)
        dsn = dsns[0]
        self.assertEqual(dsn.mail_from, "")
        self.assertNotIn("SMTPUTF8", [p.upper() for p in dsn.mail_params])
        self.assertIn("BODY=8BITMIME", [p.upper() for p in dsn.mail_params])
        report = email.message_from_bytes(dsn.data, policy=email.policy.default)
        self.assertEqual(report.get_content_type(), "multipart/report")
        status = next(p for p in report.walk()
                      if p.get_content_type() == "message/delivery-status")
        self.assertIn("5.6.7", status.as_string())
        self.assertIn("utf8@dest.test", status.as_string())
        headers = next(p for p in report.walk()
                       if p.get_content_type() == "message/global-headers")
        self.assertIn("Bonne année".encode(), headers.as_bytes())
        events = harness.read_events(self.server)
        self.assertFalse([e for e in events if e.get("recipient") == "ascii@dest.test" and
                          e["type"] == "bounce"], events)


if __name__ == "__main__":
    harness.main()
