"""Every kind of suspension outlives a restart of the server until it ends or is lifted (the
operator's test drive found all of them dropped): a domain held by `facteur queue suspend`, a
site paused by `facteur site suspend`, and a (site, source) pair that a provider's blocklist
answer ("550 5.7.1 ... blocked using zen.spamhaus.org") paused for 2 hours. After a SIGTERM and
a start, the log names what was restored, /api/queue/suspended and `site list` show the three
as before (same end times, same causes), and mail queued before the restart and mail submitted
after it stay queued. Then `queue resume` and `site resume` let theirs go at once (what the
paused site handed back before the restart needs a `queue flush` of its domain: see below), and
the blocklist pause lets its mail go when its time ends, not before. The clock runs 240 times
faster: the 2-hour pause lasts 30 real seconds."""

import json
import time
import unittest
import urllib.request

import harness
from dns_server import DnsServer
from provider_sim import BLOCKLIST_REPLY, ProviderSim
from test_clock import ScaledClock

SPEED = 240.0
SIM_IP = "127.0.0.75"
SOURCE_IP = "127.0.0.9"
SHAPING = """
[actions.blocklist]
suspend = "2h"
prefer_other_source = true

[[site]]
name = "holdsite"
mx = ["*.hold.test"]
[[site]]
name = "pausesite"
mx = ["*.pause.test"]
[[site]]
name = "blocksite"
mx = ["*.block.test"]
"""


