"""The site view of the admin API and its CLI (issue #6 point 4), with a bearer token: after a
first delivery, `facteur site list` shows the site and its source; `facteur site suspend` pauses
the (source, site) pair by hand — mail queued meanwhile reaches nothing, /api/sites says
suspended by "manual", a "suspension" event is written, and `facteur queue summary` counts the
messages and says which site holds them — then `facteur site resume` lifts it and the mail goes
at once, which `facteur top --once` sees as a delivered rate for the site. /api/reputation
returns the live pair; an unknown site is 404. A pause by a shipped site's name also holds a
domain override of that site ("sinksite/vip.test") that first gets mail during the pause,
whichever shard owns it."""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import harness
from dns_server import DnsServer
from provider_sim import ProviderSim

TOKEN = "site-admin-token-0123456789"
SHAPING = """
[[site]]
name = "sinksite"
mx = ["*.sink.test"]
[site.limits]
max_connections = 2
messages_per_minute = 0
messages_per_hour = 0

[[domain]]
domain = "vip.test"
site = "sinksite"
[domain.limits]
max_connections = 1
"""


class SiteSuspendResumeAndTopTest(harness.unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sim = ProviderSim(host="127.0.0.64", hostname="mx1.sink.test").start()
        cls.dns = DnsServer(mx=[("sink.test", "mx1.sink.test", 10),
                                ("vip.test", "mx1.sink.test", 10)],
                            addresses=[("mx1.sink.test", "127.0.0.64")])
        cls.dns.start()
        cls.server = harness.Facteur(extra=harness.delivery_extra(
            cls.dns, cls.sim.port, shaping_file="shaping.toml",
            sources=[{"name": "out1", "address": "127.0.0.6"}]))
        with open(cls.server.config_path) as f:
            text = f.read()
        with open(cls.server.config_path, "w") as f:
            f.write(text.replace("[admin]\n", '[admin]\ntoken_file = "admin.token"\n', 1))
        cls.server.write_file("admin.token", TOKEN + "\n")
        os.chmod(os.path.join(cls.server.data_dir, "admin.token"), 0o600)
        cls.server.write_file("shaping.toml", SHAPING)
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()
        cls.dns.cleanup()
        cls.sim.stop()

    def api(self, path):
        request = urllib.request.Request(self.server.admin_url(path))
        request.add_header("Authorization", "Bearer " + TOKEN)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def cli_json(self, *args):
        return json.loads(self.server.cli(*args, "--json").stdout)

    def send(self, count, tag):
        with self.server.smtp() as client:
            for i in range(count):
                rcpt = "%s%02d@sink.test" % (tag, i)
                client.sendmail("app@asso.example", [rcpt], harness.simple_message(to=rcpt))

    def pair(self):
        sites = {s["key"]: s for s in self.cli_json("site", "list")["sites"]}
        self.assertIn("sinksite", sites)
        sources = {p["source"]: p for p in sites["sinksite"]["sources"]}
        self.assertIn("out1", sources)
        return sites["sinksite"], sources["out1"]

    def delivered(self):
        with self.sim._lock:
            return sum(self.sim.delivered.values())

    def test_suspend_resume_summary_top_reputation(self):
        # Without the token the API is closed; the CLI reads the token file.
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(self.server.admin_url("/api/sites"), timeout=10)
        self.assertEqual(refused.exception.code, 401)

        self.send(2, "first")
        self.sim.wait_for(lambda: len(self.sim.delivered) >= 2, timeout=20)
        site, pair = self.pair()
        self.assertEqual(site["label"], "sinksite")
        self.assertEqual(pair["state"], "normal")
        self.assertIsNone(pair["suspended_by"])
        self.assertIn(b"sinksite", self.server.cli("site", "list").stdout)

        # Suspended by hand: nothing more reaches the site. Its name is taken in any case (it
        # was refused), and the answer and the log spell it as the server does.
        answer = self.cli_json("site", "suspend", "SinkSite", "--minutes", "30")
        self.assertEqual(answer["site"], "sinksite")
        self.assertEqual(answer["sites"], ["sinksite"])
        self.assertIn("admin: site suspend sinksite (every source) until ", self.server.log())
        self.assertGreaterEqual(answer["pairs"], 1)
        site, pair = self.pair()
        self.assertEqual(pair["state"], "suspended")
        self.assertEqual(pair["suspended_by"], "manual")
        self.assertIsNotNone(pair["suspended_until"])
        manual = lambda events: [e for e in events if e["type"] == "suspension" and
                                 e.get("site") == "sinksite" and "manual" in e.get("detail", "")]
        self.assertTrue(manual(harness.events_when(self.server, manual,
                                                   what="the manual suspension")))

        self.send(3, "held")
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", ["boss@vip.test"],
                            harness.simple_message(to="boss@vip.test"))
        # Held back to the spool for the end of the pause: three messages scheduled for the
        # site, one for its override, which no shard held before the pause.
        summary = harness.wait_until(
            lambda: (lambda s: s if s["scheduled"] == 4 and {
                x["site"]: x["scheduled"] for x in s["sites"] if x["scheduled"]} == {
                    "sinksite": 3, "sinksite/vip.test": 1} else None)(
                    self.cli_json("queue", "summary")),
            what="three messages scheduled for sinksite, one for sinksite/vip.test")
        self.assertEqual(summary["messages"], 4)
        self.assertEqual(summary["in_flight"], 0)
        self.assertEqual({x["site"]: x["held_back_jobs"] for x in summary["sites"]
                          if x["held_back_jobs"]}, {"sinksite": 3, "sinksite/vip.test": 1})
        self.assertIn(b"sinksite", self.server.cli("queue", "summary").stdout)
        time.sleep(0.5)
        self.assertEqual(self.delivered(), 2)

        # An unknown site is 404 (exit 66).
        unknown = self.server.cli("site", "suspend", "no-such-site", check=False)
        self.assertEqual(unknown.returncode, 66, unknown.stderr)
        # A shipped site without mail yet has nothing to resume, and the answer says so (it
        # said "no site 'google'", which `site suspend google` contradicted).
        idle = self.server.cli("site", "resume", "google", check=False)
        self.assertEqual(idle.returncode, 66, idle.stderr)
        self.assertIn(b"no suspended site 'google'", idle.stderr)

        # Resumed while `top` samples: the held mail goes at once, and top sees the rate.
        top = subprocess.Popen(
            [harness.BINARY, "top", "--once", "--interval", "2", "--config",
             self.server.config_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.3)
        answer = self.cli_json("site", "resume", "sinksite")
        self.assertGreaterEqual(answer["pairs"], 1)
        self.assertEqual(answer["messages"], 4)
        self.sim.wait_for(lambda: len(self.sim.delivered) >= 6, timeout=20)
        out, err = top.communicate(timeout=30)
        self.assertEqual(top.returncode, 0, err)
        rows = [line.split() for line in out.decode().splitlines()]
        row = next((r for r in rows if r and r[0] == "sinksite"), None)
        self.assertIsNotNone(row, out.decode())
        self.assertGreater(float(row[1]), 0, out.decode())  # DELIVERED/MIN
        site, pair = self.pair()
        self.assertEqual(pair["state"], "normal")
        self.assertEqual(self.sim.duplicates(), {})
        self.assertIn("admin: site resume sinksite (every source): ", self.server.log())
        # Held back is what waits now (nothing: all went), beside the total since the start
        # (the column read 3 with the queue empty).
        site = harness.wait_until(
            lambda: (lambda s: s if s["held_back_jobs"] == 0 else None)(self.pair()[0]),
            what="nothing held back once delivered")
        self.assertGreaterEqual(site["held_back_since_start"], 3)

        # The live reputation counters, and the CLI reading them through the API.
        pairs = self.api("/api/reputation")["pairs"]
        live = [p for p in pairs if p["source"] == "out1" and p["site"] == "sinksite"]
        self.assertEqual(len(live), 1, pairs)
        self.assertEqual(live[0]["last_24h"]["delivered"], 5)
        self.assertEqual(self.cli_json("reputation")["pairs"], pairs)


if __name__ == "__main__":
    harness.main()
