"""smart_sink (bench/macro/smart_sink.cc) driven with smtplib and raw sockets on loopback: the
per-recipient behaviour is the one predicted from the documented hash (FNV-1a 64, seed xor,
splitmix64 finaliser, modulo 10,000) and its shares over 200 recipients are near the rule's;
a greylisted or rate-limited recipient is deferred again when retried too early, deferred anew
under another sender (the triplet), and accepted once the 1 s delay has passed; a rejected one
gets 550 5.1.1; pipelined commands get their replies in order; the end of the data is CRLF "."
CRLF only, even split over two segments, and stuffed dots are counted once; MAIL FROM:<> counts
as a DSN; --ratelimit_reply=421 closes the session; a non-loopback --listen is refused; and the
--stats file, the SIGUSR1 line and the exit line all hold the counters the client saw.
Run by hand: SMART_SINK=build/bench/macro/smart_sink python3 bench/macro/smart_sink_test.py"""

import os
import select
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import unittest

SINK = os.environ.get("SMART_SINK", "build/bench/macro/smart_sink")
RULE = "d1*.sink.test:accept=70,greylist=20,ratelimit=5,reject=5"
SHARES = {"accept": 7000, "greylist": 2000, "ratelimit": 500, "reject": 500}
ORDER = ("accept", "greylist", "ratelimit", "reject")
DELAY = 1.0  # seconds, --greylist_delay and --ratelimit_delay
MASK = (1 << 64) - 1
COUNTERS = ("sessions", "messages", "null_sender", "accepted", "greylisted", "ratelimited",
            "rejected", "delivered", "greylist_passed", "ratelimit_passed", "bytes", "errors")


def bucket(address, seed=0):
    h = 0xCBF29CE484222325
    for byte in address.lower().encode():
        h = ((h ^ byte) * 0x100000001B3) & MASK
    h ^= seed
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    h ^= h >> 31
    return h % 10000


def predicted(address, shares=SHARES):
    upper = 0
    b = bucket(address)
    for name in ORDER:
        upper += shares[name]
        if b < upper:
            return name
    raise AssertionError("shares do not sum to 10000")