class BlocklistingSim(ProviderSim):
    """Answers the blocklist reply to every RCPT for block.test while `blocking` is set: the
    provider listed our address; clearing it is the delisting."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.blocking = True

    def rcpt_reply_for(self, session, transaction, address, now):
        if self.blocking and address.lower().endswith("@block.test"):
            with self._lock:
                self.blocklist_replies += 1
            return BLOCKLIST_REPLY.format(ip=session.peer[0])
        return super().rcpt_reply_for(session, transaction, address, now)


class SuspensionsSurviveARestartTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.clock = ScaledClock(speed=SPEED)
        cls.sim = BlocklistingSim(host=SIM_IP, clock=cls.clock, hostname="mx1.sim.test").start()
        cls.dns = DnsServer(mx=[("hold.test", "mx1.hold.test", 10),
                                ("pause.test", "mx1.pause.test", 10),
                                ("block.test", "mx1.block.test", 10)],
                            addresses=[("mx1.hold.test", SIM_IP), ("mx1.pause.test", SIM_IP),
                                       ("mx1.block.test", SIM_IP)])
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

    def send(self, *recipients):
        with self.server.smtp() as client:
            for rcpt in recipients:
                client.sendmail("app@asso.example", [rcpt], harness.simple_message(to=rcpt))

    def sites(self):
        return {s["key"]: s for s in json.loads(
            self.server.cli("site", "list", "--json").stdout)["sites"]}

    def pair(self, site, source="out1"):
        return self.server.site_pair(site, source)

    def delivered(self, *recipients):
        with self.sim._lock:
            return [r for r in recipients if self.sim.delivered[r] > 0]

    def suspended_domains(self):
        with urllib.request.urlopen(self.server.admin_url("/api/queue/suspended"),
                                    timeout=10) as response:
            return json.loads(response.read())["domains"]

    def test_holds_and_pauses_outlive_a_restart(self):
        # A blocklist answer pauses (blocksite, out1) for 2 hours (of the test clock).
        self.send("first@block.test")
        blocked = harness.wait_until(
            lambda: (lambda p: p if p and p["state"] == "suspended" else None)(
                self.pair("blocksite")), what="blocksite/out1 paused by the blocklist answer")
        self.assertEqual(blocked["suspended_by"], "blocklist")
        self.server.cli("queue", "suspend", "hold.test")
        self.server.cli("site", "suspend", "pausesite", "--minutes", "1440")
        self.send("held1@hold.test", "paused1@pause.test", "later1@block.test")
        harness.wait_until(
            lambda: (lambda p: p if p else None)(self.pair("pausesite")),
            what="pausesite's pair, paused, once its mail came")
        before = self.sites()
        self.assertEqual(before["pausesite"]["sources"][0]["suspended_by"], "manual")
        time.sleep(1)
        self.assertEqual(self.delivered("held1@hold.test", "paused1@pause.test",
                                        "later1@block.test"), [])

        # The provider delists us while we restart: only the pause holds the mail back now.
        self.sim.blocking = False
        log_before = len(self.server.log())
        self.assertEqual(self.server.stop(), 0)
        self.server.start()
        restart_log = self.server.log()[log_before:]
        self.assertIn("restored 1 domain hold (hold.test)", restart_log)
        self.assertIn("blocksite/out1 until", restart_log)
        self.assertIn("pausesite/* until", restart_log)
        line = next(l for l in restart_log.splitlines() if "restored" in l)
        self.assertIn("blocklist", line)
        self.assertIn("manual", line)

        # As before the restart: the hold, both pauses with their ends and causes.
        self.assertEqual(self.suspended_domains(), ["hold.test"])
        after = self.sites()
        for key, source in (("blocksite", "out1"), ("pausesite", "out1")):
            old = {p["source"]: p for p in before[key]["sources"]}[source]
            new = {p["source"]: p for p in after[key]["sources"]}.get(source)
            self.assertIsNotNone(new, (key, after.get(key)))
            self.assertEqual(new["state"], "suspended", (key, new))
            self.assertEqual(new["suspended_by"], old["suspended_by"], key)
            self.assertAlmostEqual(harness.parse_time(new["suspended_until"]),
                                   harness.parse_time(old["suspended_until"]), delta=0.001)
        self.assertAlmostEqual(harness.parse_time(after["pausesite"]["suspended_until"]),
                               harness.parse_time(before["pausesite"]["suspended_until"]), delta=0.001)

        # Mail queued before and submitted after the restart stays queued.
        self.send("held2@hold.test", "paused2@pause.test", "later2@block.test")
        time.sleep(2)
        everything = ("held1@hold.test", "held2@hold.test", "paused1@pause.test",
                      "paused2@pause.test", "later1@block.test", "later2@block.test")
        self.assertEqual(self.delivered(*everything), [])
        summary = json.loads(self.server.cli("queue", "summary", "--json").stdout)
        self.assertGreaterEqual(summary["messages"], 6, summary)
        # The text summary shows the mail not tried since the start (queued before the
        # restart, no site known yet) on a row of its own: the rows add up to the total (it
        # left that mail out).
        unattempted = summary["totals"]["unknown_site"]
        self.assertGreaterEqual(unattempted, 2, summary)  # paused1, later1
        self.assertEqual(sum(s["scheduled"] for s in summary["sites"]) + unattempted,
                         summary["scheduled"], summary)
        rows = [l.split() for l in
                self.server.cli("queue", "summary").stdout.decode().splitlines()]
        row = next((r for r in rows if r[:4] == ["(not", "tried", "since", "start)"]), None)
        self.assertIsNotNone(row, rows)
        self.assertEqual(row[-1], str(unattempted))

        # Lifted by the operator: their mail goes at once.
        self.server.cli("queue", "resume", "hold.test")
        self.sim.wait_for(lambda: self.sim.delivered["held1@hold.test"] and
                          self.sim.delivered["held2@hold.test"], timeout=20)
        self.assertEqual(self.suspended_domains(), [])
        resumed = self.server.cli("site", "resume", "pausesite").stdout.decode()
        self.sim.wait_for(lambda: self.sim.delivered["paused2@pause.test"], timeout=20)
        # What waits since before the restart is not the site's to send: the answer says which
        # command does.
        self.assertIn("not tried since the server started", resumed)
        self.assertIn("`facteur queue flush DOMAIN` sends it now", resumed)
        # A message the paused site handed back to the spool before the restart waits for the
        # time it was given (the pause's end): which site held it back is known only in memory
        # (QueueManager::FlushSite), so `site resume` cannot find it after a restart. A flush of
        # its domain sends it.
        self.assertEqual(self.delivered("paused1@pause.test"), [])
        self.server.cli("queue", "flush", "pause.test")
        self.sim.wait_for(lambda: self.sim.delivered["paused1@pause.test"], timeout=20)

        # The blocklist pause ends by its time, and only then does its mail go.
        until = harness.parse_time(after["blocksite"]["sources"][0]["suspended_until"])
        self.assertEqual(self.delivered("later1@block.test", "later2@block.test"), [])
        self.sim.wait_for(lambda: self.sim.delivered["later1@block.test"] and
                          self.sim.delivered["later2@block.test"],
                          timeout=max(0, self.clock.real_time_at(until) - time.time()) + 30)
        with self.sim._lock:
            sent = [d.time for d in self.sim.deliveries
                    if any(r.lower().endswith("@block.test") for r in d.recipients)]
        self.assertTrue(sent and min(sent) >= until, (sent, until))
        self.assertEqual(self.sim.duplicates(), {})


if __name__ == "__main__":
    harness.main()
