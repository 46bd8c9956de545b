"""A real greylister: Debian's postgrey as the policy service of a Postfix MX on loopback
(postfix_mx.py), with a short delay, and facteur's [greylist] delay set to match. The first
attempt gets postgrey's "450 4.2.0 ... Greylisted, see http://postgrey.schweikert.ch/...",
which facteur's classifier reads as greylisting: the recipient is retried after the delay, from
the same source IP (pinned, though the pool has two), and Postfix accepts it — with postgrey's
X-Greylist: field saying it was delayed. Real time: postgrey has no other clock."""

import unittest

import harness
from dns_server import DnsServer
from postfix_mx import PostfixMx

POSTGREY_DELAY = 2  # seconds
SOURCES = ("127.0.0.5", "127.0.0.6")


class GreylistedRetryPostgreyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mx = PostfixMx(["grey.test"], address="127.0.0.52", valid_users=["bob"],
                           postgrey_delay=POSTGREY_DELAY)
        cls.mx.start()
        cls.dns = DnsServer(mx=[("grey.test", "mx.grey.test", 10)],
                            addresses=[("mx.grey.test", "127.0.0.52")])
        cls.dns.start()
        cls.server = harness.Facteur(extra=harness.delivery_extra(
            cls.dns, cls.mx.port, shaping_file="shaping.toml",
            sources=[{"name": "out%d" % (i + 1), "address": ip} for i, ip in enumerate(SOURCES)]))
        # postgrey names no delay: the first rung of the ladder is its delay, plus a second.
        cls.server.write_file("shaping.toml", '[greylist]\nfirst_delay = "%ds"\nmax_delay = "1m"\n'
                              % (POSTGREY_DELAY + 1))
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.mx.cleanup()

    def test_accepted_on_the_retry_from_the_same_source(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["bob@grey.test"],
                            "From: <app@asso.example>\r\nTo: <bob@grey.test>\r\n"
                            "Subject: greylisted\r\n\r\nSee you in a moment.\r\n")
        try:
            deliveries = self.mx.wait_for_messages(1, timeout=30)
        except BaseException:
            print(self.mx.postgrey_log()[-3000:])
            raise
        self.assertIn("delayed", deliveries[0].greylist)

        mine = lambda events: [e for e in events if e.get("recipient") == "bob@grey.test"]
        events = mine(harness.events_when(self.server, lambda events: len(mine(events)) >= 2))
        kinds = [e["type"] for e in events]
        self.assertEqual(kinds, ["transient_failure", "delivery"], events)
        greylisted, delivered = events
        self.assertEqual(greylisted["code"], 450)
        self.assertIn("Greylisted", greylisted["response"])
        self.assertEqual(greylisted["source_ip"], delivered["source_ip"])
        self.assertIn(delivered["source_ip"], SOURCES)
        self.assertEqual(delivered["attempt"], 2)


if __name__ == "__main__":
    harness.main()
