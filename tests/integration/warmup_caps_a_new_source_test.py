"""A new source follows its pool's warmup plan (issue #5 point 5): with daily caps of 5 then 6
messages per site, 12 greetings to one provider leave as 5 on the source's first (UTC) day and
6 just after midnight — held in between, not bounced, not retried in a loop: midnight is
further than a shard holds mail for its site, so they go back to the queue, unattempted, due at
midnight — and the last waits for the next midnight. Each day's spent cap is told once (a
"warmup_cap" event). The clock runs 60x faster and starts five minutes before midnight
(facteur's [clock] and the simulated provider share it), so the day changes after five real
seconds. `facteur reputation` then shows the source's warmup day and counts.

The cap is per (source, site), so the messages a source is carrying to a site count against it
whichever of the site's domains they go to: four domains served by one MX, a cap of two, and the
MX holding each end of data for a while, see two messages in flight at once, not four, and two
connections. Deferrals do not count: if those two are answered 451, the other two go the same
day. A source whose cap is spent leaves the site to another source of its pool."""

import json
import signal
import threading
import time
import unittest

import harness
from dns_server import DnsServer
from provider_sim import ProviderSim
from smtp_test_server import SmtpTestServer
from test_clock import ScaledClock

SPEED = 60.0
CAPS = (5, 6)
MESSAGES = 12


def anchor_for(test_now, real_now, speed):
    """The anchor that makes test time `test_now` at real time `real_now`."""
    return (test_now - real_now * speed) / (1 - speed)


class WarmRelayCase(unittest.TestCase):
    """facteur with new sources (SOURCES; one, 127.0.0.7, by default) in a pool whose warmup
    plan has `caps`, and the simulated provider (ProviderSim keyword arguments in `sim`) as the
    MX of `domains`, all on a clock that reads `test_now` now and runs `speed` times faster."""

    SOURCES = [{"name": "new1", "address": "127.0.0.7", "pool": "fresh"}]
    DELIVERY = []
    SHAPING = ""  # more of shaping.toml
    SERVER = ProviderSim

    @classmethod
    def start(cls, test_now, speed, caps, domains, max_connections, **sim):
        cls.clock = ScaledClock(anchor=anchor_for(test_now, time.time(), speed), speed=speed)
        address = sim["host"]
        cls.sim = cls.SERVER(clock=cls.clock, **sim).start()
        cls.dns = DnsServer(mx=[(d, sim["hostname"], 10) for d in domains],
                            addresses=[(sim["hostname"], address)])
        cls.dns.start()
        cls.server = harness.Facteur(extra=harness.delivery_extra(
            cls.dns, cls.sim.port, delivery=['pool = "fresh"'] + cls.DELIVERY,
            shaping_file="shaping.toml", clock=cls.clock, sources=cls.SOURCES))
        cls.server.write_file("shaping.toml",
                              "[defaults]\nmax_connections = %d\nmessages_per_hour = 0\n"
                              '[[warmup]]\nname = "new"\ndaily_caps = %s\n'
                              '[warmup_pools]\nfresh = "new"\n' % (max_connections, list(caps))
                              + cls.SHAPING)
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sim.stop()

    def send(self, rcpt):
        """A greeting to `rcpt`, in a session of its own."""
        with self.server.smtp() as client:
            client.sendmail("voeux@asso.example", [rcpt],
                            harness.simple_message(to=rcpt, subject="Bonne annee"))

    def warmup_cap_events(self, count):
        """The "warmup_cap" events of the log once there are `count`, after a moment for any
        more to show (each source's spent cap is told once a day)."""
        def capped(events):
            return [e for e in events if e["type"] == "warmup_cap"]
        harness.events_when(self.server, lambda events: len(capped(events)) >= count,
                            what="%d warmup_cap events" % count)
        time.sleep(0.2)
        return capped(harness.read_events(self.server))

    def assert_held_until_midnight(self, messages, attempts=0, midnight=None):
        """The queued `messages` (queue ls entries) come due at `midnight` (self.midnight by
        default: the warmup cap lifts then) with no attempt counted but the `attempts` they
        had: handed back unattempted, not failed."""
        midnight = time.strftime("%Y-%m-%dT%H:%M:%S",
                                 time.gmtime(self.midnight if midnight is None else midnight))

        def due_at_midnight():
            shown = [json.loads(self.server.cli("queue", "show", m["id"], "--json").stdout)
                     for m in messages]
            return all(s["next_attempt"].startswith(midnight) for s in shown) and shown
        shown = harness.wait_until(due_at_midnight, timeout=10, what="due at midnight")
        self.assertTrue(all(s["attempts"] == attempts for s in shown), shown)


