"""A private Postfix receiving MX on loopback, for delivery scenarios (issue #3 point 9).

PostfixMx runs Debian's Postfix (3.4 or later) from a temporary directory of its own: its own
main.cf and master.cf, queue and data directories, Maildirs and log file. It never reads or
writes /etc/postfix's configuration nor the system instance's queue, listens only on the
loopback address:port it is given, accepts mail for `domains` only (no relaying, no outbound
SMTP, no DNS) and delivers every message into a Maildir through virtual(8), where messages()
reads them back. Several instances run side by side on different 127.0.0.x addresses.

The master process runs in the foreground as our child (`master -s`, what `postfix start-fg`
runs), so stopping is a signal, and a watchdog kills it if the test process dies first.
Postfix's master must run as root (it drops to the postfix user for its daemons): when not
root, start() raises unittest.SkipTest.

With postgrey_delay=N the instance greylists like a real MX: it runs its own Debian postgrey
(`postgrey --delay=N`, on a unix socket and a database in its directory, empty whitelists, no
client auto-whitelisting) as a check_policy_service after reject_unlisted_recipient. The first
RCPT of a triplet (client /24, sender, recipient) gets "450 4.2.0 <rcpt>: Recipient address
rejected: Greylisted, see http://postgrey.schweikert.ch/help/<domain>.html"; a retry N seconds
later (postgrey counts whole seconds of real time) is accepted, and the delivered message gets
postgrey's "X-Greylist: delayed N seconds by postgrey-..." field on top, which Delivery.greylist
holds (Delivery.message leaves it out).

    with PostfixMx(["dest.example"], address="127.0.0.2", valid_users=["bob"]) as mx:
        ... deliver to mx.address:mx.port ...
        mx.wait_for_messages(1)
        recipient, message = mx.messages()[0]
"""

import collections
import glob
import grp
import os
import pty
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

POSTFIX = "/usr/sbin/postfix"
POSTGREY = "/usr/sbin/postgrey"
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin"
MASTER = os.path.join(DAEMON_DIRECTORY, "master")
OPENSSL = "/usr/bin/openssl"

# Bounded waits for Postfix to come up, to go down and to deliver.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# Every instance's directory starts with this, so leftovers of a killed run can be found.
DIR_PREFIX = "postfix-mx-"

# Waits for EOF on stdin, then SIGKILLs the process group named by argv[1].
_WATCHDOG = """
import os, signal, sys
sys.stdin.buffer.read()
try:
    os.killpg(int(sys.argv[1]), signal.SIGKILL)
except OSError:
    pass
"""

# A Postfix log line reporting a fatal error or a panic.
_FATAL = re.compile(r"^\S+ +\d+ [\d:]+ \S+ postfix/\S+: (fatal|panic): ", re.M)

# The headers delivery prepends to what the client sent: virtual(8) writes Return-Path,
# X-Original-To and Delivered-To above the Received: field smtpd(8) added.
_DELIVERY_FIELDS = (b"return-path", b"x-original-to", b"delivered-to")
# What postgrey's PREPEND action adds when a greylisted triplet passes.
_GREYLIST_FIELD = re.compile(rb"^X-Greylist: delayed \d+ seconds by postgrey-", re.I)

# One delivered message. recipient: the envelope recipient (Delivered-To:, as the client
# spelt it, case included); original_recipient: X-Original-To: (the same here: no aliases);
# sender: MAIL FROM (Return-Path:, "" for the null sender); message: the bytes the client sent
# after DATA, without what this Postfix prepended, CRLF line ends (Postfix stores lines, so a
# bare CR or LF is not kept as such); raw: the Maildir file as written (LF line ends);
# received: the Received: field this Postfix added (shows the client's EHLO name and address);
# greylist: the X-Greylist: field postgrey had added ("" when the message was not delayed).
Delivery = collections.namedtuple(
    "Delivery", "recipient original_recipient sender message raw received path greylist",
    defaults=("",))