def start_sink(*args):
    proc = subprocess.Popen([SINK, "--listen=127.0.0.1:0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 5)
    if not ready:
        proc.kill()
        raise AssertionError("smart_sink printed no port")
    return proc, int(proc.stdout.readline())


def read_line(proc, timeout=5):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def parse_counters(line):
    fields = dict(item.split("=") for item in line.split())
    return {name: int(fields[name]) for name in COUNTERS}


class SmartSinkTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="smart_sink_test.")
        cls.stats = os.path.join(cls.dir.name, "stats")
        cls.proc, cls.port = start_sink(f"--rule={RULE}", "--rule", "reject.sink.test:reject=100",
                                        "--default=accept=100", f"--greylist-delay={DELAY}",
                                        f"--ratelimit_delay={DELAY}", f"--stats={cls.stats}")
        cls.expected = dict.fromkeys(COUNTERS, 0)

    @classmethod
    def tearDownClass(cls):
        if cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait()
        cls.proc.stdout.close()
        cls.proc.stderr.close()
        cls.dir.cleanup()

    def smtp(self):
        self.expected["sessions"] += 1
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=5)
        client.ehlo("client.test")
        return client

    def rcpt(self, client, address):
        """RCPT TO and the counters it moves; returns the reply code and text."""
        code, text = client.rcpt(address)
        key = {250: "accepted", 450: "greylisted", 451: "ratelimited", 550: "rejected"}[code]
        self.expected[key] += 1
        return code, text.decode()

    def send_data(self, client, body, accepted):
        code, _ = client.data(body)
        self.assertEqual(code, 250)
        self.expected["messages"] += 1
        self.expected["delivered"] += accepted

    def test_1_extensions_and_shares(self):
        client = self.smtp()
        for keyword in ("pipelining", "8bitmime", "size", "enhancedstatuscodes"):
            self.assertTrue(client.has_extn(keyword), keyword)
        self.assertEqual(int(client.esmtp_features["size"]), 50 * 1024 * 1024)
        seen = dict.fromkeys(ORDER, 0)
        cls = type(self)
        cls.deferred = []  # (address, behaviour) of the greylisted and rate-limited recipients
        # 200 recipients over d10..d19.sink.test, 50 per message.
        for message in range(4):
            client.mail("bench@sender.test")
            accepted = 0
            for i in range(message * 50, message * 50 + 50):
                address = f"user{i}@d1{i % 10}.sink.test"
                code, text = self.rcpt(client, address)
                behaviour = {250: "accept", 450: "greylist", 451: "ratelimit", 550: "reject"}[code]
                self.assertEqual(behaviour, predicted(address), address)
                seen[behaviour] += 1
                if code == 250:
                    accepted += 1
                elif code == 450:
                    self.assertTrue(text.startswith("4.2.0 <" + address + ">: Recipient address "
                                                    "rejected: Greylisted, see http://postgrey"),
                                    text)
                    cls.deferred.append((address, behaviour))
                elif code == 451:
                    self.assertIn("4.7.1", text)
                    self.assertIn("try again later", text)
                    cls.deferred.append((address, behaviour))
                else:
                    self.assertTrue(text.startswith(f"5.1.1 <{address}>"), text)
                    self.assertIn("User unknown", text)
            self.send_data(client, b"Subject: shares\r\n\r\nbody\r\n", accepted)
            self.expected["bytes"] += len(b"Subject: shares\r\n\r\nbody\r\n")
        # 3 sigma of a binomial over 200 draws, plus one: a broken hash or share table fails.
        for behaviour, basis_points in SHARES.items():
            share = basis_points / 10000
            tolerance = 3 * (200 * share * (1 - share)) ** 0.5 + 1
            self.assertLessEqual(abs(seen[behaviour] - 200 * share), tolerance, seen)
        self.assertGreater(seen["ratelimit"], 0, seen)
        self.assertGreater(seen["greylist"], 0, seen)
        # Outside the rule: --default, every recipient accepted; reject.sink.test: all 550.
        client.mail("bench@sender.test")
        for i in range(20):
            self.assertEqual(self.rcpt(client, f"user{i}@other.test")[0], 250)
        for i in range(5):
            code, text = self.rcpt(client, f"user{i}@REJECT.sink.test")
            self.assertEqual(code, 550)
            self.assertTrue(text.startswith("5.1.1 "), text)
        self.send_data(client, b"x\r\n", 20)
        self.expected["bytes"] += 3
        client.quit()
        cls.deferred_at = time.monotonic()

    def test_2_retries_pass_after_the_delay(self):
        deferred = type(self).deferred
        self.assertTrue(deferred)
        client = self.smtp()
        # Too early: still deferred, for the same triplet.
        client.mail("bench@sender.test")
        for address, behaviour in deferred:
            code, _ = self.rcpt(client, address)
            self.assertEqual(code, 450 if behaviour == "greylist" else 451, address)
        client.rset()
        # The delay is counted from the first attempt.
        time.sleep(max(0.0, type(self).deferred_at + DELAY + 0.1 - time.monotonic()))
        # Another sender is another triplet: deferred anew.
        client.mail("other@sender.test")
        address, behaviour = deferred[0]
        self.assertEqual(self.rcpt(client, address)[0], 450 if behaviour == "greylist" else 451)
        client.rset()
        # The original triplets pass now, and the message is taken.
        client.mail("bench@sender.test")
        for address, behaviour in deferred:
            self.assertEqual(self.rcpt(client, address)[0], 250, address)
            self.expected[behaviour + "_passed"] += 1
        self.send_data(client, b"retried\r\n", len(deferred))
        self.expected["bytes"] += 9
        client.quit()

    def test_3_pipelining_and_data_framing(self):
        self.expected["sessions"] += 1
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            stream = sock.makefile("rb")

            def reply():
                lines = []
                while True:
                    line = stream.readline().decode()
                    lines.append(line)
                    if line[3:4] != "-":
                        return lines[0][:3], "".join(lines)

            self.assertEqual(reply()[0], "220")
            sock.sendall(b"EHLO raw.test\r\n")
            self.assertEqual(reply()[0], "250")
            # RFC 2920: MAIL, RCPT, RCPT, DATA in one write, replies in order.
            sock.sendall(b"MAIL FROM:<> SIZE=100\r\nRCPT TO:<a@other.test>\r\n"
                         b"RCPT TO:<b@reject.sink.test>\r\nDATA\r\n")
            self.assertEqual([reply()[0] for _ in range(4)], ["250", "250", "550", "354"])
            self.expected["accepted"] += 1
            self.expected["rejected"] += 1
            # "..stuffed" and ".." lose a dot; neither CRLF "." LF nor LF "." LF ends the data
            # (only CRLF "." CRLF does: RFC 5321 §4.1.1.4), the first loses its dot as a line
            # starting with one; the final CRLF "." CRLF arrives split over two segments.
            body = (b"Subject: t\r\n\r\n..stuffed\r\n..\r\n.\nbare\r\nline\n.\nstill data\r\n.")
            sock.sendall(body)
            time.sleep(0.1)
            sock.sendall(b"\r\nNOOP\r\n")
            code, text = reply()
            self.assertEqual(code, "250", text)
            self.assertIn("queued as", text)
            self.assertEqual(reply()[0], "250")  # the NOOP after the data
            self.expected["messages"] += 1
            self.expected["delivered"] += 1
            self.expected["null_sender"] += 1
            self.expected["bytes"] += len(
                b"Subject: t\r\n\r\n.stuffed\r\n.\r\n\nbare\r\nline\n.\nstill data\r\n")
            # Every recipient refused: DATA fails and no body follows (RFC 2920 §3.1).
            sock.sendall(b"MAIL FROM:<x@y.test>\r\nRCPT TO:<c@reject.sink.test>\r\nDATA\r\n")
            self.assertEqual([reply()[0] for _ in range(3)], ["250", "550", "554"])
            self.expected["rejected"] += 1
            sock.sendall(b"BOGUS\r\nQUIT\r\n")
            self.assertEqual(reply()[0], "500")
            self.expected["errors"] += 1
            self.assertEqual(reply()[0], "221")

    def test_4_ratelimit_421_closes_and_loopback_only(self):
        refused = subprocess.run([SINK, "--listen=0.0.0.0:0"], capture_output=True, timeout=5)
        self.assertEqual(refused.returncode, 2)
        self.assertIn(b"loopback", refused.stderr)
        proc, port = start_sink("--default=accept=50,ratelimit=50", "--ratelimit_reply=421")
        try:
            address = next(f"u{i}@any.test" for i in range(100)
                           if predicted(f"u{i}@any.test", {"accept": 5000, "greylist": 0,
                                                          "ratelimit": 5000, "reject": 0})
                           == "ratelimit")
            client = smtplib.SMTP("127.0.0.1", port, timeout=5)
            client.ehlo("client.test")
            client.mail("s@sender.test")
            try:
                code, text = client.rcpt(address)
                self.assertEqual(code, 421)
                self.assertIn(b"4.7.0", text)
            except smtplib.SMTPServerDisconnected:
                pass
            with self.assertRaises(smtplib.SMTPServerDisconnected):
                client.noop()
            client.close()
        finally:
            proc.terminate()
            self.assertEqual(proc.wait(5), 0)
            last_line = proc.stdout.read().strip().splitlines()[-1]
            proc.stdout.close()
            proc.stderr.close()
        self.assertEqual(parse_counters(last_line)["ratelimited"], 1)

    def test_5_counters(self):
        expected = self.expected
        deadline = time.monotonic() + 3
        file_counters = None
        while time.monotonic() < deadline:
            with open(self.stats) as f:
                file_counters = parse_counters(f.read())
            if file_counters == expected:
                break
            time.sleep(0.05)
        self.assertEqual(file_counters, expected)
        self.proc.send_signal(signal.SIGUSR1)
        self.assertEqual(parse_counters(read_line(self.proc)), expected)
        self.proc.terminate()
        self.assertEqual(self.proc.wait(5), 0)
        self.assertEqual(parse_counters(read_line(self.proc)), expected)


if __name__ == "__main__":
    unittest.main(verbosity=2)