class WarmupCapsANewSourceTest(WarmRelayCase):
    @classmethod
    def setUpClass(cls):
        cls.midnight = (int(time.time() // 86400) + 2) * 86400.0  # a midnight after tomorrow's
        cls.start(cls.midnight - 300, SPEED, CAPS, ["warm.test"], max_connections=2,
                  host="127.0.0.61", hostname="mx1.warm.test")

    def test_five_today_the_rest_after_midnight(self):
        self.assertLess(self.clock(), self.midnight - 30)  # still the first day
        with self.server.smtp() as client:
            for i in range(MESSAGES):
                rcpt = "friend%d@warm.test" % i
                client.sendmail("voeux@asso.example", [rcpt],
                                harness.simple_message(to=rcpt, subject="Bonne annee"))
        self.sim.wait_for(lambda: len(self.sim.deliveries) >= CAPS[0], timeout=20)
        # The cap holds until midnight: the other seven wait in the queue, due then, with no
        # attempt counted.
        def held():
            messages = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
            return len(messages) == MESSAGES - CAPS[0] and messages or None
        messages = harness.wait_until(held, timeout=10, what="seven messages back in the queue")
        self.assert_held_until_midnight(messages)
        self.assertLess(self.clock(), self.midnight)
        self.assertEqual(len(self.sim.deliveries), CAPS[0])
        # The spent cap is told once, however many messages wait for it.
        capped = self.warmup_cap_events(1)
        self.assertEqual(len(capped), 1, capped)
        self.assertEqual((capped[0]["source"], capped[0]["source_ip"],
                          capped[0]["next_attempt"][:19]),
                         ("new1", "127.0.0.7", time.strftime("%Y-%m-%dT%H:%M:%S",
                                                             time.gmtime(self.midnight))), capped)
        self.assertIn("new1 reached its warmup cap", capped[0]["detail"])
        self.sim.wait_for(lambda: len(self.sim.deliveries) >= sum(CAPS), timeout=30)
        before = [d for d in self.sim.deliveries if d.time < self.midnight]
        after = [d for d in self.sim.deliveries if d.time >= self.midnight]
        self.assertEqual(len(before), CAPS[0], [d.time - self.midnight for d in self.sim.deliveries])
        self.assertEqual(len(after), CAPS[1])
        self.assertTrue(all(d.ip == "127.0.0.7" for d in self.sim.deliveries))
        self.assertEqual(self.sim.duplicates(), {})
        # Day 2's cap spent too: the last message waits for the next midnight, and the cap is
        # told again, once, for that day.
        next_midnight = self.midnight + 86400
        messages = harness.wait_until(
            lambda: json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"],
            timeout=10, what="the last message back in the queue")
        self.assertEqual(len(messages), MESSAGES - sum(CAPS), messages)
        self.assert_held_until_midnight(messages, midnight=next_midnight)
        capped = self.warmup_cap_events(2)
        self.assertEqual(len(capped), 2, capped)
        self.assertEqual(capped[1]["next_attempt"][:19],
                         time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(next_midnight)), capped)
        self.assertIn("6 of 6 on day 2", capped[1]["detail"])
        self.assertEqual(len(self.sim.deliveries), sum(CAPS))

        # facteur reputation: day 2 of the plan, the source's counts for the site.
        def report():
            out = self.server.cli("reputation", "--json").stdout
            rows = json.loads(out)
            rows = rows.get("pairs", rows) if isinstance(rows, dict) else rows
            return [r for r in rows if r.get("source") == "new1"] or None
        rows = harness.wait_until(report, timeout=20, what="reputation flushed")
        self.assertEqual(len(rows), 1, rows)
        warmup = rows[0]["warmup"]
        self.assertEqual((warmup["plan"], warmup["day"], warmup["cap"], warmup["sent_today"]),
                         ("new", 2, CAPS[1], CAPS[1]), rows)
        self.assertEqual(rows[0]["lifetime"]["delivered"], sum(CAPS))


class HeldEndOfData:
    """An end-of-data reply (SmtpTestServer's end_of_data_reply) held until `parties` messages
    wait for theirs, or for `timeout` real seconds: the messages carried at once are all in
    flight together, and `most` counts how many that was. The first `deferred` messages to
    arrive are answered 451, the others 250."""

    def __init__(self, parties, timeout, deferred=0):
        self.parties, self.timeout, self.deferred = parties, timeout, deferred
        self.waiting = self.most = self.arrived = 0
        self.changed = threading.Condition()

    def __call__(self, transaction):
        with self.changed:
            self.arrived += 1
            defer = self.arrived <= self.deferred
            self.waiting += 1
            self.most = max(self.most, self.waiting)
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.waiting >= self.parties, self.timeout)
            self.waiting -= 1
        return "451 4.3.0 Try again later" if defer else "250 2.0.0 Ok: queued"


