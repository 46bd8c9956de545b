"""A real DNS server for integration scenarios: Debian's dnsmasq on loopback.

The server is authoritative (--auth-server/--auth-zone) for the scenario's zones on 127.0.0.1
and a free port, with the records the scenario gives, so that facteur can be pointed at it
(`[dns] nameservers = [server.nameserver]`). The C++ twin is tests/support/dns_server.h. What
dnsmasq does, as verified with dnsmasq 2.90:

  - authoritative mode works only on an address of an interface, hence 127.0.0.1;
  - every record, and the SOA whose MINIMUM is the negative TTL, gets the TTL `ttl`
    (--auth-ttl); per-record TTLs are ignored in this mode;
  - a name under a zone without any record is NXDOMAIN; a name with records of other types only
    is NODATA; both carry the zone's SOA in the authority section (RFC 2308);
  - a name outside every zone is REFUSED;
  - answers above 512 bytes come truncated over UDP and whole over TCP;
  - --log-queries lines ("auth[MX] name from 127.0.0.1") are written before the answer is sent,
    so query_count() is exact once an answer has arrived.

Usage:

    with DnsServer(mx=[("example.test", "mx.example.test", 10)],
                   addresses=[("mx.example.test", "127.0.0.1")],
                   null_mx=["nomail.test"]) as dns:
        ... dns.nameserver ...   # "127.0.0.1:PORT"

Run this file to check it against the installed dnsmasq.
"""

import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

DNSMASQ = "/usr/sbin/dnsmasq"

# The bounded wait for dnsmasq to answer, or to exit.
START_TIMEOUT = 10.0
START_ATTEMPTS = 5


def _free_port():
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise OSError("no free port on 127.0.0.1")


def _query(name, rrtype, query_id=0x5EED):
    """A DNS query (RFC 1035 §4.1) for `name` with numeric type `rrtype`, recursion not asked."""
    labels = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label)
    return struct.pack("!HHHHHH", query_id, 0, 1, 0, 0, 0) + labels + b"\0" + struct.pack(
        "!HH", rrtype, 1)


def _character_strings(strings):
    """TXT RDATA: each string split into <character-string>s of at most 255 bytes."""
    rdata = b""
    for text in strings:
        data = text.encode() if isinstance(text, str) else text
        chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        for chunk in chunks:
            rdata += bytes([len(chunk)]) + chunk
    return rdata