class PostfixMx:
    """One Postfix instance receiving mail for `domains` on address:port.

    valid_users: None accepts every local part of every domain; a list of local parts (or of
    full addresses, for one domain only) accepts only those, and any other recipient in the
    domains gets "550 5.1.1 ... User unknown in virtual mailbox table" at RCPT.
    tls: offer STARTTLS (smtpd_tls_security_level = may) with a self-signed certificate for
    `hostname`, made with the openssl CLI. extra: main.cf parameters that override ours
    (e.g. {"message_size_limit": "100000"}).
    postgrey_delay: None (no greylisting) or the seconds postgrey makes a new triplet wait
    (see the module docstring); postgrey_text: its --greylist-text (None: postgrey's own).
    """

    def __init__(self, domains, address="127.0.0.1", port=0, tls=False, valid_users=None,
                 hostname=None, extra=None, postgrey_delay=None, postgrey_text=None):
        if isinstance(domains, str):
            domains = [domains]
        self.domains = [d.lower() for d in domains]
        if not self.domains:
            raise ValueError("PostfixMx needs at least one domain")
        self.address = address
        self.requested_port = port
        self.port = port
        self.tls = tls
        self.valid_users = valid_users
        self.hostname = hostname or "mx.%s" % self.domains[0]
        self.extra = dict(extra or {})
        self.postgrey_delay = postgrey_delay
        self.postgrey_text = postgrey_text
        self.postgrey = None
        self.postgrey_watchdog = None
        self.mail_owner = "postfix"
        self.process = None
        self.watchdog = None
        self.base = None
        self.start_seconds = None
        self.stop_seconds = None

    # -- paths ----------------------------------------------------------------------------

    def _path(self, *parts):
        return os.path.join(self.base, *parts)

    @property
    def config_directory(self):
        return self._path("etc")

    @property
    def mail_directory(self):
        return self._path("mail")

    @property
    def log_path(self):
        return self._path("postfix.log")

    @property
    def cert_path(self):
        return self._path("etc", "cert.pem")

    @property
    def postgrey_socket(self):
        return self._path("postgrey.sock")

    # -- process control ------------------------------------------------------------------

    def start(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("Postfix's master daemon must run as root")
        for program in (POSTFIX, MASTER):
            # deploy/setup.sh installs postfix: its absence is a broken setup, not a skip.
            assert os.access(program, os.X_OK), "%s is not installed" % program
        remove_leftovers()
        began = time.monotonic()
        self.base = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=parent_directory())
        try:
            # Postfix daemons run as the postfix user and must reach the queue through here.
            os.chmod(self.base, 0o755)
            with open(self._path("owner.pid"), "w") as f:
                f.write("%d\n" % os.getpid())
            self._write_files()
            self._make_queue()
            if self.postgrey_delay is not None:
                self._start_postgrey()
            # An explicit port is used as given; a free one is picked otherwise. Another
            # process may take it between our probe and master's bind: try a few.
            for _ in range(5):
                if not self.requested_port:
                    self.port = free_port(self.address)
                self._write_master_cf()
                if self._run_master():
                    self.start_seconds = time.monotonic() - began
                    return self
                in_use = port_in_use(self.address, self.port)
                if self.requested_port or not in_use:
                    break
            # master reports early failures only to syslog, which test machines lack: say
            # what we can find out ourselves.
            if in_use:
                why = "%s:%d is in use by another process" % (self.address, self.port)
            else:
                code, output = self.postfix_check()
                why = "`postfix check` exited %d:\n%s" % (code, output)
            raise AssertionError("Postfix did not come up on %s:%d: %s\n%s" % (
                self.address, self.port, why, self.log()[-20000:]))
        except BaseException:
            self.cleanup()
            raise

    def _run_master(self):
        """Starts master; True once the port greets with our banner, False if it could not."""
        with open(self._path("master.stderr"), "ab") as stderr:  # the child keeps a copy
            self.process = subprocess.Popen(
                [MASTER, "-c", self.config_directory, "-s"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        # master makes itself a session and process group leader: its group is the daemons.
        # If this test process dies without stopping it, the watchdog reads EOF on its stdin
        # (our end closes with us) and kills that group. PR_SET_PDEATHSIG would not do: the
        # kernel clears it when master changes its effective uid.
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.process.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            # Another server on that port would greet too: ours names its directory.
            if self.greets() and self.process.poll() is None:
                return True
            # A daemon that dies at startup (a bad map, an unreadable key) is respawned
            # forever while the port never greets: its fatal: line is the answer.
            if _FATAL.search(self._read("postfix.log")):
                break
            time.sleep(0.02)
        self._kill_master()
        return False

    @property
    def banner(self):
        """The text after "220 " of our greeting: unique to this instance."""
        return "%s ESMTP Postfix (%s)" % (self.hostname, os.path.basename(self.base))

    def greets(self, timeout=2.0):
        """True when address:port answers with this instance's 220 greeting."""
        try:
            with socket.create_connection((self.address, self.port), timeout=timeout) as s:
                s.settimeout(timeout)
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(1024)
                    if not chunk:
                        return False
                    data += chunk
                try:
                    s.sendall(b"QUIT\r\n")
                    s.recv(1024)
                except OSError:
                    pass
                return data.startswith(b"220 " + self.banner.encode())
        except OSError:
            return False

    def port_closed(self):
        try:
            with socket.create_connection((self.address, self.port), timeout=1.0):
                return False
        except OSError:
            return True

    def stop(self):
        """Stops master and its daemons; returns once the port refuses connections. Then
        stops postgrey."""
        if self.process is None:
            self._stop_postgrey()
            return None
        began = time.monotonic()
        code = self._kill_master()
        deadline = time.monotonic() + STOP_TIMEOUT
        while not self.port_closed() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop_postgrey()
        self.stop_seconds = time.monotonic() - began
        return code

    def _start_postgrey(self):
        """Starts our postgrey on a unix socket in our directory; returns once it accepts."""
        assert os.access(POSTGREY, os.X_OK), "%s is not installed" % POSTGREY
        user = pwd.getpwnam("postgrey")
        dbdir = self._path("postgrey")
        os.mkdir(dbdir, 0o700)
        os.chown(dbdir, user.pw_uid, user.pw_gid)
        # Debian's /etc/postgrey/whitelist_* would be read otherwise: no whitelists here.
        empty = self._path("postgrey-whitelist")
        open(empty, "w").close()
        command = [POSTGREY, "--unix=" + self.postgrey_socket, "--dbdir=" + dbdir,
                   "--delay=%d" % self.postgrey_delay, "--auto-whitelist-clients=0",
                   "--whitelist-clients=" + empty, "--whitelist-recipients=" + empty]
        if self.postgrey_text is not None:
            command.append("--greylist-text=" + self.postgrey_text)
        # In the foreground (no --daemonize): it logs to stderr, and stops on SIGTERM. As
        # root it binds the socket (mode 0666, for smtpd), then runs as postgrey.
        with open(self._path("postgrey.log"), "ab") as log:
            self.postgrey = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=log, start_new_session=True)
        with open(self._path("postgrey.pid"), "w") as f:  # for remove_leftovers()
            f.write("%d\n" % self.postgrey.pid)
        # Like master's: kills postgrey's process group if this test process dies first.
        self.postgrey_watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.postgrey.pid)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.postgrey.poll() is None:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(self.postgrey_socket)
                return
            except OSError:
                time.sleep(0.02)
        self._stop_postgrey()
        raise AssertionError("postgrey did not come up on %s:\n%s" % (
            self.postgrey_socket, self._read("postgrey.log")))

    def _stop_postgrey(self):
        process, self.postgrey = self.postgrey, None
        watchdog, self.postgrey_watchdog = self.postgrey_watchdog, None
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
            watchdog.stdin.close()
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # Net::Server closes its socket and exits
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_master(self):
        process, self.process = self.process, None
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None:
            watchdog.kill()  # not needed any more: we stop master ourselves
            watchdog.wait()
            watchdog.stdin.close()
        # master is a session leader: its process group holds the daemons it forked.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # master passes it on to its daemons
        try:
            code = process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        # The daemons got SIGTERM from master; one may still be finishing a delivery.
        deadline = time.monotonic() + 2.0
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return code

    def cleanup(self):
        self.stop()
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if exc[0] is not None:
            sys.stderr.write("Postfix MX %s:%s log:\n%s\n" % (
                self.address, self.port, self.log()[-20000:]))
        self.cleanup()

    # -- what arrived ---------------------------------------------------------------------

    def deliveries(self):
        """Every message delivered so far, oldest first, as Delivery tuples."""
        found = []
        for path in glob.glob(os.path.join(self.mail_directory, "*", "*", "new", "*")) + \
                glob.glob(os.path.join(self.mail_directory, "*", "*", "cur", "*")):
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                continue  # moved from new/ to cur/ meanwhile
            found.append((_maildir_order(path), parse_delivery(raw, path, self.hostname)))
        found.sort(key=lambda item: item[0])
        return [delivery for _, delivery in found]

    def messages(self):
        """(recipient, message bytes as sent) for every message delivered so far."""
        return [(d.recipient, d.message) for d in self.deliveries()]

    def wait_for_messages(self, count, timeout=10.0):
        """Waits until at least `count` messages are delivered; returns deliveries()."""
        deadline = time.monotonic() + timeout
        while True:
            deliveries = self.deliveries()
            if len(deliveries) >= count:
                return deliveries
            if time.monotonic() >= deadline:
                raise AssertionError("%d of %d messages delivered to %s:%d within %ss; log:\n%s"
                                     % (len(deliveries), count, self.address, self.port,
                                        timeout, self.log()[-20000:]))
            time.sleep(0.02)

    def log(self):
        """What Postfix logged (postfix.log, written by postlogd), for failure messages."""
        text = self._read("postfix.log")
        stderr = self._read("master.stderr")
        if stderr:
            text += "==> master's stderr <==\n" + stderr
        if self.postgrey_delay is not None:
            text += "==> postgrey.log <==\n" + self.postgrey_log()
        return text

    def postgrey_log(self):
        """What postgrey logged: one "action=greylist, reason=new, ..." or "action=pass,
        ..." line per RCPT it was asked about."""
        return self._read("postgrey.log")

    def _read(self, name):
        if self.base is None:
            return ""
        try:
            with open(self._path(name), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- configuration --------------------------------------------------------------------

    def postfix_check(self):
        """Runs `postfix -c DIR check`; returns (exit status, what it printed).

        start() lays the directories out itself because `postfix check` takes seconds (a few
        dozen postconf runs); this proves the layout is the one Postfix wants. The postfix
        command prints its messages only to a terminal (else to syslog, absent here), so its
        stderr is a pseudo-terminal.
        """
        leader, follower = pty.openpty()
        try:
            process = subprocess.Popen([POSTFIX, "-c", self.config_directory, "check"],
                                       stdin=subprocess.DEVNULL, stdout=follower,
                                       stderr=follower, close_fds=True)
        finally:
            os.close(follower)
        output = b""
        try:
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            os.close(leader)
        code = process.wait(timeout=120)
        return code, output.decode("utf-8", "replace").replace("\r\n", "\n")

    def _make_queue(self):
        """The queue and data directories as postfix-files(5) lists them (what `postfix check`
        would create): Postfix refuses to run or warns when owners or modes differ."""
        owner = pwd.getpwnam(self.mail_owner)
        postdrop = grp.getgrnam("postdrop").gr_gid

        def make(path, uid, gid, mode):
            os.makedirs(path, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, mode)

        queue = self._path("queue")
        make(queue, 0, 0, 0o755)
        for name in ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold",
                     "incoming", "private", "saved", "trace"):
            make(os.path.join(queue, name), owner.pw_uid, 0, 0o700)
        make(os.path.join(queue, "maildrop"), owner.pw_uid, postdrop, 0o730)
        make(os.path.join(queue, "public"), owner.pw_uid, postdrop, 0o710)
        make(os.path.join(queue, "pid"), 0, 0, 0o755)
        make(self._path("data"), owner.pw_uid, 0, 0o700)

    def _write_files(self):
        os.mkdir(self.config_directory, 0o755)
        owner = pwd.getpwnam(self.mail_owner)
        os.mkdir(self.mail_directory, 0o700)
        os.chown(self.mail_directory, owner.pw_uid, owner.pw_gid)

        mailboxes = []
        if self.valid_users is None:
            # virtual(5): "@domain" is the catch-all, looked up after user@domain.
            mailboxes += ["@%s %s/all/" % (d, d) for d in self.domains]
        else:
            for user in self.valid_users:
                addresses = [user] if "@" in user else ["%s@%s" % (user, d) for d in self.domains]
                for address in addresses:
                    local, _, domain = address.lower().rpartition("@")
                    if domain not in self.domains:
                        raise ValueError("%s is not in %s" % (address, self.domains))
                    mailboxes.append("%s@%s %s/%s/" % (local, domain, domain, _safe(local)))
        with open(self._path("etc", "vmailbox"), "w") as f:
            f.write("\n".join(mailboxes) + "\n")

        ipv6 = ":" in self.address
        params = {
            "compatibility_level": "3.6",
            "mail_owner": owner.pw_name,
            "setgid_group": "postdrop",
            "queue_directory": self._path("queue"),
            "data_directory": self._path("data"),
            "daemon_directory": DAEMON_DIRECTORY,
            # The log file instead of syslog, written by postlogd (master.cf "postlog").
            "maillog_file": self.log_path,
            "maillog_file_prefixes": self.base,
            "myhostname": self.hostname,
            "mydomain": self.hostname.partition(".")[2] or "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            # Only the address of master.cf's smtpd service is listened on. This names the
            # machine's own addresses (permit_inet_interfaces, loop detection), which Postfix
            # checks against the interfaces: 127.0.0.2 and up are routed to lo without
            # being configured on it, so naming them here is a fatal error.
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv6" if ipv6 else "ipv4",
            "mynetworks": "[::1]/128" if ipv6 else "127.0.0.0/8",
            "smtpd_banner": self.banner,
            # An MX for its domains only: mail for anything else is refused at RCPT, and
            # nothing ever leaves by SMTP or through local(8).
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": (
                "reject_unlisted_recipient, check_policy_service unix:" + self.postgrey_socket
                if self.postgrey_delay is not None else ""),
            "smtpd_reject_unlisted_recipient": "yes",
            "unknown_virtual_mailbox_reject_code": "550",
            "default_transport": "error:no outbound mail from a test MX",
            "relay_transport": "error:no outbound mail from a test MX",
            "local_transport": "error:no local delivery in a test MX",
            "alias_maps": "",
            "alias_database": "",
            "virtual_mailbox_domains": " ".join(self.domains),
            "virtual_mailbox_base": self.mail_directory,
            "virtual_mailbox_maps": "texthash:" + self._path("etc", "vmailbox"),
            "virtual_alias_maps": "",
            "virtual_uid_maps": "static:%d" % owner.pw_uid,
            "virtual_gid_maps": "static:%d" % owner.pw_gid,
            "virtual_minimum_uid": str(owner.pw_uid),
            # Offline: no reverse lookups of clients, no DNS anywhere.
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            # Keep what the client sent: no header rewriting or added Message-ID/Date for
            # remote clients, no MIME conversion, no pause when deliveries lag (benchmarks).
            "local_header_rewrite_clients": "",
            "remote_header_rewrite_domain": "",
            "always_add_missing_headers": "no",
            "append_dot_mydomain": "no",
            "disable_mime_output_conversion": "yes",
            "in_flow_delay": "0",
            "biff": "no",
            "smtputf8_enable": "yes",
            "smtpd_tls_security_level": "none",
        }
        if self.tls:
            key = self._path("etc", "key.pem")
            result = subprocess.run(
                [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", key, "-out", self.cert_path, "-subj", "/CN=" + self.hostname,
                 "-addext", "subjectAltName=DNS:" + self.hostname],
                capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                raise AssertionError("openssl req failed:\n%s" % result.stderr.decode())
            os.chmod(key, 0o600)
            params.update({
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": self.cert_path,
                "smtpd_tls_key_file": key,
                "smtpd_tls_loglevel": "1",
                "smtpd_tls_received_header": "no",
                "smtpd_tls_session_cache_database": "",
            })
        params.update(self.extra)
        with open(self._path("etc", "main.cf"), "w") as f:
            for name, value in params.items():
                f.write("%s = %s\n" % (name, value))
        self._write_master_cf()

    def _write_master_cf(self):
        host = "[%s]" % self.address if ":" in self.address else self.address
        # chroot "n" everywhere: nothing to copy into a jail, and the temporary paths work.
        services = [
            "%s:%d inet n - n - - smtpd" % (host, self.port),
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "proxywrite unix - - n - 1 proxymap",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "virtual unix - n n - - virtual",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        with open(self._path("etc", "master.cf"), "w") as f:
            f.write("\n".join(services) + "\n")


def parse_delivery(raw, path="", hostname=None):
    """Splits a Maildir file written by virtual(8) into a Delivery."""
    lines = raw.split(b"\n")
    fields = {}
    i = 0
    # The fields virtual(8) prepended, each one line.
    while i < len(lines) and b":" in lines[i]:
        name, _, value = lines[i].partition(b":")
        if name.strip().lower() not in _DELIVERY_FIELDS:
            break
        fields.setdefault(name.strip().lower(), value.strip())
        i += 1
    # postgrey's X-Greylist: field, which smtpd(8) puts above its Received: field.
    greylist = b""
    if i < len(lines) and _GREYLIST_FIELD.match(lines[i]):
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1
        greylist = b"\n".join(lines[i:j])
        i = j
    # Then the Received: field smtpd(8) added, with its continuation lines.
    received = b""
    if i < len(lines) and lines[i].lower().startswith(b"received:"):
        j = i + 1
        while j < len(lines) and lines[j][:1] in (b" ", b"\t"):
            j += 1
        candidate = b"\n".join(lines[i:j])
        if hostname is None or (b"by %s (Postfix)" % hostname.encode()) in candidate:
            received = candidate
            i = j
    message = b"\r\n".join(lines[i:])
    return Delivery(
        recipient=fields.get(b"delivered-to", b"").decode("utf-8", "replace"),
        original_recipient=fields.get(b"x-original-to", b"").decode("utf-8", "replace"),
        sender=fields.get(b"return-path", b"").decode("utf-8", "replace").strip("<>"),
        message=message, raw=raw, received=received.decode("utf-8", "replace"), path=path,
        greylist=greylist.decode("utf-8", "replace"))


def port_in_use(address, port):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return True
    return False


def free_port(address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def parent_directory():
    """Where instance directories go: $TMPDIR if the postfix user can get through it to the
    queue and its socket paths stay short (sun_path is 108 bytes), else /tmp."""
    parent = os.path.realpath(tempfile.gettempdir())
    if len(parent) > 40:
        return "/tmp"
    path = parent
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return "/tmp"
        except OSError:
            return "/tmp"
        if path == "/":
            return parent
        path = os.path.dirname(path)


def remove_leftovers():
    """Removes the directories of instances whose test process is gone (killed runs), and
    stops their master if it somehow outlived it. Live instances of concurrent runs stay."""
    for base in glob.glob(os.path.join(parent_directory(), DIR_PREFIX + "*")):
        try:
            with open(os.path.join(base, "owner.pid")) as f:
                owner = int(f.read().strip() or "0")
        except (OSError, ValueError):
            # Being created right now, or not ours: only old ones are removed.
            try:
                if time.time() - os.stat(base).st_mtime < 3600:
                    continue
            except OSError:
                continue
            owner = 0
        if owner and os.path.exists("/proc/%d" % owner):
            continue
        for pid_file, marker in ((os.path.join("queue", "pid", "master.pid"), "etc"),
                                 ("postgrey.pid", "postgrey.sock")):
            pid = _read_pid(os.path.join(base, pid_file))
            if pid:
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as f:
                        if os.path.join(base, marker).encode() in f.read():
                            os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(base, ignore_errors=True)


def group_members(pgid):
    """The live (not zombie) processes of process group `pgid`. Orphaned daemons are
    reparented to PID 1, which in a container may never reap them: zombies don't count."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def _safe(local_part):
    """A directory name for a local part: no path separators or dot-dot tricks."""
    return re.sub(r"[^A-Za-z0-9_+=-]", "_", local_part) or "_"


def _maildir_order(path):
    """Sort key from a Maildir name "SECONDS.V...I...M<microseconds>.host"."""
    name = os.path.basename(path)
    seconds, _, rest = name.partition(".")
    micro = re.search(r"M(\d+)", rest)
    try:
        return (int(seconds), int(micro.group(1)) if micro else 0, name)
    except ValueError:
        return (0, 0, name)
