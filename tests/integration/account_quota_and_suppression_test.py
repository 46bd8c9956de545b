"""Account quotas, runaway-account containment and the suppression list (issue #5 points 4 and
6), with the real binary and smtplib: an account past its hourly quota gets 450 4.7.1 at MAIL
with the time the hour ends; the recipient past recipients_per_message gets 452 4.5.3 and the
message goes to the others; a burst far above an account's history suspends it at once (550
5.7.1 at the end of the data and at every later MAIL, an "account_suspended" event, the
metrics), the suspension survives a restart, and `facteur account resume` lets it send again;
an address on the suppression list (added with `facteur suppression add`, server stopped or
running) is refused at RCPT TO with 550 5.1.1, in any case, from any client, until removed."""

import json
import os
import re
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

PASSWORD = "quota test password"

LISTENERS = [
    {"name": "smtps", "address": "127.0.0.1:0", "role": "submission", "tls": "implicit"},
    {"name": "relay", "address": "127.0.0.1:0", "role": "relay", "tls": "none"},
]

# Small numbers so that the scenario runs in seconds: 5 messages an hour, 3 recipients a
# message, and a burst is more than 20 messages in 5 minutes at over 10 times the usual rate
# (a new account has no history: any such burst).
EXTRA = """
[quota]
messages_per_hour = 5
recipients_per_message = 3
anomaly_window = "5m"
anomaly_factor = 10
anomaly_min_messages = 20

[[quota.account]]
name = "burst"
messages_per_hour = 0
messages_per_day = 0

[[quota.account]]
name = "wide"
messages_per_hour = 100
"""

ACCOUNTS = {
    "hourly": "hourly@quota.example",
    "wide": "wide@quota.example",
    "burst": "burst@quota.example",
    "steady": "steady@quota.example",
}


