"""`facteur reputation` (issue #5 point 5): on a data directory with no spool, beside a running
server that has no reputation data, and on a spool whose reputation records a helper filled
with known replies at known times — stopped, then with the server running (the command opens
RocksDB as a secondary instance). Checks the health score, the 24-hour counters and the warmup
day and cap that the shaping file's plan gives the source's pool."""

import calendar
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

FILL = os.environ.get("FACTEUR_REPUTATION_FILL") or os.path.join(
    os.path.dirname(os.path.abspath(harness.BINARY)), "tests", "integration", "reputation_fill")

# 2027-03-10 12:00:00 UTC: the "now" every evaluation is pinned to (--now).
NOW = calendar.timegm((2027, 3, 10, 12, 0, 0))
HOUR = 3600
DAY = 24 * HOUR

SHAPING = """
[[warmup]]
name = "ramp"
daily_caps = [5, 10]

[warmup_pools]
new = "ramp"
"""

EXTRA = """
[shaping]
file = "shaping.toml"

[[source]]
name = "ip-new"
pool = "new"

[[source]]
name = "ip-old"
"""

# SOURCE SITE CLASS final|transient COUNT UNIX_SECONDS
REPLIES = [
    ("ip-new", "google", "success", "final", 1, NOW - DAY - HOUR),  # first use: yesterday
    ("ip-new", "google", "success", "final", 4, NOW - HOUR),
    ("ip-new", "google", "rate_limit", "transient", 1, NOW - 1800),
    ("ip-new", "google", "blocklist", "final", 1, NOW - 600),
    ("ip-old", "orange", "success", "final", 3, NOW - 2 * HOUR),
    ("ip-old", "orange", "greylist", "transient", 2, NOW - 2 * HOUR),
]


class ReputationCliTest(harness.unittest.TestCase):
    def setUp(self):
        self.server = harness.Facteur(extra=EXTRA)
        self.addCleanup(self.server.cleanup)
        with open(os.path.join(self.server.data_dir, "shaping.toml"), "w") as f:
            f.write(SHAPING)

    def reputation(self, *args):
        return self.server.cli("reputation", "--now", str(NOW), *args)

    def reputation_json(self, *args):
        return json.loads(self.reputation("--json", *args).stdout)

    def fill(self):
        if not os.path.exists(FILL):
            self.skipTest("helper %s not built" % FILL)
        lines = "".join("%s %s %s %s %d %d\n" % reply for reply in REPLIES)
        result = subprocess.run([FILL, os.path.join(self.server.data_dir, "spool")],
                                input=lines.encode(), capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr.decode())

    def test_no_spool_yet_says_so(self):
        self.assertFalse(os.path.exists(os.path.join(self.server.data_dir, "spool")))
        result = self.reputation()
        self.assertIn(b"no reputation data yet", result.stdout)
        self.assertEqual(self.reputation_json()["pairs"], [])

    def test_running_server_without_data_says_so(self):
        self.server.start()
        self.assertIn(b"no reputation data yet", self.reputation().stdout)
        self.assertEqual(self.reputation_json()["pairs"], [])

    def check_filled(self, document):
        self.assertEqual(document["now"], "2027-03-10T12:00:00Z")
        pairs = document["pairs"]
        self.assertEqual([(p["source"], p["site"]) for p in pairs],
                         [("ip-new", "google"), ("ip-old", "orange")])
        new, old = pairs
        # 4 delivered (yesterday's one left the 24 h window), 1 rate limit, 1 block:
        # 4 / (4 + 1 + 3).
        self.assertAlmostEqual(new["health"], 0.5)
        self.assertEqual(new["last_24h"]["delivered"], 4)
        self.assertEqual(new["last_24h"]["deferred"], 1)
        self.assertEqual(new["last_24h"]["deferred_by_class"], {"rate_limit": 1})
        self.assertEqual(new["last_24h"]["blocked"], 1)
        self.assertEqual(new["lifetime"]["delivered"], 5)
        self.assertEqual(new["warmup"], {
            "day": 2, "plan": "ramp", "cap": 10, "sent_today": 5,
            "resets_at": "2027-03-11T00:00:00Z"})
        # Greylisting weighs nothing; the pool of ip-old has no plan.
        self.assertAlmostEqual(old["health"], 1.0)
        self.assertEqual(old["last_24h"]["deferred_by_class"], {"greylist": 2})
        self.assertEqual(old["warmup"]["plan"], None)
        self.assertEqual(old["warmup"]["cap"], None)
        self.assertEqual(old["warmup"]["day"], 1)

    def test_filled_store_stopped_then_running(self):
        self.fill()
        self.check_filled(self.reputation_json())
        table = self.reputation().stdout.decode()
        self.assertNotIn("no reputation data", table)
        lines = table.splitlines()
        self.assertRegex(lines[0], r"^SOURCE\s+SITE\s+HEALTH\s+DELIVERED\s+DEFERRED\s+BOUNCED"
                                   r"\s+BLOCKED\s+WARMUP\s+TODAY/CAP$")
        self.assertRegex(lines[1], r"^ip-new\s+google\s+0\.50\s+4\s+1\s+0\s+1\s+day 2\s+5/10$")
        self.assertRegex(lines[2], r"^ip-old\s+orange\s+1\.00\s+3\s+2\s+0\s+0\s+-\s+3$")

        # Two days on the plan is over: no cap; the window is empty, the health neutral.
        later = json.loads(self.server.cli(
            "reputation", "--json", "--now", str(NOW + 2 * DAY)).stdout)
        new = later["pairs"][0]
        self.assertEqual(new["warmup"]["day"], 4)
        self.assertEqual(new["warmup"]["cap"], None)
        self.assertEqual(new["warmup"]["sent_today"], 0)
        self.assertEqual(new["last_24h"]["delivered"], 0)
        self.assertAlmostEqual(new["health"], 1.0)

        # The running server holds the database; the command reads beside it.
        self.server.start()
        self.check_filled(self.reputation_json())
        self.assertRegex(self.reputation().stdout.decode(), r"ip-new\s+google\s+0\.50")

    def test_usage_errors(self):
        result = self.server.cli("reputation", "extra", check=False)
        self.assertEqual(result.returncode, 64)
        result = self.server.cli("reputation", "--now", "yesterday", check=False)
        self.assertEqual(result.returncode, 64)
        self.assertIn(b"usage: facteur reputation", self.server.cli("reputation", "--help").stdout)


if __name__ == "__main__":
    harness.main()
