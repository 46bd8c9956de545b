"""The admin listener (issue #6 points 4 and 5): with [admin] token_file, every /api/ request
needs "Authorization: Bearer TOKEN" (401 without it or with another), while /metrics, /healthz
and /readyz stay open; the CLI reads the same file and gets through; a token file that group or
others may read stops the server at start, naming the file. /readyz answers 200 once the relay
runs."""

import os
import subprocess
import unittest
import urllib.error
import urllib.request

import harness

TOKEN = "s3cret-admin-token-0123456789"


def get(url, token=None):
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class AdminTokenAndReadyzTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = harness.Facteur()
        # The harness writes its own [admin] table: the token file goes in it.
        with open(cls.server.config_path) as f:
            text = f.read()
        with open(cls.server.config_path, "w") as f:
            f.write(text.replace('[admin]\n', '[admin]\ntoken_file = "admin.token"\n', 1))
        cls.server.write_file("admin.token", TOKEN + "\n")
        os.chmod(os.path.join(cls.server.data_dir, "admin.token"), 0o600)
        cls.server.start_or(cls.tearDownClass)

    @classmethod
    def tearDownClass(cls):
        cls.server.cleanup()

    def test_api_needs_the_token_and_the_rest_is_open(self):
        url = self.server.admin_url
        self.assertEqual(get(url("/api/queue/count"))[0], 401)
        self.assertEqual(get(url("/api/queue/count"), token="wrong")[0], 401)
        self.assertEqual(get(url("/api/queue/count"), token=TOKEN)[0], 200)
        self.assertEqual(get(url("/metrics"))[0], 200)
        self.assertEqual(get(url("/healthz")), (200, "ok\n"))
        self.assertEqual(get(url("/readyz")), (200, "ready\n"))
        # The CLI reads the token file of the configuration (account commands go through the
        # admin API while the server runs) ...
        self.server.add_account("alice", "alice password")
        result = self.server.cli("account", "list", check=False)
        self.assertEqual(result.returncode, 0, result)
        self.assertIn(b"alice", result.stdout)
        # ... and without the right token it is refused.
        token_path = os.path.join(self.server.data_dir, "admin.token")
        with open(token_path, "w") as f:
            f.write("not-the-token\n")
        try:
            result = self.server.cli("account", "list", check=False)
            self.assertNotEqual(result.returncode, 0, result)
            self.assertIn(b"bearer token", result.stderr)
        finally:
            with open(token_path, "w") as f:
                f.write(TOKEN + "\n")

    def test_a_token_file_others_can_read_is_refused(self):
        other = harness.Facteur()
        try:
            with open(other.config_path) as f:
                text = f.read()
            with open(other.config_path, "w") as f:
                f.write(text.replace('[admin]\n', '[admin]\ntoken_file = "admin.token"\n', 1))
            other.write_file("admin.token", TOKEN + "\n")
            os.chmod(os.path.join(other.data_dir, "admin.token"), 0o644)
            result = subprocess.run([harness.BINARY, "serve", "--config", other.config_path],
                                    capture_output=True, timeout=30)
            self.assertNotEqual(result.returncode, 0)
            self.assertIn(b"admin.token", result.stderr + result.stdout)
            self.assertIn(b"chmod 600", result.stderr + result.stdout)
        finally:
            other.cleanup()


if __name__ == "__main__":
    harness.main()
