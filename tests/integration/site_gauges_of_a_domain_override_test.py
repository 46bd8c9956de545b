"""The (site, source) gauges of /metrics are the site's own pairs': a [[domain]] override with
limits of its own ("gaugesite/vip.test") is a second throttle under its site's label, and its
gauges must not stand for the site's. Mail to the override alone leaves the site's
facteur_site_max_connections absent (the override's replies still count in the site's
facteur_site_replies_total); once the site itself carries mail, the gauge says the site's own
limit (3), never the override's (1), in every scrape."""

import time

import harness
from dns_server import DnsServer
from provider_sim import ProviderSim

SHAPING = """
[[site]]
name = "gaugesite"
mx = ["*.gauge.test"]
[site.limits]
max_connections = 3
messages_per_minute = 0
messages_per_hour = 0

[[domain]]
domain = "vip.test"
site = "gaugesite"
[domain.limits]
max_connections = 1
"""

PAIR = {"site": "gaugesite", "source": "out1"}


class SiteGaugesOfADomainOverrideTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sim = ProviderSim(host="127.0.0.73", hostname="mx1.gauge.test").start()
        cls.dns = DnsServer(mx=[("gauge.test", "mx1.gauge.test", 10),
                                ("vip.test", "mx1.gauge.test", 10)],
                            addresses=[("mx1.gauge.test", "127.0.0.73")])
        cls.dns.start()
        cls.server = harness.Facteur(extra=harness.delivery_extra(
            cls.dns, cls.sim.port, shaping_file="shaping.toml",
            sources=[{"name": "out1", "address": "127.0.0.74"}]))
        cls.server.write_file("shaping.toml", SHAPING)
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sim.stop()

    def send(self, recipient):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", [recipient],
                            harness.simple_message(to=recipient))

    def sample(self, name, **labels):
        return harness.metric_sample(self.server.metrics(), name, **labels)

    def test_override_gauges_do_not_stand_for_the_site(self):
        # The override alone: its reply counts for the site's label (the shards report every
        # 5 s), and in that same report no pair gauge of the site appears.
        self.send("boss@vip.test")
        self.sim.wait_for(lambda: len(self.sim.delivered) >= 1, timeout=20)
        harness.wait_until(
            lambda: self.sample("facteur_site_replies_total", **PAIR, **{"class": "success"}),
            timeout=15, what="the override's reply counted under the site's label")
        self.assertIsNone(self.sample("facteur_site_max_connections", **PAIR))
        self.assertIsNone(self.sample("facteur_site_open_connections", **PAIR))

        # The site itself: its own limit, in every scrape over more than one report.
        self.send("alice@gauge.test")
        self.sim.wait_for(lambda: len(self.sim.delivered) >= 2, timeout=20)
        harness.wait_until(
            lambda: self.sample("facteur_site_max_connections", **PAIR) is not None,
            timeout=15, what="the site's pair gauges")
        self.send("bob@vip.test")
        self.sim.wait_for(lambda: len(self.sim.delivered) >= 3, timeout=20)
        deadline = time.monotonic() + 6
        seen = set()
        while time.monotonic() < deadline:
            seen.add(self.sample("facteur_site_max_connections", **PAIR))
            time.sleep(0.2)
        self.assertEqual(seen, {3.0})
        self.assertEqual(self.sample("facteur_site_state", **PAIR), 0)


if __name__ == "__main__":
    harness.main()
