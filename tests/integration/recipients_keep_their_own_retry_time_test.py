"""One message, two recipients waiting for different things. bob@grey.test is greylisted for an
hour (a Postgrey-like provider that says so); carol@plain.test gets a plain "451 4.3.0 try
again later" and is retried after facteur's first retry interval (a minute). Carol's retry must
not take Bob along: from the same address, before his hour, it would only be greylisted again
(and a provider counts such early retries against the sender). Bob goes once his hour is over;
`queue show` says meanwhile when each goes. The clock runs 600x faster."""

import json
import unittest

import harness
from dns_server import DnsServer
from provider_sim import ProviderSim
from smtp_test_server import SmtpTestServer
from test_clock import ScaledClock

SPEED = 600.0
GREY_MX = "127.0.0.77"
PLAIN_MX = "127.0.0.78"
BOB = "bob@grey.test"
CAROL = "carol@plain.test"


class RecipientsKeepTheirOwnRetryTimeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.clock = ScaledClock(speed=SPEED)
        cls.grey = ProviderSim(host=GREY_MX, clock=cls.clock, hostname="mx.grey.test",
                               greylist_delay=3600).start()
        cls.plain = SmtpTestServer(host=PLAIN_MX, port=cls.grey.port, clock=cls.clock,
                                   hostname="mx.plain.test",
                                   rcpt_replies={CAROL: ["451 4.3.0 Try again later",
                                                         "250 2.1.5 Ok"]}).start()
        cls.dns = DnsServer(mx=[("grey.test", "mx.grey.test", 10),
                                ("plain.test", "mx.plain.test", 10)],
                            addresses=[("mx.grey.test", GREY_MX), ("mx.plain.test", PLAIN_MX)])
        cls.dns.start()
        cls.server = harness.Facteur(extra=harness.delivery_extra(
            cls.dns, cls.grey.port, clock=cls.clock,
            delivery=['first_retry = "1m"', 'max_retry_interval = "10m"']))
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.plain.stop()
        cls.grey.stop()

    def test_the_greylisted_recipient_waits_its_hour_alone(self):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", [BOB, CAROL],
                            harness.simple_message(to="%s, %s" % (BOB, CAROL), subject="two"))
        # Carol's second try (a minute later) is accepted.
        self.plain.wait_for(lambda: any(t.accepted for t in self.plain.transactions), timeout=20)
        bob = lambda: [a.reply[:3] for a in self.grey.attempts[BOB]]
        self.assertEqual(bob(), ["450"])  # tried once, not again with Carol

        listing = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
        self.assertEqual(len(listing), 1)
        shown = json.loads(self.server.cli("queue", "show", listing[0]["id"], "--json").stdout)
        states = {s["address"]: s for s in shown["recipient_states"]}
        self.assertEqual(states[CAROL]["state"], "delivered")
        self.assertEqual(states[BOB]["state"], "pending")
        self.assertIn("Greylisted", states[BOB]["last_reply"])
        self.assertIn("next_attempt", states[BOB])

        # After the hour (the provider's own count from the first attempt), Bob goes.
        self.grey.wait_for(lambda: self.grey.delivered[BOB] >= 1, timeout=30)
        self.assertEqual(bob(), ["450", "250"])
        self.assertEqual(self.grey.duplicates(), {})
        greylisted, accepted = self.grey.attempts[BOB]
        self.assertGreaterEqual(accepted.time - greylisted.time, 3600)


if __name__ == "__main__":
    harness.main()
