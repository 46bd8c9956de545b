"""Disk full (issue #2 point 8): with the spool on a small tmpfs, submissions eventually get
452 4.3.1, the server stays up (other sessions, the greeting and /healthz answer), and once
space is freed new messages are accepted again."""

import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# The spool resumes writes after a full disk only once the free space covers its memtables plus
# a 64 MiB spare (queue/spool.cc, kResumeSpareBytes): a flush that hits the full disk again
# would make the error fatal. So: about 32 MiB for messages (memtables of at most that size),
# and freeing the 128 MiB filler leaves more than 32 + 64 MiB.
TMPFS_SIZE = "160m"
FILLER_BYTES = 128 * 1024 * 1024
MESSAGE_BODY_LINES = 1300  # 1300 * 78 octets: about 100 KB
MAX_SUBMISSIONS = 800      # 800 * 100 KB is far more than the tmpfs holds after the filler
MAX_RETRIES_AFTER_FREEING = 40


def big_message(n):
    line = ("%06d " % n) + "y" * 69 + "\r\n"
    return harness.simple_message(subject="big %d" % n, body=line * MESSAGE_BODY_LINES)


class DiskFull452AndRecoveryTest(harness.unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            raise harness.unittest.SkipTest("mounting a tmpfs needs root")
        self.mount_point = tempfile.mkdtemp(prefix="facteur-tmpfs-")
        self.addCleanup(os.rmdir, self.mount_point)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + TMPFS_SIZE, "tmpfs",
                                 self.mount_point], capture_output=True, timeout=30)
        if result.returncode != 0:
            raise harness.unittest.SkipTest("cannot mount a tmpfs: %s" %
                                            result.stderr.decode().strip())
        self.addCleanup(subprocess.run, ["umount", "-l", self.mount_point], timeout=30)
        # The spool goes on the tmpfs; the log and the configuration stay on the normal disk,
        # so that what fills up is the queue and nothing else.
        spool = os.path.join(self.mount_point, "spool")
        self.server = harness.Facteur(extra="[spool]\npath = %s\n" % harness.toml_string(spool))
        self.addCleanup(self.server.cleanup)
        self.filler = os.path.join(self.mount_point, "filler")
        with open(self.filler, "wb") as f:
            for _ in range(FILLER_BYTES // (1 << 20)):
                f.write(b"\xff" * (1 << 20))
        self.server.start()
        self.assertEqual(os.path.realpath(self.server.endpoints["spool"]), os.path.realpath(spool))

    def submit(self, client, n):
        code, text = client.mail("app@asso.example")
        if code != 250:
            return code, text.decode()
        code, text = client.rcpt("bob@example.com")
        if code != 250:
            return code, text.decode()
        try:
            code, text = client.data(big_message(n))
        except harness.smtplib.SMTPDataError as error:
            code, text = error.smtp_code, error.smtp_error
        return code, text.decode()

    def assert_still_serving(self, bystander):
        code, text = bystander.noop()
        self.assertEqual((code, text[:5]), (250, b"2.0.0"), text)
        raw = self.server.raw()
        try:
            self.assertEqual(raw.reply(), (220, "220 relay.test.example ESMTP facteur\r\n"))
        finally:
            raw.close()
        with urllib.request.urlopen(self.server.admin_url("/healthz"), timeout=10) as response:
            self.assertEqual(response.status, 200)
        self.assertIsNone(self.server.process.poll(), "the server exited:\n" + self.server.log())

    def test_disk_full_is_452_then_recovers(self):
        bystander = self.server.smtp()
        self.addCleanup(bystander.close)
        bystander.ehlo("bystander.example")
        client = self.server.smtp(timeout=30)
        self.addCleanup(client.close)
        client.ehlo("client.example")

        accepted, refusal = 0, None
        for n in range(MAX_SUBMISSIONS):
            code, text = self.submit(client, n)
            if code == 250:
                accepted += 1
                continue
            refusal = (code, text)
            break
        self.assertIsNotNone(refusal, "%d messages of 100 KB fitted in %s" % (
            accepted, TMPFS_SIZE))
        self.assertEqual(refusal[0], 452, refusal)
        self.assertTrue(refusal[1].startswith("4.3.1"), refusal)
        self.assert_still_serving(bystander)
        code, text = client.rset()  # the refused session itself goes on
        self.assertEqual(code, 250, text)

        os.unlink(self.filler)
        # The store may need a moment to notice the space (RocksDB recovers from a no-space
        # error in the background); a bounded number of tries, a short wait between them.
        last = None
        for attempt in range(MAX_RETRIES_AFTER_FREEING):
            try:
                last = self.submit(client, 100000 + attempt)
            except (OSError, harness.smtplib.SMTPServerDisconnected):
                client = self.server.smtp(timeout=30)
                client.ehlo("client.example")
                last = self.submit(client, 100000 + attempt)
            if last[0] == 250:
                break
            self.assertEqual(last[0] // 100, 4, last)  # never a permanent refusal
            time.sleep(0.25)
        self.assertEqual(last[0], 250, "still refused after freeing %d bytes: %r" % (
            FILLER_BYTES, last))
        self.assert_still_serving(bystander)
        self.assertGreaterEqual(int(self.server.cli("queue", "count").stdout), accepted + 1)


if __name__ == "__main__":
    harness.main()