class DnsServer:
    """One dnsmasq process serving the given records.

    mx: (domain, host, preference) tuples. null_mx: domains publishing RFC 7505 "0 .".
    addresses: (name, ip) tuples, A or AAAA from the address's form. txt: (name, [strings]).
    cnames: (alias, target). raw: (name, type number, hex RDATA). zones: the authoritative zones
    every name must lie in. ttl: seconds, for every record and for negative answers.
    """

    def __init__(self, mx=(), null_mx=(), addresses=(), txt=(), cnames=(), raw=(),
                 zones=("test",), ttl=600):
        self.zones = list(zones)
        self.ttl = int(ttl)
        self.records = []  # dnsmasq options, one record each
        for domain, host, preference in mx:
            self.add_mx(domain, host, preference)
        for domain in null_mx:
            self.add_null_mx(domain)
        for name, ip in addresses:
            self.add_address(name, ip)
        for name, strings in txt:
            self.add_txt(name, *([strings] if isinstance(strings, (str, bytes)) else strings))
        for alias, target in cnames:
            self.add_cname(alias, target)
        for name, rrtype, hex_rdata in raw:
            self.add_record(name, rrtype, hex_rdata)
        self.directory = tempfile.mkdtemp(prefix="facteur-dnsmasq-")
        self.log_path = os.path.join(self.directory, "dnsmasq.log")
        self.process = None
        self.port = None

    # -- records, before start() -----------------------------------------------------------

    def add_mx(self, domain, host, preference=10):
        self.records.append("--mx-host=%s,%s,%d" % (domain, host, preference))
        return self

    def add_null_mx(self, domain):
        # RDATA: preference 0, then the root name (one zero byte).
        return self.add_record(domain, 15, "000000")

    def add_address(self, name, ip):
        self.records.append("--host-record=%s,%s" % (name, ip))
        return self

    def add_txt(self, name, *strings):
        # Through --dns-rr: dnsmasq reads quotes only in a configuration file, so a comma
        # inside a string could not be given with --txt-record on the command line.
        return self.add_record(name, 16, _character_strings(strings).hex())

    def add_cname(self, alias, target):
        self.records.append("--cname=%s,%s" % (alias, target))
        return self

    def add_record(self, name, rrtype, hex_rdata):
        self.records.append("--dns-rr=%s,%d,%s" % (name, rrtype, hex_rdata))
        return self

    # -- process control ------------------------------------------------------------------

    @property
    def address(self):
        return "127.0.0.1"

    @property
    def nameserver(self):
        """ "127.0.0.1:PORT", as facteur's configuration takes it."""
        return "%s:%d" % (self.address, self.port)

    def command(self):
        return [
            DNSMASQ,
            "--keep-in-foreground",
            "--conf-file=/dev/null",  # whatever /etc holds
            "--pid-file=",            # none: several servers run at once
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--port=%d" % self.port,
            "--auth-server=ns.%s,127.0.0.1" % self.zones[0],
            "--auth-ttl=%d" % self.ttl,
            "--log-queries",
            "--log-facility=-",
        ] + ["--auth-zone=%s" % zone for zone in self.zones] + self.records

    def start(self):
        for _ in range(START_ATTEMPTS):
            if self._start_once():
                return self
        raise AssertionError("dnsmasq could not bind a free port:\n%s" % self.log())

    def _start_once(self):
        """True once dnsmasq answers; False if its port was taken in between (try another)."""
        self.port = _free_port()
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                if "Address already in use" in self.log():
                    return False
                raise AssertionError("dnsmasq exited at start:\n%s\ncommand: %s" % (
                    self.log(), " ".join(self.command())))
            if self._answers():
                return True
        self.stop()
        raise AssertionError("dnsmasq did not answer within %ss:\n%s" % (START_TIMEOUT, self.log()))

    def _answers(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(0.05)
            try:
                probe.connect((self.address, self.port))
                probe.send(_query(self.zones[0], 6))  # SOA
                reply = probe.recv(512)
            except OSError:  # refused (not bound yet) or timed out
                return False
        # QR set: a response. Without this check, a probe socket that the kernel happened to
        # give the server's own (still free) port would read its own query as the answer.
        return len(reply) >= 12 and reply[:2] == b"\x5e\xed" and reply[2] & 0x80

    def stop(self):
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # -- what it saw ----------------------------------------------------------------------

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def query_count(self, rrtype, name):
        """Queries received for (`rrtype`, `name`), e.g. query_count("MX", "example.test")."""
        needles = (" auth[%s] %s from " % (rrtype, name), " query[%s] %s from " % (rrtype, name))
        return sum(1 for line in self.log().splitlines() if any(n in line for n in needles))


def _self_test():
    """Starts a server with one record of each kind and checks the answers byte by byte."""
    with DnsServer(mx=[("example.test", "mx.example.test", 10)],
                   null_mx=["nomail.test"],
                   addresses=[("mx.example.test", "127.0.0.1"), ("mx.example.test", "::1")],
                   txt=[("example.test", ["v=spf1, with a comma", "x" * 300])],
                   cnames=[("www.example.test", "mx.example.test")]) as dns:
        def ask(name, rrtype):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.connect((dns.address, dns.port))
                s.send(_query(name, rrtype, 7))
                reply = s.recv(4096)
            flags, _, ancount, nscount = struct.unpack("!HHHH", reply[2:10])
            return flags & 0xF, ancount, nscount, reply
        assert ask("example.test", 15)[:2] == (0, 1), "MX"
        rcode, ancount, _, reply = ask("nomail.test", 15)
        assert (rcode, ancount) == (0, 1) and b"\x00\x03\x00\x00\x00" in reply, "null MX"
        assert ask("missing.example.test", 15)[:3] == (3, 0, 1), "NXDOMAIN with SOA"
        assert ask("mx.example.test", 15)[:3] == (0, 0, 1), "NODATA with SOA"
        assert ask("mx.example.test", 1)[:2] == (0, 1), "A"
        assert ask("mx.example.test", 28)[:2] == (0, 1), "AAAA"
        assert ask("www.example.test", 1)[:2] == (0, 2), "CNAME then A"
        rcode, ancount, _, reply = ask("example.test", 16)
        assert b"v=spf1, with a comma" in reply and b"x" * 255 in reply, "TXT"
        assert ask("example.org", 1)[0] == 5, "REFUSED outside the zones"
        assert dns.query_count("MX", "example.test") == 1, dns.log()
    print("dns_server.py: ok")


if __name__ == "__main__":
    _self_test()
