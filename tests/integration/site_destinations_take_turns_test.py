"""The destinations of one site take turns for its connections and its message slots: a
newsletter queued to one domain of a provider does not hold back a message to another of the
provider's domains (a password reset to wanadoo.fr behind a campaign to orange.fr, both
Orange) until the whole newsletter is out. Postfix's queue manager serves its destinations
round-robin the same way. Three sites, each at one connection:
  - both domains' MX hosts at one address: the connection moves to the waiting domain after
    the message it is carrying (and the one already pipelined behind it);
  - the waiting domain's MX at another address: once the site has started ten messages since
    it began to wait, the connection closes, and its slot goes to the waiting domain rather
    than to a new connection for the newsletter (taking turns there costs a connection each
    time: one per ten messages at most);
  - a rate-limited site: the waiting domain has no connection of its own and the newsletter's
    connection stands idle between its message slots; the next slot goes to the waiting
    domain;
  - a rate-limited site whose one connection stands idle at a domain with nothing left: the
    next domain takes it over at the site's next message slot, not at its idle timeout;
  - two newsletters at one address and a domain waiting at another: the connection moves
    between the two newsletters, and the waiting domain still gets the slot after ten
    messages.
Against a real DNS server (dnsmasq on loopback) and real SMTP servers. The first two hold the
newsletter's first answer back until the other message is queued, so the order is the relay's
choice, not a race."""

import json
import threading
import unittest

import harness
from dns_server import DnsServer
from smtp_test_server import SmtpTestServer

SAME = "127.0.0.49"        # site "turns": bulk.turns.test and urgent.turns.test
APART = "127.0.0.50"       # site "apart": bulk.apart.test
APART_FAR = "127.0.0.51"   # site "apart": far.apart.test
PACED = "127.0.0.53"       # site "paced" (4 messages a second): bulk and urgent.paced.test
SLOTTED = "127.0.0.54"     # site "slotted" (1 message a second): one and two.slotted.test
MIXED = "127.0.0.55"       # site "mixed": bulk.mixed.test and near.mixed.test
MIXED_FAR = "127.0.0.56"   # site "mixed": far.mixed.test
NEWSLETTER = 8
STARTED_BEFORE_CLOSING = 10  # engine/delivery/shard_delivery.cc kStartedBeforeClosingForATurn


class Gate:
    """An end_of_data_reply that holds every answer until opened."""

    def __init__(self):
        self.opened = threading.Event()

    def __call__(self, transaction):
        self.opened.wait(30)
        return "250 2.0.0 Ok"


class SiteDestinationsTakeTurnsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.same = SmtpTestServer(host=SAME).start()
        port = cls.same.port
        cls.apart = SmtpTestServer(host=APART, port=port).start()
        cls.apart_far = SmtpTestServer(host=APART_FAR, port=port).start()
        cls.paced = SmtpTestServer(host=PACED, port=port).start()
        cls.slotted = SmtpTestServer(host=SLOTTED, port=port).start()
        cls.mixed = SmtpTestServer(host=MIXED, port=port).start()
        cls.mixed_far = SmtpTestServer(host=MIXED_FAR, port=port).start()
        mx = [("bulk.turns.test", "mx1.turns.test", SAME),
              ("urgent.turns.test", "mx2.turns.test", SAME),
              ("bulk.apart.test", "mx1.apart.test", APART),
              ("far.apart.test", "mx2.apart.test", APART_FAR),
              ("bulk.paced.test", "mx1.paced.test", PACED),
              ("urgent.paced.test", "mx2.paced.test", PACED),
              ("one.slotted.test", "mx1.slotted.test", SLOTTED),
              ("two.slotted.test", "mx2.slotted.test", SLOTTED),
              ("bulk.mixed.test", "mx1.mixed.test", MIXED),
              ("near.mixed.test", "mx2.mixed.test", MIXED),
              ("far.mixed.test", "mx3.mixed.test", MIXED_FAR)]
        cls.dns = DnsServer(mx=[(domain, host, 10) for domain, host, _ in mx],
                            addresses=[(host, address) for _, host, address in mx])
        cls.dns.start()
        # Longer than the test: a domain left waiting for an idle connection's timeout fails.
        cls.server = harness.Facteur(
            extra=harness.delivery_extra(cls.dns, port,
                                         delivery=['connection_idle_timeout = "60s"'],
                                         shaping_file="shaping.toml"),
            io_threads=1)
        shaping = ""
        for name, limits in (("turns", "messages_per_hour = 0"),
                             ("apart", "messages_per_hour = 0"),
                             ("paced", "messages_per_minute = 240"),
                             ("slotted", "messages_per_minute = 60"),
                             ("mixed", "messages_per_hour = 0")):
            shaping += ('[[site]]\nname = "%s"\nmx = ["*.%s.test"]\n'
                        "[site.limits]\nmax_connections = 1\n%s\n" % (name, name, limits))
        cls.server.write_file("shaping.toml", shaping)
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        for sink in (cls.same, cls.apart, cls.apart_far, cls.paced, cls.slotted, cls.mixed,
                     cls.mixed_far):
            sink.stop()

    def send(self, recipients):
        with self.server.smtp() as client:
            for r in recipients:
                client.sendmail("app@asso.example", [r], harness.simple_message(to=r))

    def jobs_in_relay(self, site):
        """The site's jobs waiting in the relay and being carried."""
        listing = json.loads(self.server.cli("site", "list", "--json").stdout)
        for s in listing["sites"]:
            if s["key"] == site:
                return s["ready_jobs"] + s["in_flight_jobs"]
        return 0

    def wait_held(self, site, count):
        harness.wait_until(lambda: self.jobs_in_relay(site) == count, timeout=20,
                           what="%d jobs of site %s in the relay" % (count, site))

    def test_the_connection_moves_to_the_domain_waiting_at_its_address(self):
        gate = Gate()
        self.same.end_of_data_reply = gate
        bulk = ["n%d@bulk.turns.test" % i for i in range(NEWSLETTER)]
        self.send(bulk)
        self.wait_held("turns", NEWSLETTER)  # the first being carried, held at its end of data
        self.send(["reset@urgent.turns.test"])
        self.wait_held("turns", NEWSLETTER + 1)
        gate.opened.set()
        everyone = bulk + ["reset@urgent.turns.test"]
        self.same.wait_for(lambda: all(self.same.delivered_to(r) for r in everyone), timeout=30)
        self.assertEqual(len(self.same.sessions), 1, self.same.sessions)
        carried = [t.rcpt_to[0] for t in self.same.sessions[0].transactions]
        # The newsletter's first message, the one pipelined behind it, then the reset.
        self.assertLessEqual(carried.index("reset@urgent.turns.test"), 2, carried)

    def test_the_connection_closes_for_the_domain_waiting_at_another_address(self):
        gate = Gate()
        self.apart.end_of_data_reply = gate
        newsletter = 2 * STARTED_BEFORE_CLOSING
        bulk = ["n%d@bulk.apart.test" % i for i in range(newsletter)]
        self.send(bulk)
        self.wait_held("apart", newsletter)
        self.send(["reset@far.apart.test"])
        self.wait_held("apart", newsletter + 1)
        gate.opened.set()
        self.apart_far.wait_for(lambda: self.apart_far.delivered_to("reset@far.apart.test"),
                                timeout=30)
        reset_done = self.apart_far.transactions[0].finished
        self.apart.wait_for(lambda: all(self.apart.delivered_to(r) for r in bulk), timeout=30)
        before = [t.rcpt_to[0] for t in self.apart.transactions if t.finished <= reset_done]
        # Ten more than the two under way (the first, held, and the one pipelined behind it)
        # when the reset began to wait.
        self.assertLessEqual(len(before), 2 + STARTED_BEFORE_CLOSING, before)
        # The newsletter's connection went for the reset's slot, and the newsletter came back
        # on a new one.
        self.assertGreaterEqual(len(self.apart.sessions), 2, self.apart.sessions)

    def test_the_next_message_slot_goes_to_the_domain_waiting_for_one(self):
        bulk = ["n%02d@bulk.paced.test" % i for i in range(16)]
        self.send(bulk)
        self.paced.wait_for(lambda: len(self.paced.transactions) >= 1, timeout=20)
        self.send(["reset@urgent.paced.test"])
        # A second (four slots) for its dispatch and its MX host's lookups, even on a busy
        # machine: from then on the reset is the next message the site starts.
        settled = self.paced.clock() + 1.0
        everyone = bulk + ["reset@urgent.paced.test"]
        self.paced.wait_for(lambda: all(self.paced.delivered_to(r) for r in everyone),
                            timeout=30)
        reset = next(t for t in self.paced.transactions
                     if t.rcpt_to == ["reset@urgent.paced.test"])
        overtaking = [t.rcpt_to[0] for t in self.paced.transactions
                      if settled <= t.started < reset.started]
        self.assertLessEqual(len(overtaking), 1, [(t.rcpt_to, t.started, settled)
                                                  for t in self.paced.transactions])
        # The newsletter was still going when the reset went.
        self.assertGreater(len([t for t in self.paced.transactions if t.started > reset.started]),
                           4)

    def test_an_idle_connection_is_taken_over_at_the_next_message_slot(self):
        # one.slotted.test's message leaves at once and its connection, the site's only one,
        # stands idle; two.slotted.test's comes within the second before the site's next slot.
        # It takes the connection over then, not when the connection's 60 s idle timeout ends.
        self.send(["a@one.slotted.test", "b@two.slotted.test"])
        self.slotted.wait_for(lambda: self.slotted.delivered_to("b@two.slotted.test"),
                              timeout=15)
        self.assertEqual(len(self.slotted.sessions), 1, self.slotted.sessions)
        self.assertEqual([t.rcpt_to for t in self.slotted.sessions[0].transactions],
                         [["a@one.slotted.test"], ["b@two.slotted.test"]])

    def test_the_domain_at_another_address_gets_the_slot_between_two_newsletters(self):
        # far.mixed.test waits at another address while the site's one connection carries two
        # newsletters at one address (bulk and near), moving between them after each message.
        # near, waiting behind far, is not held back by it; far gets the slot once the site
        # has started ten messages since it began to wait, not when a newsletter is out.
        gate = Gate()
        self.mixed.end_of_data_reply = gate
        newsletter = 2 * STARTED_BEFORE_CLOSING
        bulk = ["n%d@bulk.mixed.test" % i for i in range(newsletter)]
        near = ["n%d@near.mixed.test" % i for i in range(newsletter)]
        self.send(bulk)
        self.wait_held("mixed", newsletter)
        self.send(["reset@far.mixed.test"])
        self.wait_held("mixed", newsletter + 1)
        self.send(near)
        self.wait_held("mixed", 2 * newsletter + 1)
        gate.opened.set()
        self.mixed_far.wait_for(lambda: self.mixed_far.delivered_to("reset@far.mixed.test"),
                                timeout=30)
        self.mixed.wait_for(lambda: all(self.mixed.delivered_to(r) for r in bulk + near),
                            timeout=30)
        carried = [t.rcpt_to[0] for t in self.mixed.transactions]
        # The newsletter's first message, the one pipelined behind it, then near's first.
        self.assertLessEqual(carried.index(near[0]), 2, carried)
        far_done = self.mixed_far.transactions[0].finished
        before_far = [t.rcpt_to[0] for t in self.mixed.transactions if t.finished <= far_done]
        self.assertLessEqual(len(before_far), 2 + STARTED_BEFORE_CLOSING, before_far)

if __name__ == "__main__":
    unittest.main()
