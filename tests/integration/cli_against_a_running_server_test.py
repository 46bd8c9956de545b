"""The command line beside a running server: a second `facteur serve` on the same data
directory is refused and leaves the running one's endpoints.json alone, so the CLI still
reaches its admin API; `reload` checks the DKIM key files the configuration names before it
signals the server (it signalled, and the server kept its old keys); and `account list
--json`, answered through the admin API, gives each account's real creation time (it read
1970-01-01 before), with no RocksDB warning about the store the running server holds; and
the common options may come before the command."""

import datetime
import json
import os
import subprocess

import harness

EX_TEMPFAIL = 75


class CliAgainstARunningServerTest(harness.ServerTestCase):
    def endpoints(self):
        with open(os.path.join(self.server.data_dir, "endpoints.json")) as f:
            return json.load(f)

    def test_a_second_serve_leaves_the_first_alone(self):
        self.assertEqual(self.endpoints()["pid"], self.server.process.pid)
        second = subprocess.run([harness.BINARY, "serve", "--config", self.server.config_path],
                                capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(second.returncode, EX_TEMPFAIL, second)
        self.assertIn(b"in use by a running facteur", second.stdout + second.stderr)
        self.assertEqual(self.endpoints()["pid"], self.server.process.pid)
        summary = json.loads(self.server.cli("queue", "summary", "--json").stdout)
        self.assertEqual(summary["messages"], 0)
        self.assertIsNone(self.server.process.poll())

    def test_common_options_may_come_before_the_command(self):
        # As the usage says: "facteur --config F queue summary --json" (it was "unknown
        # command '--config'").
        before = subprocess.run([harness.BINARY, "--config", self.server.config_path, "--json",
                                 "queue", "summary"], capture_output=True, timeout=60)
        self.assertEqual(before.returncode, 0, before)
        after = self.server.cli("queue", "summary", "--json")
        self.assertEqual(json.loads(before.stdout), json.loads(after.stdout))

    def test_reload_checks_the_key_files_first(self):
        # A [[dkim.key]] whose file is missing: the server would keep its old keys, so reload
        # says so and sends no signal.
        with open(self.server.config_path) as f:
            text = f.read()
        missing = os.path.join(self.server.data_dir, "dkim", "missing.pem")
        broken = os.path.join(self.server.data_dir, "broken.toml")
        with open(broken, "w") as f:
            f.write(text + '\n[[dkim.key]]\ndomain = "asso.example"\nselector = "s1"\n'
                           'key_file = "%s"\n' % missing)
        result = subprocess.run([harness.BINARY, "reload", "--config", broken],
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 78, result)
        self.assertIn(b"not sent", result.stderr)
        self.assertIn(missing.encode(), result.stderr)
        self.assertNotIn("SIGHUP", self.server.log())

    def test_account_list_through_the_api_gives_the_creation_time(self):
        before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
        self.server.cli("account", "add", "carol", input=b"carol's password\n")
        listing = self.server.cli("account", "list", "--json")
        # Through the API without a word of the store it could not open (RocksDB's warning).
        self.assertEqual(listing.stderr, b"")
        accounts = json.loads(listing.stdout)["accounts"]
        carol = next(a for a in accounts if a["name"] == "carol")
        created = datetime.datetime.fromisoformat(carol["created_at"])
        self.assertGreaterEqual(created, before, carol)
        self.assertLessEqual(created, datetime.datetime.now(datetime.timezone.utc), carol)
        # The same as the API itself says.
        with harness.urllib.request.urlopen(self.server.admin_url("/api/accounts"),
                                            timeout=10) as response:
            listed = json.loads(response.read())["accounts"]
        self.assertEqual(next(a for a in listed if a["name"] == "carol")["created_at"],
                         carol["created_at"])


if __name__ == "__main__":
    harness.main()
