"""The admin HTTP endpoint: /healthz answers, and /metrics counts accepted messages per listener
in the Prometheus text format (issue #2 point 4)."""

import os
import re
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class MetricsAcceptedTotalTest(harness.unittest.TestCase):
    def setUp(self):
        self.server = harness.Facteur()
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def get(self, path):
        with urllib.request.urlopen(self.server.admin_url(path), timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), \
                response.read().decode()

    def accepted(self, text, listener):
        pattern = (r'^facteur_smtp_messages_accepted_total\{[^}]*listener="%s"[^}]*\} '
                   r'([0-9.e+]+)$' % re.escape(listener))
        match = re.search(pattern, text, re.M)
        return None if match is None else float(match.group(1))

    def test_healthz(self):
        status, _, _ = self.get("/healthz")
        self.assertEqual(status, 200)

    def test_two_accepted_messages_are_counted(self):
        status, content_type, text = self.get("/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(content_type.startswith("text/plain"), content_type)
        self.assertIn(self.accepted(text, "relay"), (None, 0.0), text)
        with self.server.smtp() as client:
            client.ehlo("client.example")
            for n in range(2):
                client.mail("app@asso.example")
                client.rcpt("bob@example.com")
                code, reply = client.data(harness.simple_message(subject="m%d" % n))
                self.assertEqual(code, 250, reply)
            # A refused message is not counted as accepted.
            client.mail("app@asso.example")
            code, _ = client.rcpt("not an address")
            self.assertEqual(code, 501)
        _, _, text = self.get("/metrics")
        self.assertIn("# TYPE facteur_smtp_messages_accepted_total counter", text)
        self.assertEqual(self.accepted(text, "relay"), 2.0, text)
        self.assertIn('facteur_smtp_messages_accepted_total{listener="relay"} 2', text)


if __name__ == "__main__":
    harness.main()
