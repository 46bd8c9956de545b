"""RFC 3461 through facteur, end to end: EHLO offers DSN; a recipient submitted with
NOTIFY=SUCCESS and ORCPT goes to a next server that offers DSN with both passed on (that server
reports success, not us), and to one that does not with a "relayed" DSN sent back to the sender
(RFC 3461 §5.2.2, RFC 3464 §2.3.3), parsed with Python's email package."""

import email
import email.policy
import smtplib

import harness
from smtp_test_server import SmtpTestServer


class DsnNotifySuccessTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.with_dsn = SmtpTestServer(dsn=True).start()
        cls.without_dsn = SmtpTestServer(dsn=False).start()
        routes = []
        for domain, sink in (("dsn.test", cls.with_dsn), ("plain.test", cls.without_dsn),
                             ("asso.example", cls.with_dsn)):  # DSNs to the sender
            routes += ["[[route]]", 'domain = "%s"' % domain,
                       'destination = "[127.0.0.1]:%d"' % sink.port, 'tls = "none"']
        cls.server = harness.Facteur(extra="\n".join(["[delivery]"] + routes))
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            cls.with_dsn.stop()
            cls.without_dsn.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.with_dsn.stop()
        cls.without_dsn.stop()

    def test_notify_success_passed_on_or_reported_relayed(self):
        with self.server.smtp() as client:
            code, text = client.ehlo("client.test")
            self.assertEqual(code, 250)
            self.assertTrue(client.has_extn("dsn"), text)
            message = harness.simple_message(to="a@dsn.test", subject="tell me")
            client.mail("app@asso.example", ["RET=HDRS", "ENVID=QQ314159"])
            for recipient in ("a@dsn.test", "b@plain.test"):
                code, _ = client.rcpt(recipient, ["NOTIFY=SUCCESS,FAILURE",
                                                  "ORCPT=rfc822;" + recipient])
                self.assertEqual(code, 250)
            code, _ = client.data(message)
            self.assertEqual(code, 250)

        # The server with DSN got the parameters: reporting success is its job now.
        self.with_dsn.wait_for(lambda: self.with_dsn.delivered_to("a@dsn.test"))
        taken = self.with_dsn.delivered_to("a@dsn.test")[0]
        self.assertIn("NOTIFY=SUCCESS,FAILURE", taken.rcpt_params["a@dsn.test"])
        self.assertIn("ORCPT=rfc822;a@dsn.test", taken.rcpt_params["a@dsn.test"])
        self.assertIn("ENVID=QQ314159", taken.mail_params)
        # The one without: not told, and the sender gets a "relayed" notice for that recipient.
        self.without_dsn.wait_for(lambda: self.without_dsn.delivered_to("b@plain.test"))
        plain = self.without_dsn.delivered_to("b@plain.test")[0]
        self.assertFalse(any(p.startswith("NOTIFY") for p in plain.rcpt_params["b@plain.test"]))
        self.with_dsn.wait_for(lambda: self.with_dsn.delivered_to("app@asso.example"))
        notice = self.with_dsn.delivered_to("app@asso.example")[0]
        self.assertEqual(notice.mail_from, "")
        dsn = email.message_from_bytes(notice.data, policy=email.policy.default)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(str(dsn["Subject"]), "Successful Mail Delivery Report")
        status = [p for p in dsn.iter_parts()
                  if p.get_content_type() == "message/delivery-status"][0]
        blocks = status.get_payload()
        self.assertEqual(blocks[0]["Original-Envelope-Id"].strip(), "QQ314159")
        recipient = blocks[1]
        self.assertEqual(recipient["Final-Recipient"].strip(), "rfc822; b@plain.test")
        self.assertEqual(recipient["Action"].strip(), "relayed")
        self.assertEqual(recipient["Status"].strip(), "2.0.0")
        self.assertEqual(len(blocks), 2, blocks)  # the message's block and b@'s only
        # One notice only: nothing for the recipient the other server reports on.
        harness.wait_until(lambda: self.server.cli("queue", "count").stdout.strip() == b"0",
                           what="an empty queue")
        self.assertEqual(len(self.with_dsn.delivered_to("app@asso.example")), 1)


if __name__ == "__main__":
    harness.main()
