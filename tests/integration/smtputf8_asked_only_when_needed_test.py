"""SMTPUTF8 is asked of the next server only for mail that may need it (RFC 6531 §3.2). To an
MX that does not offer SMTPUTF8, an all-ASCII message submitted with MAIL FROM ... SMTPUTF8 is
delivered, without the parameter, and the DSN of an all-ASCII message refused there reaches
the sender through it too. Before, both bounced with 5.6.7, the DSN lost with them. A message
with a UTF-8 Subject still needs SMTPUTF8: refused 5.6.7 by the relay, the MX never sees it."""

import email
import email.policy
import json

import harness
from smtp_test_server import SmtpTestServer

ASCII = (b"From: app@asso.example\r\nTo: ascii@dest.test\r\nSubject: plain\r\n"
         b"Message-ID: <ascii.1@asso.example>\r\n\r\nhello\r\n")
GONE = (b"From: app@asso.example\r\nTo: gone@dest.test\r\nSubject: refused\r\n"
        b"Message-ID: <gone.1@asso.example>\r\n\r\nhello\r\n")
UTF8 = ("From: app@asso.example\r\nTo: utf8@dest.test\r\nSubject: Bonne année\r\n"
        "Message-ID: <utf8.1@asso.example>\r\n\r\nmeilleurs vœux\r\n").encode()


class Smtputf8AskedOnlyWhenNeededTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpTestServer(host="127.0.0.75", smtputf8=False, rcpt_replies={
            "gone@dest.test": "550 5.1.1 <gone@dest.test>: no such user"}).start()
        routes = ["[delivery]", "validate_recipient_domains = false"]
        for domain in ("dest.test", "asso.example"):  # asso.example: where DSNs go
            routes += ["[[route]]", 'domain = "%s"' % domain,
                       'destination = "[127.0.0.75]:%d"' % cls.sink.port, 'tls = "none"']
        cls.server = harness.Facteur(extra="\n".join(routes))
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.sink.stop()

    def test_ascii_goes_on_and_utf8_is_refused_without_smtputf8(self):
        with self.server.smtp() as client:
            client.ehlo()
            self.assertTrue(client.has_extn("smtputf8"))
            for recipient, message in (("ascii@dest.test", ASCII), ("gone@dest.test", GONE),
                                       ("utf8@dest.test", UTF8)):
                client.sendmail("app@asso.example", [recipient], message,
                                mail_options=["SMTPUTF8", "BODY=8BITMIME"])

        # The ASCII message, without SMTPUTF8 on its MAIL.
        self.sink.wait_for(lambda: self.sink.delivered_to("ascii@dest.test"), timeout=20)
        delivered = self.sink.delivered_to("ascii@dest.test")[0]
        self.assertNotIn("SMTPUTF8", [p.upper() for p in delivered.mail_params])
        self.assertIn(b"Subject: plain", delivered.data)

        # The ASCII message refused by the MX: its DSN, from <> to the sender, gets there too.
        self.sink.wait_for(lambda: self.sink.delivered_to("app@asso.example"), timeout=20)
        dsn = self.sink.delivered_to("app@asso.example")[0]
        self.assertEqual(dsn.mail_from, "")
        self.assertNotIn("SMTPUTF8", [p.upper() for p in dsn.mail_params])
        report = email.message_from_bytes(dsn.data, policy=email.policy.default)
        status = next(p for p in report.walk()
                      if p.get_content_type() == "message/delivery-status")
        self.assertIn("gone@dest.test", status.as_string())
        self.assertIn("5.1.1", status.as_string())

        # The UTF-8 message is refused by the relay itself (5.6.7): the MX never sees it.
        bounce = harness.events_when(self.server, lambda events: [
            e for e in events if e["type"] == "bounce" and e.get("recipient") == "utf8@dest.test"],
            what="the UTF-8 message's bounce")
        self.assertIn("5.6.7", json.dumps(bounce))
        self.assertEqual(self.sink.delivered_to("utf8@dest.test"), [])
        events = harness.read_events(self.server)
        self.assertFalse([e for e in events if e.get("recipient") == "ascii@dest.test" and
                          e["type"] == "bounce"], events)

if __name__ == "__main__":
    harness.main()
