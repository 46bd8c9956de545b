"""The command line (issue #2 point 3): config check on a good and a bad file, version, --help on
every subcommand, the account lifecycle on a stopped server, and the read-only queue commands
on a stopped server's --data-dir."""

import base64
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

EX_CONFIG = 78
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
PASSWORD = "Pl41n-T3xt-Never-Stored"

HELP = [
    ["--help"], ["serve", "--help"], ["queue", "--help"], ["queue", "ls", "--help"],
    ["queue", "show", "--help"], ["queue", "count", "--help"], ["account", "--help"],
    ["account", "add", "--help"], ["account", "del", "--help"], ["account", "passwd", "--help"],
    ["account", "list", "--help"], ["account", "grant", "--help"],
    ["account", "revoke", "--help"], ["config", "--help"], ["config", "check", "--help"],
    ["version", "--help"], ["sendmail", "--help"],
]


class CliCommandsTest(harness.unittest.TestCase):
    def setUp(self):
        self.server = harness.Facteur()
        self.addCleanup(self.server.cleanup)

    def run_cli(self, *args, **kwargs):
        return self.server.cli(*args, **kwargs)

    def accounts(self):
        return json.loads(self.run_cli("account", "list", "--json").stdout)["accounts"]

    def write(self, name, text):
        path = os.path.join(self.server.data_dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    # -- config, version, help -----------------------------------------------------------------

    def test_config_check_accepts_a_good_file(self):
        result = self.run_cli("config", "check", self.server.config_path, data_dir=False)
        self.assertEqual(result.stdout.decode().strip(), "%s: ok" % self.server.config_path)
        example = os.path.normpath(os.path.join(REPO, "deploy", "facteur.example.toml"))
        if os.path.exists(example):
            result = self.run_cli("config", "check", example, data_dir=False)
            self.assertIn(b": ok", result.stdout)

    def test_config_check_names_file_line_and_key(self):
        cases = [
            ("unknown.toml", 'hostname = "x.example"\n[smtp]\nmax_errorz = 3\n', 3,
             "smtp.max_errorz"),
            ("badvalue.toml", '[smtp]\nmax_recipients = 10\nmax_errors = -1\n', 3,
             "smtp.max_errors"),
            ("badtype.toml", '\n\nhostname = 12\n', 3, "hostname"),
            ("badtls.toml", '[[listener]]\naddress = "127.0.0.1:0"\ntls = "sometimes"\n', 3,
             "tls"),
        ]
        for name, text, line, key in cases:
            with self.subTest(name):
                path = self.write(name, text)
                result = self.run_cli("config", "check", path, check=False, data_dir=False)
                self.assertEqual(result.returncode, EX_CONFIG, result)
                stderr = result.stderr.decode()
                match = re.search(r"^(.*):(\d+):(\d+): key '([^']+)': .+", stderr, re.M)
                self.assertIsNotNone(match, stderr)
                self.assertTrue(match.group(1).endswith(name), stderr)
                self.assertEqual(int(match.group(2)), line, stderr)
                self.assertTrue(match.group(4).endswith(key), stderr)
        result = self.run_cli("config", "check", "/nonexistent/facteur.toml", check=False,
                              data_dir=False)
        self.assertNotEqual(result.returncode, 0)
        # serve refuses a bad file the same way, before binding anything.
        result = self.run_cli("serve", "--config", path, check=False, data_dir=False)
        self.assertEqual(result.returncode, EX_CONFIG, result)

    def test_config_check_reads_the_shaping_file_it_names(self):
        shaping = self.write("shaping.toml", "[defaults]\nmax_connections = 2\n\n"
                                             "[[site]]\nname = \"x\"\nmx = [\"*.x.example\"]\n"
                                             "[site.limits]\nmax_conections = 3\n")
        path = self.write("with-shaping.toml", '[shaping]\nfile = "%s"\n' % shaping)
        result = self.run_cli("config", "check", path, check=False, data_dir=False)
        self.assertEqual(result.returncode, EX_CONFIG, result)
        stderr = result.stderr.decode()
        self.assertRegex(stderr, r"shaping\.toml:8:\d+: key 'site\[0\]\.limits\.max_conections': "
                                 r"unknown key; did you mean 'site\[0\]\.limits\.max_connections'\?")

    def test_config_check_reads_the_dkim_keys_it_names(self):
        # What `serve` would refuse to start with, `config check` refuses too, naming the file.
        key = os.path.join(self.server.data_dir, "dkim", "asso.example.s1.pem")
        config = self.write("with-key.toml", "[[dkim.key]]\ndomain = \"asso.example\"\n"
                                             "selector = \"s1\"\nalgorithm = \"ed25519-sha256\"\n"
                                             "key_file = \"%s\"\n" % key)
        result = self.run_cli("config", "check", config, check=False, data_dir=False)
        self.assertEqual(result.returncode, EX_CONFIG, result)
        self.assertIn(key.encode(), result.stderr)
        self.run_cli("dkim", "keygen", "--domain", "asso.example", "--selector", "s1",
                     "--algorithm", "ed25519")
        self.assertIn(b": ok", self.run_cli("config", "check", config, data_dir=False).stdout)
        os.chmod(key, 0o644)
        result = self.run_cli("config", "check", config, check=False, data_dir=False)
        self.assertEqual(result.returncode, EX_CONFIG, result)
        self.assertIn(b"group or others", result.stderr)

    def test_config_check_reads_the_certificate_and_admin_token_it_names(self):
        # What `serve` would refuse to start with, `config check` refuses too, naming the key.
        directory = tempfile.mkdtemp(prefix="facteur-cfg-")
        self.addCleanup(shutil.rmtree, directory, True)
        listener = ('[[listener]]\naddress = "127.0.0.1:0"\nrole = "submission"\n'
                    'tls = "implicit"\n')
        missing = self.write("no-cert.toml", '[tls]\ncertificate_file = "%s/cert.pem"\n'
                             'private_key_file = "%s/key.pem"\n%s' % (directory, directory,
                                                                      listener))
        result = self.run_cli("config", "check", missing, check=False, data_dir=False)
        self.assertEqual(result.returncode, EX_CONFIG, result)
        self.assertIn(b"no-cert.toml: tls.certificate_file " + directory.encode(), result.stderr)
        # Two keys, neither the certificate's: a pair that does not match.
        for name in ("key.pem", "other.pem"):
            subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-out", os.path.join(directory, name)],
                           check=True, capture_output=True, timeout=60)
        subprocess.run(["openssl", "req", "-x509", "-key", os.path.join(directory, "other.pem"),
                        "-subj", "/CN=relay.test.example", "-days", "2",
                        "-out", os.path.join(directory, "cert.pem")],
                       check=True, capture_output=True, timeout=60)
        result = self.run_cli("config", "check", missing, check=False, data_dir=False)
        self.assertEqual(result.returncode, EX_CONFIG, result)
        self.assertIn(b"tls.certificate_file and tls.private_key_file: ", result.stderr)
        result = self.run_cli("serve", "--config", missing, check=False, data_dir=False)
        self.assertNotEqual(result.returncode, 0, result)
        self.assertIn(b"tls.certificate_file and tls.private_key_file: ", result.stderr)
        os.replace(os.path.join(directory, "other.pem"), os.path.join(directory, "key.pem"))
        self.assertIn(b": ok", self.run_cli("config", "check", missing, data_dir=False).stdout)
        token = self.write("no-token.toml", '[admin]\ntoken_file = "%s/token"\n' % directory)
        result = self.run_cli("config", "check", token, check=False, data_dir=False)
        self.assertEqual(result.returncode, EX_CONFIG, result)
        self.assertIn(b"admin.token_file: ", result.stderr)

    def test_config_check_as_another_user_notes_a_key_it_cannot_read(self):
        # The key is private to its owner (here root, for the server's user): an administrator
        # checking as another user (nobody) is told it was not checked, not that it is wrong.
        directory = tempfile.mkdtemp(prefix="facteur-cfg-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        key = os.path.join(directory, "asso.example.s1.pem")
        self.run_cli("dkim", "keygen", "--domain", "asso.example", "--selector", "s1",
                     "--algorithm", "ed25519", "--out", key)
        config = os.path.join(directory, "facteur.toml")
        with open(config, "w") as f:
            f.write('[[dkim.key]]\ndomain = "asso.example"\nselector = "s1"\n'
                    'algorithm = "ed25519-sha256"\nkey_file = "%s"\n' % key)
        os.chmod(config, 0o644)
        result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                 "--clear-groups", harness.BINARY, "config", "check", config],
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result)
        self.assertIn(b": ok", result.stdout)
        self.assertIn(b"not checked as uid", result.stderr)

    def test_keygen_as_root_gives_the_key_to_the_owner_of_the_data_directory(self):
        # The service runs as an unprivileged user owning its data directory; the administrator
        # runs keygen as root. The key must be readable by the service at the next reload, and
        # still by nobody else.
        directory = tempfile.mkdtemp(prefix="facteur-cfg-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o755)
        data_dir = os.path.join(directory, "data")
        os.mkdir(data_dir)
        shutil.chown(data_dir, "nobody", "nogroup")
        result = self.server.cli("dkim", "keygen", "--data-dir", data_dir, "--domain",
                                 "asso.example", "--selector", "s1", "--algorithm", "ed25519",
                                 data_dir=False)
        key = os.path.join(data_dir, "dkim", "asso.example.s1.pem")
        self.assertIn(b"(mode 0600, owner nobody)", result.stdout)
        nobody = pwd.getpwnam("nobody").pw_uid
        for path in (os.path.dirname(key), key):
            self.assertEqual(os.stat(path).st_uid, nobody, path)
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        config = os.path.join(directory, "facteur.toml")
        with open(config, "w") as f:
            f.write('data_dir = "%s"\n[[dkim.key]]\ndomain = "asso.example"\nselector = "s1"\n'
                    'algorithm = "ed25519-sha256"\nkey_file = "dkim/asso.example.s1.pem"\n'
                    % data_dir)
        os.chmod(config, 0o644)
        result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                                 "--clear-groups", harness.BINARY, "config", "check", config],
                                capture_output=True, timeout=60)
        self.assertEqual(result.returncode, 0, result)
        self.assertNotIn(b"not checked", result.stderr)  # nobody read the key: it is its own
        # A link of that user's toward a directory of root's does not get root's key given
        # away there: what counts is the directory the key lands in, not the link to it.
        rooted = os.path.join(directory, "rooted")
        os.mkdir(rooted)
        subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "ln", "-s", rooted, os.path.join(data_dir, "elsewhere")], check=True,
                       timeout=60)
        self.assertEqual(os.lstat(os.path.join(data_dir, "elsewhere")).st_uid, nobody)
        result = self.server.cli("dkim", "keygen", "--data-dir", data_dir, "--out",
                                 os.path.join(data_dir, "elsewhere", "k.pem"), "--domain",
                                 "asso.example", "--selector", "s3", data_dir=False)
        self.assertIn(b"owner root)", result.stdout)
        self.assertEqual(os.stat(os.path.join(rooted, "k.pem")).st_uid, 0)
        # A path climbing back out of the data directory reaches nothing of root's: keygen acts
        # as the data directory's owner there, who may not write in `directory` (root's).
        result = self.server.cli("dkim", "keygen", "--out",
                                 os.path.join(data_dir, "new", "..", "..", "k.pem"), "--domain",
                                 "asso.example", "--selector", "s4", check=False, data_dir=False)
        self.assertNotEqual(result.returncode, 0, result)
        self.assertIn(b"Permission denied", result.stderr)
        self.assertEqual(os.stat(directory).st_uid, 0)
        self.assertFalse(os.path.exists(os.path.join(directory, "k.pem")))
        # A data directory of root's keeps root's key.
        result = self.server.cli("dkim", "keygen", "--out", os.path.join(directory, "k", "r.pem"),
                                 "--domain", "asso.example", "--selector", "s2", data_dir=False)
        self.assertIn(b"owner root)", result.stdout)
        self.assertEqual(os.stat(os.path.join(directory, "k", "r.pem")).st_uid, 0)

    def test_version(self):
        result = self.run_cli("version", data_dir=False)
        self.assertRegex(result.stdout.decode(), r"^facteur \d+\.\d+\.\d+")
        result = self.run_cli("version", "--json", data_dir=False)
        self.assertRegex(json.loads(result.stdout)["version"], r"^\d+\.\d+\.\d+")

    def test_help_everywhere(self):
        for args in HELP:
            with self.subTest(" ".join(args)):
                result = self.run_cli(*args, check=False, data_dir=False)
                self.assertEqual(result.returncode, 0, result)
                self.assertIn(b"usage", result.stdout.lower())
        result = self.run_cli("frobnicate", check=False, data_dir=False)
        self.assertNotEqual(result.returncode, 0)

    def test_commands_without_config_read_the_one_facteur_config_names(self):
        # An administrator's shell (or a sendmail symlink) elsewhere than the data directory:
        # without --config, $FACTEUR_CONFIG says which configuration, hence which spool.
        elsewhere = tempfile.mkdtemp(prefix="facteur-cwd-")
        self.addCleanup(shutil.rmtree, elsewhere, True)
        env = dict(os.environ, FACTEUR_CONFIG=self.server.config_path)
        result = subprocess.run([os.path.abspath(harness.BINARY), "account", "add", "eve"], cwd=elsewhere,
                                env=env, input=(PASSWORD + "\n").encode(), capture_output=True,
                                timeout=60)
        self.assertEqual(result.returncode, 0, result)
        self.assertEqual([a["name"] for a in self.accounts()], ["eve"])
        self.assertEqual(os.listdir(elsewhere), [])  # no ./var spool made on the side
        # A file that is not there is an error naming it, not the embedded default.
        env["FACTEUR_CONFIG"] = os.path.join(elsewhere, "missing.toml")
        result = subprocess.run([os.path.abspath(harness.BINARY), "queue", "count"], cwd=elsewhere, env=env,
                                capture_output=True, timeout=60)
        self.assertNotEqual(result.returncode, 0, result)
        self.assertIn(b"missing.toml", result.stderr)

    # -- accounts, server stopped ---------------------------------------------------------------

    def test_account_lifecycle_with_the_server_stopped(self):
        self.run_cli("account", "add", "alice", input=(PASSWORD + "\n").encode())
        result = self.run_cli("account", "add", "alice", input=b"other\n", check=False)
        self.assertNotEqual(result.returncode, 0, "a second account with the same name")
        accounts = self.accounts()  # more fields (e.g. created_at) are fine
        self.assertEqual([(a["name"], a["grants"], a["suspended"]) for a in accounts],
                         [("alice", [], False)])
        self.run_cli("account", "grant", "alice", "alice@asso.example")
        self.run_cli("account", "grant", "alice", "@team.example")
        self.assertEqual(sorted(self.accounts()[0]["grants"]),
                         ["@team.example", "alice@asso.example"])
        result = self.run_cli("account", "grant", "alice", "not an address", check=False)
        self.assertNotEqual(result.returncode, 0)
        result = self.run_cli("account", "grant", "nobody", "x@asso.example", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.run_cli("account", "revoke", "alice", "@team.example")
        self.assertEqual(self.accounts()[0]["grants"], ["alice@asso.example"])
        self.run_cli("account", "add", "bob", input=b"bob password\n")
        self.assertEqual(sorted(a["name"] for a in self.accounts()), ["alice", "bob"])
        self.assertIn(b"alice", self.run_cli("account", "list").stdout)

        # The password is stored hashed: its clear text is in no file of the data dir.
        for directory, _, files in os.walk(self.server.data_dir):
            for name in files:
                with open(os.path.join(directory, name), "rb") as f:
                    self.assertNotIn(PASSWORD.encode(), f.read(), os.path.join(directory, name))

        self.run_cli("account", "passwd", "alice", input=b"new alice password\n")
        self.server.start()
        self.assertEqual(self.auth_plain("alice", PASSWORD)[:9], "535 5.7.8")
        self.assertEqual(self.auth_plain("alice", "new alice password")[:9], "235 2.7.0")
        self.assertEqual(self.server.stop(), 0)

        self.run_cli("account", "del", "bob")
        self.assertEqual([a["name"] for a in self.accounts()], ["alice"])
        result = self.run_cli("account", "del", "bob", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.run_cli("account", "del", "alice")
        self.assertEqual(self.accounts(), [])

    def auth_plain(self, user, password):
        """AUTH PLAIN over the Unix socket, where AUTH needs no TLS; returns the reply."""
        raw = self.server.raw_unix()
        try:
            self.assertEqual(raw.reply()[0], 220)
            self.assertEqual(raw.command("EHLO localhost\r\n")[0], 250)
            token = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
            return raw.command("AUTH PLAIN %s\r\n" % token)[1]
        finally:
            raw.close()

    # -- queue, server stopped ------------------------------------------------------------------

    def test_queue_commands_on_a_stopped_servers_data_dir(self):
        self.server.start()
        ids = []
        with self.server.smtp() as client:
            client.ehlo("client.example")
            for n in range(3):
                client.mail("app@asso.example")
                client.rcpt("r%d@example.com" % n)
                code, text = client.data(harness.simple_message(subject="q%d" % n))
                self.assertEqual(code, 250, text)
                ids.append(harness.queued_id(text.decode()))
        self.assertEqual(self.server.stop(), 0)

        # Only --data-dir, no --config: the defaults, with this data directory.
        def stopped(*args, check=True):
            return self.run_cli(*(list(args) + ["--data-dir", self.server.data_dir]),
                                check=check, data_dir=False)

        self.assertEqual(stopped("queue", "count").stdout.strip(), b"3")
        self.assertEqual(json.loads(stopped("queue", "count", "--json").stdout), {"count": 3})
        listed = json.loads(stopped("queue", "ls", "--json").stdout)["messages"]
        self.assertEqual(sorted(m["id"] for m in listed), sorted(ids))
        for entry in listed:
            for key in ("id", "sender", "recipients", "received_at", "attempts", "account",
                        "listener"):
                self.assertIn(key, entry)
            self.assertEqual(entry["attempts"], 0)
        limited = json.loads(stopped("queue", "ls", "--json", "--limit", "2").stdout)
        self.assertEqual(len(limited["messages"]), 2)
        self.assertEqual(limited["total"], 3)
        text = stopped("queue", "ls").stdout.decode()
        for message_id in ids:
            self.assertIn(message_id, text)
        self.assertNotIn("shown", text)
        # A limit that leaves messages out says so (it stopped silently at 100).
        cut = stopped("queue", "ls", "--limit", "2").stdout.decode().splitlines()
        self.assertEqual(len(cut), 3, cut)
        self.assertEqual(cut[-1], "... 2 of 3 messages shown; --limit N or --all for more")
        self.assertEqual(len(stopped("queue", "ls", "--all").stdout.decode().splitlines()), 3)
        shown = json.loads(stopped("queue", "show", ids[1], "--json").stdout)
        self.assertEqual((shown["id"], shown["sender"], shown["recipients"]),
                         (ids[1], "app@asso.example", ["r1@example.com"]))
        self.assertIn("size", shown)
        body = stopped("queue", "show", ids[1], "--body").stdout
        self.assertEqual(len(body), shown["size"])
        self.assertIn(b"Subject: q1", body)
        result = stopped("queue", "show", "0" * 26, check=False)
        self.assertNotEqual(result.returncode, 0)
        result = stopped("queue", "show", "not-an-id", check=False)
        self.assertNotEqual(result.returncode, 0)
        # Reading did not change anything.
        self.assertEqual(stopped("queue", "count").stdout.strip(), b"3")


if __name__ == "__main__":
    harness.main()
