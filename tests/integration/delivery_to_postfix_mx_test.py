"""Delivery to a real MTA: Debian's Postfix, started on loopback as the MX of a test domain
served by a real DNS server (dnsmasq). The message arrives intact over STARTTLS; a recipient
Postfix does not know is refused at RCPT (550 5.1.1) and comes back to the sender as a DSN."""

import email
import email.policy
import unittest

import harness
from dns_server import DnsServer
from postfix_mx import PostfixMx
from smtp_test_server import SmtpTestServer


class DeliveryToPostfixTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.postfix = PostfixMx(["postfix.test"], address="127.0.0.33", tls=True,
                                valid_users=["alice"])
        cls.postfix.start()
        cls.sender_mx = SmtpTestServer(host="127.0.0.34", port=cls.postfix.port).start()
        cls.dns = DnsServer(
            mx=[("postfix.test", "mx.postfix.test", 10), ("asso.example.test", "mx.asso.example.test", 10)],
            addresses=[("mx.postfix.test", "127.0.0.33"), ("mx.asso.example.test", "127.0.0.34")])
        cls.dns.start()
        extra = "\n".join([
            "[dns]",
            "nameservers = [%s]" % harness.toml_string(cls.dns.nameserver),
            "[delivery]",
            "smtp_port = %d" % cls.postfix.port,
        ])
        cls.server = harness.Facteur(extra=extra)
        try:
            cls.server.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sender_mx.stop()
        cls.postfix.cleanup()

    def test_delivered_over_starttls_and_unknown_user_bounced(self):
        body = "Bonne année !\r\n.leading dot kept\r\n" + "x" * 900 + "\r\n"
        message = ("From: app@asso.example.test\r\nTo: alice@postfix.test\r\n"
                   "Subject: to postfix\r\nMIME-Version: 1.0\r\n"
                   "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body).encode()
        with self.server.smtp() as client:
            client.ehlo()
            refused = client.sendmail("app@asso.example.test",
                                      ["alice@postfix.test", "nobody@postfix.test"], message,
                                      mail_options=["BODY=8BITMIME"])
            self.assertEqual(refused, {})
        self.postfix.wait_for_messages(1, timeout=30)
        deliveries = self.postfix.deliveries()
        self.assertEqual(len(deliveries), 1)
        delivered = deliveries[0]
        self.assertEqual(delivered.recipient, "alice@postfix.test")
        self.assertIn("ESMTPS", delivered.received)  # Postfix says it came over TLS
        self.assertIn(body.encode(), delivered.message)
        self.assertIn(b"Subject: to postfix", delivered.message)

        self.sender_mx.wait_for(lambda: self.sender_mx.delivered_to("app@asso.example.test"),
                                timeout=30)
        dsn = email.message_from_bytes(
            self.sender_mx.delivered_to("app@asso.example.test")[0].data,
            policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        status = [p for p in dsn.iter_parts()
                  if p.get_content_type() == "message/delivery-status"][0]
        block = status.get_payload()[1]
        self.assertIn("nobody@postfix.test", block["Final-Recipient"])
        self.assertEqual(block["Status"].strip(), "5.1.1")
        self.assertIn("mx.postfix.test", block["Remote-MTA"])


if __name__ == "__main__":
    harness.main()
