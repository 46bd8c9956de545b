"""A connection is reused across destinations whose MX hosts have the same address, as
Postfix's connection cache by address does: three domains with three different MX host names,
all on one server, get their mail over one SMTP session, each delivery naming its own MX host;
a domain whose MX has another address gets a session of its own. Within one site whose pair is
at its connection limit (max_connections = 1), a second domain takes the idle connection the
first one left instead of waiting for its idle timeout, and a connection just answered goes to
whichever of the site's domains waits, whatever order they are pumped in. Against a real DNS
server (dnsmasq on loopback) and real SMTP servers. Connections are shared within an I/O thread
(each site lives on one), so the relay runs one here: with more, each thread's sites share its
own."""

import time
import unittest

import harness
from dns_server import DnsServer
from smtp_test_server import SmtpTestServer

SHARED = "127.0.0.44"
OTHER = "127.0.0.45"
HOSTED = "127.0.0.46"
HOSTED_ELSEWHERE = "127.0.0.47"
BUSY = "127.0.0.48"
BUSY_DOMAINS = ["b%d.busy.test" % i for i in range(12)]


class ConnectionReuseTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.shared = SmtpTestServer(host=SHARED).start()
        cls.other = SmtpTestServer(host=OTHER, port=cls.shared.port).start()
        cls.hosted = SmtpTestServer(host=HOSTED, port=cls.shared.port).start()
        cls.hosted_elsewhere = SmtpTestServer(host=HOSTED_ELSEWHERE, port=cls.shared.port).start()
        cls.busy = SmtpTestServer(host=BUSY, port=cls.shared.port).start()
        cls.dns = DnsServer(
            mx=[("one.test", "mx.one.test", 10), ("two.test", "mx.two.test", 10),
                ("three.test", "mx.three.test", 10), ("elsewhere.test", "mx.elsewhere.test", 10),
                ("alpha.test", "mx-a.hosted.test", 10), ("beta.test", "mx-b.hosted.test", 10),
                ("gamma.test", "mx-c.hosted.test", 10), ("delta.test", "mx-d.hosted.test", 10)]
            + [(d, "mx." + d, 10) for d in BUSY_DOMAINS],
            addresses=[("mx.one.test", SHARED), ("mx.two.test", SHARED),
                       ("mx.three.test", SHARED), ("mx.elsewhere.test", OTHER),
                       ("mx-a.hosted.test", HOSTED), ("mx-b.hosted.test", HOSTED),
                       ("mx-c.hosted.test", HOSTED), ("mx-d.hosted.test", HOSTED_ELSEWHERE)]
            + [("mx." + d, BUSY) for d in BUSY_DOMAINS])
        cls.dns.start()
        # Longer than the test: a session waits for the next destination's message, and a
        # destination left waiting for an idle connection's timeout fails the test.
        cls.server = harness.Facteur(
            extra=harness.delivery_extra(cls.dns, cls.shared.port,
                                         delivery=['connection_idle_timeout = "60s"'],
                                         shaping_file="shaping.toml"),
            io_threads=1)
        cls.server.write_file("shaping.toml",
                              '[[site]]\nname = "hosted"\nmx = ["*.hosted.test"]\n'
                              "[site.limits]\nmax_connections = 1\nmessages_per_hour = 0\n"
                              '[[site]]\nname = "busy"\nmx = ["*.busy.test"]\n'
                              "[site.limits]\nmax_connections = 1\nmessages_per_hour = 0\n")
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.shared.stop()
        cls.other.stop()
        cls.hosted.stop()
        cls.hosted_elsewhere.stop()
        cls.busy.stop()

    def send_and_wait(self, sink, recipient):
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", [recipient],
                            harness.simple_message(to=recipient, subject="reuse"))
        sink.wait_for(lambda: sink.delivered_to(recipient), timeout=20)

        def deliveries(events):
            return [e for e in events
                    if e.get("recipient") == recipient and e["type"] == "delivery"]
        events = harness.events_when(self.server, deliveries,
                                     what="the delivery event of %s" % recipient)
        return deliveries(events)[0]

    def test_one_session_carries_every_domain_on_the_same_address(self):
        # One after the other: each message finds the session the previous one left idle.
        # The last one goes back to a domain whose MX address the relay has cached already.
        names = ("one", "two", "three", "one")
        recipients = ["r%d@%s.test" % (i, name) for i, name in enumerate(names)]
        deliveries = [self.send_and_wait(self.shared, r) for r in recipients]
        self.assertEqual(len(self.shared.sessions), 1,
                         [(s.opened_at, s.transactions) for s in self.shared.sessions])
        carried = [t.rcpt_to for t in self.shared.sessions[0].transactions]
        self.assertEqual(carried, [[r] for r in recipients])
        # Each delivery names the MX host of its own domain, at the shared address.
        for name, event in zip(names, deliveries):
            self.assertTrue(event["mx"].startswith("mx.%s.test[%s]" % (name, SHARED)), event)

        # Another address: a session of its own, and the shared one is left as it was.
        self.send_and_wait(self.other, "someone@elsewhere.test")
        self.assertEqual(len(self.other.sessions), 1, self.other.sessions)
        self.assertEqual(len(self.shared.sessions), 1, self.shared.sessions)
        self.assertEqual(len(self.shared.sessions[0].transactions), len(names))

    def test_a_full_site_hands_its_idle_connection_to_its_next_domain(self):
        # alpha.test's connection is the site's only one, idle after its message: beta.test
        # (same site, same address) gets it at once instead of waiting 60 s for it to close.
        self.send_and_wait(self.hosted, "someone@alpha.test")
        event = self.send_and_wait(self.hosted, "someone@beta.test")
        self.assertTrue(event["mx"].startswith("mx-b.hosted.test[%s]" % HOSTED), event)
        # (The other test of this site may have left sessions of its own there.)
        carried = [[t.rcpt_to for t in s.transactions] for s in self.hosted.sessions
                   if ["someone@alpha.test"] in [t.rcpt_to for t in s.transactions]]
        self.assertEqual(len(carried), 1, self.hosted.sessions)
        self.assertEqual(carried[0][-2:], [["someone@alpha.test"], ["someone@beta.test"]])

    def test_a_full_site_closes_an_idle_connection_for_a_domain_at_another_address(self):
        # gamma.test leaves the site's only connection idle, at HOSTED; delta.test's MX is at
        # HOSTED_ELSEWHERE, so nothing can be taken over: the idle connection is closed (QUIT)
        # and delta.test gets the slot at once instead of after the 60 s idle timeout.
        self.send_and_wait(self.hosted, "someone@gamma.test")
        started = time.monotonic()
        event = self.send_and_wait(self.hosted_elsewhere, "someone@delta.test")
        self.assertLess(time.monotonic() - started, 20)
        self.assertTrue(event["mx"].startswith("mx-d.hosted.test[%s]" % HOSTED_ELSEWHERE),
                        event)
        self.assertEqual(len(self.hosted_elsewhere.sessions), 1, self.hosted_elsewhere.sessions)
        # The session at HOSTED that carried gamma.test's message ended with QUIT.
        carried = [s for s in self.hosted.sessions
                   if ["someone@gamma.test"] in [t.rcpt_to for t in s.transactions]]
        self.assertEqual(len(carried), 1, self.hosted.sessions)
        harness.wait_until(lambda: "QUIT" in carried[0].commands, timeout=10,
                           what="QUIT on the idle session")

    def test_an_answered_connection_goes_to_the_domains_waiting_for_it(self):
        # Twelve domains of one site (its pair at one connection), all at one address, their
        # messages queued together: the one connection carries them one after the other. Each
        # answer frees it for whichever domain waits, whatever order the site's domains are
        # pumped in; none waits for the 60 s idle timeout.
        recipients = ["someone@" + d for d in BUSY_DOMAINS]
        started = time.monotonic()
        with self.server.smtp() as client:
            for r in recipients:
                client.sendmail("app@asso.example", [r], harness.simple_message(to=r))
        self.busy.wait_for(lambda: all(self.busy.delivered_to(r) for r in recipients),
                           timeout=30)
        self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(len(self.busy.sessions), 1,
                         [[t.rcpt_to for t in s.transactions] for s in self.busy.sessions])


if __name__ == "__main__":
    unittest.main()
