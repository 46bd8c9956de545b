"""bench/macro/pss_peak on real processes: a root whose child touches 48 MiB shows a peak of at
least that (the child is found through its parent), a sibling tree holding 96 MiB is not
counted, the figure stays at the peak once the child has freed its memory, the sampler ends by
itself when every root has gone and at SIGTERM, and bad arguments get the usage and status 2.
Run by hand: python3 bench/macro/pss_peak_test.py"""

import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

SAMPLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pss_peak")
MIB = 1024 * 1024

# A parent that starts one child; the child touches N MiB, says "ready", holds them until its
# stdin has a line, frees them, says "freed" and waits for a second line before it exits.
TREE = r"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", '''
import sys
block = bytearray(int(sys.argv[1]) * 1024 * 1024)
for i in range(0, len(block), 4096): block[i] = 1
print("ready", flush=True); sys.stdin.readline()
del block
print("freed", flush=True); sys.stdin.readline()
''', sys.argv[1]], stdin=sys.stdin, stdout=sys.stdout)
sys.exit(child.wait())
"""


def start_tree(mib):
    tree = subprocess.Popen([sys.executable, "-c", TREE, str(mib)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert tree.stdout.readline().strip() == "ready"
    return tree


def read_kib(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except FileNotFoundError:  # the sampler has not started yet
        return 0


def wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class PssPeakTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.out = os.path.join(self.dir.name, "peak_kb")
        self.trees = []

    def tearDown(self):
        for tree in self.trees:
            if tree.poll() is None:
                os.killpg(tree.pid, signal.SIGKILL)  # the child too
            tree.wait()
            tree.stdin.close()
            tree.stdout.close()
        self.dir.cleanup()

    def sampler(self, *roots):
        return subprocess.Popen([sys.executable, SAMPLER, "--interval=0.05", self.out,
                                 *[str(r) for r in roots]])

    def test_counts_the_descendants_and_keeps_the_peak(self):
        watched = start_tree(48)
        other = start_tree(96)  # not a root: must not be counted
        self.trees += [watched, other]
        sampler = self.sampler(watched.pid)
        try:
            # Both trees were alive before the sampler started: every sample saw them.
            self.assertTrue(wait_for(lambda: read_kib(self.out) >= 48 * 1024),
                            f"peak {read_kib(self.out)} KiB, want at least 48 MiB")
            peak = read_kib(self.out)
            self.assertLess(peak, 96 * 1024, "the other tree's 96 MiB were counted")
            watched.stdin.write("free\n")
            watched.stdin.flush()
            self.assertEqual(watched.stdout.readline().strip(), "freed")
            # The sampler runs on its own real-time interval (0.05 s here) and the file only
            # changes when the peak grows: give it six samples after the free.
            time.sleep(0.3)
            self.assertGreaterEqual(read_kib(self.out), peak, "the peak went down")
            watched.stdin.write("exit\n")
            watched.stdin.flush()
            watched.wait(timeout=5)
            # Every root gone: the sampler ends by itself.
            self.assertEqual(sampler.wait(timeout=5), 0)
        finally:
            sampler.kill()
            sampler.wait()

    def test_stops_at_sigterm(self):
        tree = start_tree(8)
        self.trees.append(tree)
        sampler = self.sampler(tree.pid)
        try:
            self.assertTrue(wait_for(lambda: read_kib(self.out) > 0))
            sampler.send_signal(signal.SIGTERM)
            self.assertEqual(sampler.wait(timeout=5), 0)
        finally:
            sampler.kill()
            sampler.wait()

    def test_refuses_bad_arguments(self):
        for args in ([], [self.out], [self.out, "not-a-pid"], ["--interval=0", self.out, "1"]):
            run = subprocess.run([sys.executable, SAMPLER, *args], capture_output=True, text=True,
                                 timeout=10)
            self.assertEqual(run.returncode, 2, args)
            self.assertIn("Usage: pss_peak", run.stderr, args)


if __name__ == "__main__":
    unittest.main()
