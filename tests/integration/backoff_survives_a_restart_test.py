"""A provider's "slow down" outlives a restart of the server (the operator's test drive: after a
restart during Gmail's 421 pause, the pair came back at the full rate with every connection,
sent 50 messages in the pause's first minute and got a second 421 and a second pause).

A simulated provider takes 10 messages a minute from an address and answers the 11th with
Gmail's "421 4.7.28 ... rate limited". facteur's site allows 30 a minute on 3 connections; the
reply pauses the pair 10 minutes, cuts its rate (to the ceiling the complaint taught, 90% of what
the provider saw in that minute), caps it at one connection and holds that for 30 minutes. The
server is stopped and started during the pause: `site list` must show the same pause, rate and
cap after the restart, the log must name the back-off, and the mail must then go without a
second 421. The clock runs 60 times faster: the pause lasts 10 real seconds."""

import unittest

import harness
from dns_server import DnsServer
from provider_sim import ProviderSim
from test_clock import ScaledClock

SPEED = 60.0
SIM_IP = "127.0.0.76"
SOURCE_IP = "127.0.0.9"
MESSAGES = 30
SHAPING = """
[[site]]
name = "ratesite"
mx = ["*.rate.test"]
[site.limits]
max_connections = 3
messages_per_minute = 30
[site.actions.rate_limit]
suspend = "10m"
rate_factor = 0.5
max_connections = 1
hold = "30m"
"""


class BackoffSurvivesARestartTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.clock = ScaledClock(speed=SPEED)
        cls.sim = ProviderSim(host=SIM_IP, clock=cls.clock, hostname="mx1.rate.test",
                              rate_limit_per_minute=10, rate_limit_per_ip=True).start()
        cls.dns = DnsServer(mx=[("rate.test", "mx1.rate.test", 10)],
                            addresses=[("mx1.rate.test", SIM_IP)])
        cls.dns.start()
        cls.server = harness.Facteur(extra=harness.delivery_extra(
            cls.dns, cls.sim.port, shaping_file="shaping.toml", clock=cls.clock,
            sources=[{"name": "out1", "address": SOURCE_IP}]))
        cls.server.write_file("shaping.toml", SHAPING)
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sim.stop()

    def pair(self):
        return self.server.site_pair("ratesite", "out1")

    def test_the_cut_the_cap_and_the_pause_come_back_and_no_second_421(self):
        recipients = ["member%d@rate.test" % i for i in range(MESSAGES)]
        with self.server.smtp() as client:
            for rcpt in recipients:
                client.sendmail("app@asso.example", [rcpt], harness.simple_message(to=rcpt))
        before = harness.wait_until(
            lambda: (lambda p: p if p and p["state"] == "suspended" else None)(self.pair()),
            what="the pair paused by the 421")
        self.assertEqual(self.sim.rate_limit_replies, 1)
        self.assertEqual(before["suspended_by"], "rate_limit")
        self.assertEqual(before["max_connections"], 1)
        self.assertLess(before["message_rate"], 10)

        log_before = len(self.server.log())
        self.assertEqual(self.server.stop(), 0)
        self.server.start()
        line = next(l for l in self.server.log()[log_before:].splitlines() if "restored" in l)
        self.assertIn("ratesite/out1 until", line)
        self.assertIn("rate_limit", line)
        self.assertIn("1 connection held until", line)

        after = self.pair()
        self.assertIsNotNone(after, "the pair is listed again after the restart")
        self.assertEqual(after["state"], "suspended")
        # Stored to the microsecond.
        self.assertAlmostEqual(harness.parse_time(after["suspended_until"]),
                               harness.parse_time(before["suspended_until"]), delta=1e-3)
        self.assertEqual(after["max_connections"], 1)
        self.assertAlmostEqual(after["message_rate"], before["message_rate"], places=2)

        # Past the pause, at the kept rate under the provider's limit: everything goes, with no
        # second complaint.
        harness.wait_until(lambda: all(self.sim.delivered[r] > 0 for r in recipients),
                           timeout=120, what="every message delivered after the pause")
        self.assertEqual(self.sim.rate_limit_replies, 1)


if __name__ == "__main__":
    unittest.main()