def noon_after_tomorrow():
    """Noon (UTC) of the day after tomorrow: a test time that reaches no midnight soon."""
    return (int(time.time() // 86400) + 2) * 86400.0 + 43200


class WarmupCountsEveryDomainOfASiteTest(WarmRelayCase):
    DOMAINS = ["d%d.shared.test" % i for i in range(4)]
    CAP = 2
    DEFERRED = 0

    @classmethod
    def setUpClass(cls):
        noon = noon_after_tomorrow()
        cls.midnight = noon + 43200
        cls.held = HeldEndOfData(parties=len(cls.DOMAINS) - 1, timeout=4, deferred=cls.DEFERRED)
        cls.start(noon, 2.0, (cls.CAP, 100), cls.DOMAINS, max_connections=8,
                  host="127.0.0.70", hostname="mx1.shared.test", end_of_data_reply=cls.held)

    def send_one_to_each_domain(self):
        """One message to each domain, from sessions of their own at once: the messages reach
        the queue together, and their destinations are pumped before any connection is up."""
        senders = [threading.Thread(target=self.send, args=("friend@" + domain,))
                   for domain in self.DOMAINS]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(timeout=60)

    def test_messages_in_flight_to_other_domains_count(self):
        self.send_one_to_each_domain()
        self.sim.wait_for(lambda: len(self.sim.deliveries) >= self.CAP, timeout=30)

        def settled():  # every message delivered or back in the queue
            messages = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
            return len(messages) + len(self.sim.deliveries) == len(self.DOMAINS) and (messages,)
        messages, = harness.wait_until(settled, timeout=30, what="the rest back in the queue")
        self.assertEqual(self.held.most, self.CAP)
        self.assertEqual(len(self.sim.deliveries), self.CAP)
        self.assertEqual(len({r for d in self.sim.deliveries for r in d.recipients}), self.CAP)
        self.assert_held_until_midnight(messages)
        # A connection opens only for a message it may carry: none connects just to quit.
        self.assertEqual(len(self.sim.sessions), self.CAP,
                         [(s.peer, s.commands) for s in self.sim.sessions])


class WarmupRoomFreedByDeferralsTest(WarmupCountsEveryDomainOfASiteTest):
    """A deferral is not a final answer and does not count against the cap: when the two
    messages in flight are answered 451, the other two go the same day, and the deferred ones
    wait for their retry rather than for midnight."""
    DEFERRED = 2

    def test_messages_in_flight_to_other_domains_count(self):
        self.send_one_to_each_domain()
        self.sim.wait_for(lambda: len(self.sim.deliveries) >= self.CAP, timeout=30)
        self.assertLess(self.clock(), self.midnight)
        self.assertEqual(self.held.most, self.CAP)

        def deferred():  # the two 451s back in the queue, attempted once
            messages = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
            shown = [json.loads(self.server.cli("queue", "show", m["id"], "--json").stdout)
                     for m in messages]
            return len(shown) == self.DEFERRED and all(m["attempts"] == 1 for m in shown) \
                and shown
        shown = harness.wait_until(deferred, timeout=30, what="the deferred two in the queue")
        midnight = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.midnight))
        self.assertFalse(any(m["next_attempt"].startswith(midnight) for m in shown), shown)
        self.assertEqual(len(self.sim.deliveries), self.CAP)


