"""A provider that takes fewer messages than facteur was told (issue #5 point 4): a Gmail-like
limiter answers "421 4.7.28 ... unusual rate" past 10 messages per minute, while the shaping
file allows 30. The reply pauses the (source, site) pair for 10 minutes, halves its rate and
teaches it a ceiling (90% of what the provider saw that minute) that recovery respects for an
hour. Every message is delivered, exactly once; after the reply nothing is sent to that
provider before the pause ends, and the provider never has to say it twice (the backoff
holds); the pause shows in the metrics and the events log. The clock runs 120x faster."""

import unittest
import urllib.request

import harness
from dns_server import DnsServer
from provider_sim import ProviderSim
from test_clock import ScaledClock

SPEED = 120.0
MESSAGES = 60
REAL_LIMIT = 10      # per minute, what the provider enforces
CONFIGURED = 30      # per minute, what facteur was told
PAUSE = 600.0        # seconds: [actions.rate_limit] suspend


class MailLoggingSim(ProviderSim):
    """A ProviderSim that also keeps (time, reply) for every MAIL FROM, refused ones included."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.mails = []

    def mail_reply_for(self, session, address, now):
        reply = super().mail_reply_for(session, address, now)
        with self._lock:
            self.mails.append((now, str(reply)))
        return reply


class RateLimitReplyBacksOffTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.clock = ScaledClock(speed=SPEED)
        cls.sim = MailLoggingSim(host="127.0.0.62", clock=cls.clock, hostname="mx1.strict.test",
                              rate_limit_per_minute=REAL_LIMIT).start()
        cls.dns = DnsServer(mx=[("strict.test", "mx1.strict.test", 10)],
                            addresses=[("mx1.strict.test", "127.0.0.62")])
        cls.dns.start()
        cls.server = harness.Facteur(extra=harness.delivery_extra(
            cls.dns, cls.sim.port, delivery=['connection_idle_timeout = "60s"'],
            shaping_file="shaping.toml", clock=cls.clock,
            sources=[{"name": "out1", "address": "127.0.0.5"}]))
        cls.server.write_file(
            "shaping.toml",
            '[actions.rate_limit]\nsuspend = "%ds"\nrate_factor = 0.5\nmax_connections = 1\n'
            '[[site]]\nname = "strict"\nmx = ["*.strict.test"]\n'
            "[site.limits]\nmax_connections = 1\nmax_messages_per_connection = 1000\n"
            "messages_per_minute = %d\nmessages_per_hour = 0\n" % (PAUSE, CONFIGURED))
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sim.stop()

    def test_backs_off_and_delivers_everything(self):
        self.server.cli("queue", "suspend", "strict.test")
        with self.server.smtp() as client:
            for i in range(MESSAGES):
                rcpt = "friend%02d@strict.test" % i
                client.sendmail("voeux@asso.example", [rcpt],
                                harness.simple_message(to=rcpt, subject="Bonne annee"))
        self.server.cli("queue", "resume", "strict.test")
        self.sim.wait_for(lambda: len(self.sim.delivered) >= MESSAGES, timeout=90)
        self.assertEqual(self.sim.duplicates(), {})
        self.assertEqual(self.sim.rate_limit_replies, 1)

        # Every MAIL the provider saw, in order: after a 421, nothing until the pause is over.
        with self.sim._lock:
            mails = sorted(self.sim.mails)
        refused = [when for when, reply in mails if reply.startswith("421")]
        start = mails[0][0]
        print("%d messages in %.0f test minutes; 421 at minutes %s" % (
            MESSAGES, (mails[-1][0] - start) / 60, ["%.1f" % ((w - start) / 60) for w in refused]))
        self.assertEqual(len(refused), self.sim.rate_limit_replies)
        for when in refused:
            later = [t for t, _ in mails if t > when]
            if later:
                self.assertGreaterEqual(min(later) - when, PAUSE * 0.99,
                                        "sent again %.0f s after a 421" % (min(later) - when))

        strict = lambda events: [e for e in events
                                 if e["type"] == "suspension" and e.get("site") == "strict"]
        suspensions = strict(harness.events_when(
            self.server, lambda events: len(strict(events)) >= len(refused)))
        self.assertEqual(len(suspensions), len(refused), suspensions)
        self.assertTrue(all(e["code"] == 421 and e["enhanced"] == "4.7.28" for e in suspensions))
        harness.wait_until(
            lambda: 'facteur_site_suspensions_total{class="rate_limit",site="strict",source="out1"} %d'
            % len(refused) in urllib.request.urlopen(self.server.admin_url("/metrics"),
                                                     timeout=10).read().decode(),
            what="the suspension metric")


if __name__ == "__main__":
    harness.main()
