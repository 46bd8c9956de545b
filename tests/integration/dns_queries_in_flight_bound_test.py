"""[dns] max_queries_in_flight bounds the whole relay's DNS queries on the wire, not each I/O
thread's: a campaign to many new domains must not flood the nameserver (a default Linux UDP
socket buffer holds about 250 small datagrams; past that, queries are dropped and each costs
its lookup a retry after a third of [dns] timeout). The nameserver here is a real UDP socket
on loopback that records every query and never answers, so each query holds its slot; the
relay runs two I/O threads, each with its own resolver, and a bound of 4 gives each 2."""

import os
import socket
import threading
import time
import unittest

import harness

BOUND = 4
DOMAINS = 24


class SilentNameserver:
    """Receives DNS queries on 127.0.0.1 and records their names; answers none."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.nameserver = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.names = []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @staticmethod
    def _question_name(packet):
        # RFC 1035 §4.1: a 12-byte header, then the question's name as length-prefixed labels.
        labels, at = [], 12
        while at < len(packet) and packet[at] != 0:
            length = packet[at]
            labels.append(packet[at + 1:at + 1 + length].decode("ascii", "replace"))
            at += 1 + length
        return ".".join(labels)

    def _serve(self):
        while self.running:
            try:
                packet, _ = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.names.append(self._question_name(packet))

    def received(self):
        with self.lock:
            return list(self.names)

    def stop(self):
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


class DnsQueriesInFlightBoundTest(unittest.TestCase):
    def setUp(self):
        self.dns = SilentNameserver()
        # One try of 30 s: no query is retried within the test, so every query seen is a new
        # one that found a free slot.
        extra = "\n".join([
            "[dns]", "nameservers = [%s]" % harness.toml_string(self.dns.nameserver),
            'timeout = "30s"', "attempts = 1", "max_queries_in_flight = %d" % BOUND,
            "[delivery]", "validate_recipient_domains = false"])
        self.server = harness.Facteur(extra=extra, io_threads=2)
        self.server.start_or(self.cleanup)

    def cleanup(self):
        self.server.cleanup()
        self.dns.stop()

    def tearDown(self):
        self.cleanup()

    def test_the_bound_is_for_the_relay_shared_among_its_io_threads(self):
        recipients = ["user@d%d.burst.test" % i for i in range(DOMAINS)]
        with self.server.smtp() as client:
            client.sendmail("app@asso.example", recipients,
                            harness.simple_message(to=recipients[0], subject="burst"))
        # The domains are spread over both threads' resolvers (by a hash of the name): each
        # fills its 2 slots with MX queries, and the other 20 lookups wait.
        harness.wait_until(lambda: len(self.dns.received()) >= BOUND, timeout=20,
                           what="%d DNS queries" % BOUND)
        time.sleep(1.5)  # room for any query beyond the bound to arrive
        names = self.dns.received()
        self.assertEqual(len(names), BOUND, names)
        self.assertEqual(len(set(names)), BOUND, names)
        self.assertTrue(all(name.endswith(".burst.test") for name in names), names)


if __name__ == "__main__":
    harness.main()