class WarmupCappedSourceLeavesRoomToAnotherTest(WarmRelayCase):
    """Two new sources in one pool, each capped at one message a day to the site: once the
    first has sent its one and its connection has closed, the next message goes from the other
    source the same day rather than waiting for the first's cap to lift at midnight."""
    SOURCES = [{"name": "new1", "address": "127.0.0.7", "pool": "fresh"},
               {"name": "new2", "address": "127.0.0.8", "pool": "fresh"}]
    DELIVERY = ['connection_idle_timeout = "1s"', "metrics_site_labels = 1"]

    @classmethod
    def setUpClass(cls):
        noon = noon_after_tomorrow()
        cls.midnight = noon + 43200
        cls.start(noon, 2.0, (1, 100), ["two.test"], max_connections=2,
                  host="127.0.0.71", hostname="mx1.two.test")

    def test_the_other_source_carries(self):
        self.send("first@two.test")
        self.sim.wait_for(lambda: len(self.sim.deliveries) >= 1, timeout=30)
        first_ip = self.sim.deliveries[0].ip
        # Its connection idles out (1 s, real time at most): no source has one open.
        harness.wait_until(lambda: all(s.closed for s in self.sim.sessions), timeout=30,
                           what="the connection closed")
        self.send("second@two.test")
        self.sim.wait_for(lambda: len(self.sim.deliveries) >= 2, timeout=30)
        self.assertLess(self.clock(), self.midnight)
        self.assertEqual({d.ip for d in self.sim.deliveries}, {"127.0.0.7", "127.0.0.8"},
                         (first_ip, self.sim.deliveries))
        # Both caps spent and no connection left: a third goes back to the queue until midnight.
        harness.wait_until(lambda: all(s.closed for s in self.sim.sessions), timeout=30,
                           what="the connections closed")
        self.send("third@two.test")
        messages = harness.wait_until(
            lambda: json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"],
            timeout=30, what="the third message in the queue")
        self.assert_held_until_midnight(messages)
        self.assertEqual(len(self.sim.deliveries), 2)
        # Each source's spent cap told once, and on /metrics (what FacteurWarmupCapReached,
        # deploy/prometheus, compares), under the MX set's own label.
        capped = self.warmup_cap_events(2)
        self.assertEqual(sorted(e["source_ip"] for e in capped), ["127.0.0.7", "127.0.0.8"],
                         capped)

        def at_cap():
            text = self.server.metrics()
            return all(harness.metric_sample(text, name, site="mx:mx1.two.test", source=source)
                       == 1.0 for name in ("facteur_site_warmup_cap", "facteur_site_warmup_sent")
                       for source in ("new1", "new2"))
        harness.wait_until(at_cap, timeout=15, what="both sources at their cap on /metrics")
        # The pool declared warm (its plan dropped) and reloaded: the series go.
        self.server.write_file("shaping.toml", "[defaults]\nmax_connections = 2\n")
        self.server.process.send_signal(signal.SIGHUP)
        harness.wait_until(
            lambda: harness.metric_sample(self.server.metrics(), "facteur_site_warmup_cap") is None,
            timeout=15, what="the warmup series gone")


class WarmupKeepsGreylistedMailToItsSourceTest(WarmRelayCase):
    """A greylisted message may only come back from the address it was greylisted from: when
    that source is full with what it carries, its retry waits for it, and the pool's other
    source opens no connection for a message it may not carry."""
    SOURCES = WarmupCappedSourceLeavesRoomToAnotherTest.SOURCES
    SHAPING = '[greylist]\nfirst_delay = "60s"\n'
    SERVER = SmtpTestServer
    SPEED = 10.0  # the greylisting's minute lasts 6 real seconds

    @classmethod
    def setUpClass(cls):
        cls.release = threading.Event()

        def end_of_data(transaction):
            if "long@one.test" in transaction.rcpt_to:
                cls.release.wait(30)  # in flight until the test lets it go
            return "250 2.0.0 Ok: queued"
        noon = noon_after_tomorrow()
        cls.midnight = noon + 43200
        cls.start(noon, cls.SPEED, (1, 100), ["one.test"], max_connections=4,
                  host="127.0.0.72", hostname="mx1.one.test", end_of_data_reply=end_of_data,
                  rcpt_replies={"grey@one.test": [
                      "450 4.2.0 <grey@one.test>: Recipient address rejected: Greylisted, see "
                      "http://postgrey.example/",
                      "250 2.1.5 Ok"]})

    @classmethod
    def tearDownClass(cls):
        cls.release.set()
        super().tearDownClass()

    def test_the_retry_waits_for_its_source(self):
        self.send("grey@one.test")
        greylisted_at = self.clock()
        # Refused at RCPT (its DATA then refused too): the connection is idle again once facteur
        # has the replies (half a real second is plenty on loopback; no state shows it). Its
        # RSET goes with the next transaction.
        harness.wait_until(lambda: any("DATA" in s.commands for s in self.sim.sessions),
                           timeout=30, what="the greylisted transaction")
        time.sleep(0.5)
        self.send("long@one.test")  # carried by that connection, and held at its end of data
        harness.wait_until(lambda: any(any("long@one.test" in c.lower() for c in s.commands)
                                       for s in self.sim.sessions), timeout=30, what="long sent")
        # Past the greylisting's minute: the retry is due, its source is full with "long".
        self.clock.sleep(greylisted_at + 90 - self.clock())
        self.assertEqual({s.peer[0] for s in self.sim.sessions}, {"127.0.0.7"},
                         [(s.peer, s.commands) for s in self.sim.sessions])
        self.release.set()
        self.sim.wait_for(lambda: self.sim.delivered_to("long@one.test"), timeout=30)
        # new1's cap is spent: the greylisted message goes back to the queue until midnight.
        messages = harness.wait_until(
            lambda: json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"],
            timeout=30, what="the greylisted message in the queue")
        self.assertEqual(len(messages), 1, messages)
        self.assert_held_until_midnight(messages, attempts=1)
        self.assertEqual(self.sim.delivered_to("grey@one.test"), [])


if __name__ == "__main__":
    harness.main()
