"""A greylisted recipient is pinned to the source address it was greylisted from (the retry
must come from the same IP). When the operator then removes that source from the pool (a
blocklisted address taken out, a source renamed) and restarts, nothing can carry the pinned
job any more: it must go from the sources the pool still has, not wait forever. A Postgrey-like
provider (ProviderSim) greylists each new (IP, sender, recipient) triplet; the clock runs 60x
faster."""

import unittest

import harness
from dns_server import DnsServer
from provider_sim import ProviderSim
from test_clock import ScaledClock

SPEED = 60.0
GREYLIST_DELAY = 120  # test seconds: 2 s of real time
MX_ADDRESS = "127.0.0.76"
FIRST_SOURCE = "127.0.0.7"
SECOND_SOURCE = "127.0.0.8"
RECIPIENT = "bob@grey.test"


def relay_extra(dns, port, clock, source_name, source_address):
    return harness.delivery_extra(
        dns, port, shaping_file="shaping.toml", clock=clock,
        sources=[{"name": source_name, "address": source_address}])


class GreylistedSourceRemovedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.clock = ScaledClock(speed=SPEED)
        cls.sim = ProviderSim(host=MX_ADDRESS, clock=cls.clock, hostname="mx.grey.test",
                              greylist_delay=GREYLIST_DELAY).start()
        cls.dns = DnsServer(mx=[("grey.test", "mx.grey.test", 10)],
                            addresses=[("mx.grey.test", MX_ADDRESS)])
        cls.dns.start()
        cls.first = harness.Facteur(extra=relay_extra(cls.dns, cls.sim.port, cls.clock, "out1",
                                                      FIRST_SOURCE))
        cls.first.write_file("shaping.toml", '[greylist]\nfirst_delay = "150s"\n')
        cls.second = None
        cls.first.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        if cls.second is not None:
            cls.second.stop()
        cls.first.cleanup()  # owns the data directory both used
        cls.dns.cleanup()
        cls.sim.stop()

    def test_the_job_goes_from_the_sources_left(self):
        # Held until the first greylisting is seen, so that the restart comes before the retry.
        with self.first.smtp() as client:
            client.sendmail("app@asso.example", [RECIPIENT],
                            harness.simple_message(to=RECIPIENT, subject="greylisted"))
        self.sim.wait_for(lambda: self.sim.greylist_replies >= 1, timeout=20)
        self.assertEqual(self.first.stop(), 0)
        attempts = self.sim.attempts[RECIPIENT]
        self.assertEqual([a.ip for a in attempts], [FIRST_SOURCE])

        # out1 is gone from the pool; out2 takes its place.
        type(self).second = harness.Facteur(
            extra=relay_extra(self.dns, self.sim.port, self.clock, "out2", SECOND_SOURCE),
            data_dir=self.first.data_dir)
        self.second.start()
        # From the new address the triplet is new: greylisted once more, then accepted.
        self.sim.wait_for(lambda: self.sim.delivered[RECIPIENT] >= 1, timeout=30)
        self.assertEqual(self.sim.duplicates(), {})
        self.assertEqual([d.ip for d in self.sim.deliveries], [SECOND_SOURCE])
        self.assertTrue(all(a.ip == SECOND_SOURCE for a in self.sim.attempts[RECIPIENT][1:]),
                        self.sim.attempts[RECIPIENT])


if __name__ == "__main__":
    harness.main()