class AccountQuotaAndSuppressionTest(harness.ServerTestCase):
    listeners = LISTENERS
    extra = EXTRA

    @classmethod
    def prepare(cls, server):
        for name, address in ACCOUNTS.items():
            server.add_account(name, PASSWORD, address)
        # Server stopped: straight into the store.
        server.cli("suppression", "add", "early@gone.example")

    # -- helpers ---------------------------------------------------------------------------

    def login(self, account):
        client = self.server.smtp_ssl("smtps")
        self.addCleanup(client.close)
        code, _ = client.ehlo("client.example")
        self.assertEqual(code, 250)
        code, text = client.login(account, PASSWORD)
        self.assertEqual((code, text[:5]), (235, b"2.7.0"), text)
        return client

    def send(self, client, account, recipients=("bob@example.com",), expect=250):
        sender = ACCOUNTS[account]
        code, text = client.mail(sender)
        if code != 250:
            return code, text
        for recipient in recipients:
            code, text = client.rcpt(recipient)
            self.assertEqual(code, 250, text)
        code, text = client.data(harness.simple_message(sender=sender, to=recipients[0]))
        return code, text

    def metric(self, name, labels=""):
        with urllib.request.urlopen(self.server.admin_url("/metrics"), timeout=10) as response:
            text = response.read().decode()
        pattern = r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels))
        match = re.search(pattern, text, re.MULTILINE)
        return float(match.group(1)) if match else None

    def admin_get(self, path):
        with urllib.request.urlopen(self.server.admin_url(path), timeout=10) as response:
            return json.loads(response.read())

    # -- quotas ----------------------------------------------------------------------------

    def test_hourly_quota_refuses_mail_with_450_and_the_time_it_ends(self):
        harness.wait_clear_of_hour_end()
        client = self.login("hourly")
        for i in range(5):
            code, text = self.send(client, "hourly")
            self.assertEqual((code, text[:5]), (250, b"2.0.0"), "message %d: %r" % (i, text))
        code, text = client.mail(ACCOUNTS["hourly"])
        self.assertEqual((code, text[:5]), (450, b"4.7.1"), text)
        # The hour ends at the next full hour; the server names its date too when that is
        # midnight (another day than now).
        reset = time.gmtime(time.time() + 3600)
        next_hour = time.strftime("%Y-%m-%d %H:00" if reset.tm_hour == 0 else "%H:00", reset)
        self.assertIn(b"Hourly sending quota of 5 messages reached for account hourly", text)
        self.assertIn(("try again after %s UTC" % next_hour).encode(), text)
        # The refusal leaves the session usable: a new MAIL is answered the same way, and the
        # counts are the server's, whatever the session.
        other = self.login("hourly")
        code, text = other.mail(ACCOUNTS["hourly"])
        self.assertEqual(code, 450, text)
        self.assertGreaterEqual(
            self.metric("facteur_account_quota_refusals_total", '{reason="hourly"}'), 2)
        quota = self.admin_get("/api/accounts/hourly/quota")
        self.assertEqual(quota["hour_count"], 5)
        self.assertEqual(quota["messages_per_hour"], 5)
        self.assertFalse(quota["suspended"])

    def test_recipient_past_the_limit_gets_452_and_the_rest_is_sent(self):
        client = self.login("wide")
        code, text = client.mail(ACCOUNTS["wide"])
        self.assertEqual(code, 250, text)
        for n in range(3):
            code, text = client.rcpt("r%d@example.com" % n)
            self.assertEqual((code, text[:5]), (250, b"2.1.5"), text)
        code, text = client.rcpt("r3@example.com")
        # RFC 5321 §4.5.3.1.10: 452 4.5.3, the client sends the rest in another message.
        self.assertEqual((code, text[:5]), (452, b"4.5.3"), text)
        self.assertIn(b"at most 3 recipients", text)
        code, text = client.data(harness.simple_message(sender=ACCOUNTS["wide"]))
        self.assertEqual((code, text[:5]), (250, b"2.0.0"), text)
        shown = json.loads(self.server.cli("queue", "show", harness.queued_id(text.decode()),
                                           "--json").stdout)
        self.assertEqual(len(shown["recipients"]), 3, shown)
        self.assertGreaterEqual(
            self.metric("facteur_account_quota_refusals_total", '{reason="recipients"}'), 1)

    def assert_listed_as_suspended_for_volume(self):
        listed = {a["name"]: a for a in json.loads(
            self.server.cli("account", "list", "--json").stdout)["accounts"]}
        self.assertTrue(listed["burst"]["suspended"], listed["burst"])
        self.assertEqual(listed["burst"]["suspended_by"], "unusual volume")
        self.assertIn("usual", listed["burst"]["suspension_detail"])
        self.assertFalse(listed["steady"]["suspended"])
        text = self.server.cli("account", "list").stdout.decode()
        self.assertIn("burst (suspended)", text)
        self.assertIn("until `facteur account resume burst`", text)

    def test_burst_suspends_the_account_until_resumed(self):
        client = self.login("burst")
        refused_at = None
        for i in range(40):
            code, text = self.send(client, "burst")
            if code != 250:
                refused_at = i
                break
        # A new account may send its first 20 (anomaly_min_messages); the 21st is the burst.
        self.assertEqual(refused_at, 20, (code, text))
        self.assertEqual((code, text[:5]), (550, b"5.7.1"), text)
        self.assertIn(b"suspended for unusual sending volume; contact the administrator", text)
        code, text = client.mail(ACCOUNTS["burst"])
        self.assertEqual((code, text[:5]), (550, b"5.7.1"), text)
        # Another session of the account, and the steady account is not affected.
        code, text = self.login("burst").mail(ACCOUNTS["burst"])
        self.assertEqual(code, 550, text)
        code, text = self.send(self.login("steady"), "steady")
        self.assertEqual(code, 250, text)

        events = harness.wait_until(
            lambda: [e for e in harness.read_events(self.server)
                     if e["type"] == "account_suspended"],
            what="an account_suspended event")
        self.assertEqual(len(events), 1, events)
        self.assertEqual(events[0]["account"], "burst")
        self.assertIn("usual rate", events[0]["detail"])
        self.assertEqual(self.metric("facteur_account_suspensions_total"), 1)
        self.assertGreaterEqual(
            self.metric("facteur_account_quota_refusals_total", '{reason="suspended"}'), 2)
        self.assertTrue(self.admin_get("/api/accounts/burst/quota")["suspended"])
        # `account list` says so too (it said "suspended": false), by whom and how it ends.
        self.assert_listed_as_suspended_for_volume()

        # The suspension survives a restart.
        self.server.stop()
        self.server.start()
        code, text = self.login("burst").mail(ACCOUNTS["burst"])
        self.assertEqual((code, text[:5]), (550, b"5.7.1"), text)

        # Resumed through the running server's admin API, the account sends again at once.
        result = self.server.cli("account", "resume", "burst")
        self.assertIn(b"resumed", result.stdout)
        client = self.login("burst")
        code, text = self.send(client, "burst")
        self.assertEqual((code, text[:5]), (250, b"2.0.0"), text)
        result = self.server.cli("account", "resume", "burst")
        self.assertIn(b"was not suspended", result.stdout)
        missing = self.server.cli("account", "resume", "nobody", check=False)
        self.assertNotEqual(missing.returncode, 0)

        # A second burst suspends it again; resumed this time with the server stopped (the CLI
        # changes the store itself), it sends once the server is back.
        for i in range(40):
            code, text = self.send(client, "burst")
            if code != 250:
                break
        self.assertEqual((code, text[:5]), (550, b"5.7.1"), text)
        self.server.stop()
        self.assert_listed_as_suspended_for_volume()  # read from the store itself
        result = self.server.cli("account", "resume", "burst")
        self.assertIn(b"resumed", result.stdout)
        self.server.start()
        code, text = self.send(self.login("burst"), "burst")
        self.assertEqual((code, text[:5]), (250, b"2.0.0"), text)
        suspended = lambda events: [e for e in events if e["type"] == "account_suspended"]
        self.assertEqual(len(suspended(harness.events_when(
            self.server, lambda events: len(suspended(events)) >= 2))), 2)

    # -- suppression list ------------------------------------------------------------------

    def test_suppressed_address_is_refused_at_rcpt_with_550_511(self):
        day_before = time.strftime("%Y-%m-%d", time.gmtime())
        self.server.cli("suppression", "add", "Gone@Unknown.example")
        day_after = time.strftime("%Y-%m-%d", time.gmtime())
        listed = json.loads(self.server.cli("suppression", "list", "--json").stdout)
        addresses = [entry["address"] for entry in listed["addresses"]]
        self.assertIn("gone@unknown.example", addresses)
        self.assertIn("early@gone.example", addresses)  # added while the server was stopped

        client = self.server.smtp("relay")
        self.addCleanup(client.close)
        client.ehlo("app.example")
        code, text = client.mail("app@asso.example")
        self.assertEqual(code, 250, text)
        code, text = client.rcpt("gone@unknown.example")
        self.assertEqual((code, text[:5]), (550, b"5.1.1"), text)
        self.assertIn(b"<gone@unknown.example>", text)
        # The day the address was added (either side of midnight when the test straddles it).
        self.assertTrue(any(("since %s" % day).encode() in text
                            for day in (day_before, day_after)), text)
        self.assertIn(b"not sent again", text)
        code, text = client.rcpt("GONE@unknown.EXAMPLE")
        self.assertEqual((code, text[:5]), (550, b"5.1.1"), text)
        code, text = client.rcpt("early@gone.example")
        self.assertEqual((code, text[:5]), (550, b"5.1.1"), text)
        # The other recipients of the message are accepted and it is queued.
        code, text = client.rcpt("present@unknown.example")
        self.assertEqual(code, 250, text)
        code, text = client.data(harness.simple_message())
        self.assertEqual(code, 250, text)

        # An authenticated account meets the same list.
        submission = self.login("steady")
        code, text = submission.mail(ACCOUNTS["steady"])
        self.assertEqual(code, 250, text)
        code, text = submission.rcpt("gone@unknown.example")
        self.assertEqual((code, text[:5]), (550, b"5.1.1"), text)
        submission.rset()
        self.assertGreaterEqual(self.metric("facteur_suppressed_recipients_refused_total"), 4)

        # Removed, the address receives mail again.
        self.server.cli("suppression", "remove", "<gone@unknown.example>")
        code, text = client.mail("app@asso.example")
        self.assertEqual(code, 250, text)
        code, text = client.rcpt("gone@unknown.example")
        self.assertEqual((code, text[:5]), (250, b"2.1.5"), text)
        missing = self.server.cli("suppression", "remove", "gone@unknown.example", check=False)
        self.assertNotEqual(missing.returncode, 0)
        bad = self.server.cli("suppression", "add", "not-an-address", check=False)
        self.assertNotEqual(bad.returncode, 0)


if __name__ == "__main__":
    harness.main()
