"""A PostfixMx with postgrey_delay greylists as a real MX does (postfix_mx.py): the first RCPT
of a triplet gets postgrey's 450 4.2.0 "Greylisted" through Postfix, an unknown user still gets
550 5.1.1, an early retry is greylisted again, the retry after the delay is accepted and
delivered with postgrey's X-Greylist: field, another address of the same /24 counts as the same
client, another sender does not, and stopping the instance stops postgrey. Driven by smtplib;
it needs no facteur binary."""

import os
import smtplib
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import postfix_mx  # noqa: E402

DELAY = 2  # seconds of real time: postgrey counts whole seconds
MESSAGE = b"From: app@asso.example\r\nTo: bob@dest.example\r\nSubject: grey\r\n\r\nlater\r\n"


class PostgreySelfTest(unittest.TestCase):

    def test_greylists_then_accepts_the_retry(self):
        mx = postfix_mx.PostfixMx(["dest.example"], address="127.0.0.4", valid_users=["bob"],
                                  postgrey_delay=DELAY)
        mx.start()
        try:
            self.run_scenario(mx)
        except BaseException:
            sys.stderr.write(mx.log()[-20000:])
            raise
        finally:
            postgrey = mx.postgrey
            mx.cleanup()
        self.assertIsNotNone(postgrey.poll(), "postgrey outlived the instance")
        self.assertEqual(postgrey.returncode, 0)  # stopped cleanly by SIGTERM

    def rcpt(self, mx, rcpt, sender="app@asso.example", source="127.0.0.1"):
        with smtplib.SMTP(mx.address, mx.port, timeout=10,
                          source_address=(source, 0)) as client:
            client.ehlo("relay.asso.example")
            self.assertEqual(client.mail(sender)[0], 250)
            code, text = client.rcpt(rcpt)
            return code, text.decode()

    def run_scenario(self, mx):
        first_attempt = time.monotonic()
        code, text = self.rcpt(mx, "bob@dest.example")
        self.assertEqual(code, 450, text)
        self.assertEqual(text, "4.2.0 <bob@dest.example>: Recipient address rejected: "
                               "Greylisted, see http://postgrey.schweikert.ch/help/"
                               "dest.example.html")
        # reject_unlisted_recipient comes before the policy service.
        code, text = self.rcpt(mx, "nobody@dest.example")
        self.assertEqual(code, 550, text)
        self.assertTrue(text.startswith("5.1.1 "), text)
        # An early retry is greylisted again.
        self.assertEqual(self.rcpt(mx, "bob@dest.example")[0], 450)

        # postgrey compares whole seconds: DELAY + 0.1 real seconds is always enough.
        time.sleep(max(0.0, first_attempt + DELAY + 0.1 - time.monotonic()))
        with smtplib.SMTP(mx.address, mx.port, timeout=10) as client:
            self.assertEqual(client.sendmail("app@asso.example", ["bob@dest.example"], MESSAGE),
                             {})
        delivered = mx.wait_for_messages(1)[0]
        self.assertEqual(delivered.recipient, "bob@dest.example")
        self.assertEqual(delivered.message, MESSAGE)
        self.assertRegex(delivered.greylist, r"^X-Greylist: delayed [2-9] seconds by postgrey-")
        self.assertIn("by %s (Postfix)" % mx.hostname, delivered.received)

        # Postgrey keys on the client's /24: another address of it is the same client.
        self.assertEqual(self.rcpt(mx, "bob@dest.example", source="127.0.0.9")[0], 250)
        # Another sender is another triplet.
        self.assertEqual(self.rcpt(mx, "bob@dest.example", sender="other@asso.example")[0], 450)

        log = mx.postgrey_log()
        # (An early retry within the same second is logged "reason=new" too.)
        self.assertEqual(log.count("action=greylist, reason="), 3, log)
        self.assertEqual(log.count("action=pass, reason=triplet found"), 2, log)
        self.assertNotIn("nobody@dest.example", log)  # refused before postgrey was asked
        self.assertNotRegex(mx.log(), r"postfix/\S+\[\d+\]: (warning|error|fatal|panic):")


if __name__ == "__main__":
    unittest.main(verbosity=2)
