"""deploy/systemd/facteur.service is a unit systemd accepts as written (issue #6 point 6):
`systemd-analyze verify` on it, with ExecStart pointing at the binary under test, reports
nothing — no unknown key, no unknown system call in the filter, no missing executable. (This
machine runs no systemd as PID 1, so the unit is verified, not started.)"""

import os
import shutil
import subprocess
import tempfile
import unittest

import harness

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
UNIT = os.path.join(REPO, "deploy", "systemd", "facteur.service")


class SystemdUnitVerifiesTest(unittest.TestCase):
    def test_verify_reports_nothing(self):
        with open(UNIT) as f:
            text = f.read()
        self.assertIn("ExecStart=/usr/local/bin/facteur serve", text)
        directory = tempfile.mkdtemp(prefix="facteur-unit-")
        try:
            unit = os.path.join(directory, "facteur.service")
            with open(unit, "w") as f:
                f.write(text.replace("/usr/local/bin/facteur", os.path.abspath(harness.BINARY)))
            result = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True,
                                    timeout=60)
            self.assertEqual(result.returncode, 0, result)
            self.assertEqual(result.stderr.decode().strip(), "", result.stderr.decode())
            # The check can fail: a misspelt key is reported.
            with open(unit, "w") as f:
                f.write(text.replace("/usr/local/bin/facteur", os.path.abspath(harness.BINARY))
                        .replace("ProtectHome=yes", "ProtectHomme=yes"))
            result = subprocess.run(["systemd-analyze", "verify", unit], capture_output=True,
                                    timeout=60)
            self.assertIn("ProtectHomme", result.stderr.decode())
        finally:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    harness.main()
