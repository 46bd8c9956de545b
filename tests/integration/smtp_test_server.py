"""A scriptable SMTP server for integration tests: the receiving MX that facteur delivers to.

Standard library only (Debian's /usr/bin/python3). One SmtpTestServer listens on a loopback
address (port 0: a free port, read back from .port), serves every connection in its own thread,
and records what each client did: the sessions (peer, EHLO names, TLS, commands as they arrived,
grouped by the read that brought them, to see pipelining) and the transactions (sender,
accepted and refused recipients with their parameters, the unstuffed data bytes).

What the server answers is scriptable per instance and per recipient. Every reply setting is a
"spec": a reply line ("250 2.1.5 Ok"; several lines joined with "\\n" make a multiline reply), a
list of specs used in turn across the whole instance (the last one stays: ["450 4.2.0
greylisted", "250 2.1.5 Ok"] refuses the first attempt only), a callable returning a spec, or one
of two actions:
    DROP   close the connection instead of answering;
    STALL  never answer: keep reading and discarding until the client gives up.
A reply wrapped in Close ("Close('421 4.3.2 bye')") is sent, then the connection is closed, as a
server does after a 421 (RFC 5321 §3.8).
Settings (attributes, changeable while the server runs):
    greeting            the 220 (default "220 <hostname> ESMTP test")
    ehlo_reply          None: the normal EHLO answer; a spec: that instead (e.g. "502 5.5.2 no",
                        to make a client fall back to HELO)
    mail_reply          to MAIL (callable gets the sender)
    rcpt_reply          to RCPT for a recipient not in rcpt_replies (callable gets the address)
    rcpt_replies        {address (case-insensitive): spec}
    data_reply          to DATA when a recipient was accepted (default 354)
    end_of_data_reply   after the final "." (callable gets the Transaction)
    quit_reply          to QUIT
    drop_mid_data       close the connection once some body bytes have arrived
    stall_mid_data      stop answering once some body bytes have arrived
    data_read_rate      None, or bytes per second: reads the body no faster, with a small
                        receive buffer (a slow link, or a server scanning as it reads)
    starttls_breaks     None; "reset": after the 220 to STARTTLS, reset the connection (RST)
                        instead of a handshake; "stall": read and discard instead of a handshake
Advertised extensions: pipelining, starttls, eight_bit_mime, smtputf8, dsn, size (an int, or
None for no SIZE keyword), enhanced_status_codes. STARTTLS needs certfile/keyfile; with
starttls=True and none given, a self-signed certificate is made with the openssl CLI in a
temporary directory (make_self_signed_cert). require_tls refuses MAIL before STARTTLS.

clock: a callable returning the time in seconds (default time.time; test_clock.ScaledClock for
time-compressed scenarios) that stamps Session.opened_at, Transaction.started (when MAIL was
answered) and Transaction.finished (when the final "." was answered).

Subclass hooks (provider_sim.ProviderSim uses them), called from the connection's thread:
greeting_for(session), mail_reply_for(session, address, now), rcpt_reply_for(session,
transaction, address, now) return the spec to answer with; transaction_done(session,
transaction) is called under the server's lock once the data is read and answered;
session_leaving(session) when QUIT arrives (before its reply) and again when the connection
closes.

Use:
    with SmtpTestServer(rcpt_replies={"bad@x.test": "550 5.1.1 no such user"}) as sink:
        ... deliver to 127.0.0.1:sink.port ...
        sink.wait_for(lambda: len(sink.transactions) == 1)
"""

import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

DROP = "DROP"
STALL = "STALL"


class Close(str):
    """A reply spec: send this reply, then close the connection."""


# Longest command or data line read (RFC 5321 asks for 512 and 1000; we are lenient, bounded).
MAX_LINE = 65536
# How often a stalled or idle connection thread looks at the stop flag.
POLL_INTERVAL = 0.1


def make_self_signed_cert(directory, common_name="localhost"):
    """Writes cert.pem and key.pem (P-256, valid two days, SAN for the name and 127.0.0.1/::1)
    into `directory` with the openssl CLI; returns (certfile, keyfile)."""
    certfile = os.path.join(directory, "cert.pem")
    keyfile = os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", keyfile, "-out", certfile, "-days", "2",
         "-subj", "/CN=%s" % common_name,
         "-addext", "subjectAltName=DNS:%s,IP:127.0.0.1,IP:::1" % common_name],
        check=True, capture_output=True, timeout=60)
    return certfile, keyfile


class Transaction:
    """One MAIL transaction whose data was read to its end (accepted or not)."""

    def __init__(self, session):
        self.peer = session.peer
        self.ehlo = session.ehlo
        self.tls = session.tls
        self.mail_from = None       # the reverse-path without brackets ("" for <>)
        self.mail_params = []       # ["SIZE=123", "BODY=8BITMIME", ...]
        self.rcpt_to = []           # accepted recipients, in order
        self.rcpt_params = {}       # accepted recipient -> its parameters
        self.refused = []           # [(recipient, reply)] refused at RCPT
        self.data = b""             # unstuffed, CRLF line ends as sent
        self.reply = None           # the reply to the final "."
        self.accepted = False       # that reply was 2xx
        self.started = None         # clock() when MAIL was answered
        self.finished = None        # clock() when the final "." was answered
        # Its MAIL came in the same read as the previous transaction's final "." (RFC 2920
        # §3.1: the client pipelined it after the end of data).
        self.after_end_of_data = False

    def __repr__(self):
        return "Transaction(from=%r, to=%r, %d bytes, tls=%s, reply=%r)" % (
            self.mail_from, self.rcpt_to, len(self.data), self.tls, self.reply)


class Session:
    """One connection."""

    def __init__(self, peer):
        self.peer = peer            # (host, port)
        self.ehlo = None            # the last EHLO/HELO name
        self.ehlo_names = []        # every EHLO/HELO argument, in order (twice around STARTTLS)
        self.tls = False
        self.tls_version = None
        self.commands = []          # command lines as received (DATA content excluded)
        self.batches = []           # the command lines that arrived in each read
        self.transactions = []
        self.closed = False
        self.error = None           # what ended it abnormally (a Python exception text)
        # What the client had sent that the server had read but not acted on when a DROP (or
        # a Close reply) ended the connection: commands pipelined behind the last one handled.
        self.unread_at_drop = b""
        self.opened_at = None       # clock() when the connection was accepted


class _Dropped(Exception):
    pass


class _Stalled(Exception):
    pass


class _LineReader:
    """Reads lines from a socket that may become a TLS socket; tracks which read each line
    came with, so pipelined commands can be seen as one batch."""

    def __init__(self, sock, stop):
        self.sock = sock
        self.stop = stop
        self.buffer = b""
        self.reads = 0

    def readline(self):
        """A line with its terminator (b"" at EOF); and the number of the read that ended it."""
        while True:
            newline = self.buffer.find(b"\n")
            if newline >= 0:
                line, self.buffer = self.buffer[:newline + 1], self.buffer[newline + 1:]
                return line, self.reads
            if len(self.buffer) > MAX_LINE:
                raise ValueError("line longer than %d" % MAX_LINE)
            chunk = self.recv()
            if not chunk:
                return b"", self.reads
            self.buffer += chunk

    def recv(self):
        while True:
            if self.stop.is_set():
                return b""
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.reads += 1
            return chunk

    def discard_until_eof(self):
        """STALL: read and drop everything until the client closes or the server stops."""
        self.buffer = b""
        while self.recv():
            pass


class SmtpTestServer:
    """See the module docstring."""

    def __init__(self, host="127.0.0.1", port=0, hostname="mx.test.example",
                 pipelining=True, starttls=False, eight_bit_mime=True, smtputf8=True, dsn=True,
                 size=52428800, enhanced_status_codes=True, certfile=None, keyfile=None,
                 require_tls=False, greeting=None, ehlo_reply=None,
                 mail_reply="250 2.1.0 Ok", rcpt_reply="250 2.1.5 Ok", rcpt_replies=None,
                 data_reply="354 End data with <CR><LF>.<CR><LF>", end_of_data_reply=None,
                 quit_reply="221 2.0.0 Bye", drop_mid_data=False, stall_mid_data=False,
                 data_read_rate=None, starttls_breaks=None, clock=None):
        self.host = host
        self.clock = clock or time.time
        self.hostname = hostname
        self.pipelining = pipelining
        self.starttls = starttls
        self.eight_bit_mime = eight_bit_mime
        self.smtputf8 = smtputf8
        self.dsn = dsn
        self.size = size
        self.enhanced_status_codes = enhanced_status_codes
        self.require_tls = require_tls
        self.greeting = greeting if greeting is not None else "220 %s ESMTP test" % hostname
        self.ehlo_reply = ehlo_reply
        self.mail_reply = mail_reply
        self.rcpt_reply = rcpt_reply
        self.rcpt_replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        self.data_reply = data_reply
        self.end_of_data_reply = end_of_data_reply
        self.quit_reply = quit_reply
        self.drop_mid_data = drop_mid_data
        self.stall_mid_data = stall_mid_data
        self.starttls_breaks = starttls_breaks
        self.data_read_rate = data_read_rate

        self.sessions = []
        self.transactions = []
        self._lock = threading.RLock()  # wait_for's predicate may call accepted()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._threads = []
        self._sockets = set()
        self._queued = 0
        self._temp_dir = None

        self.certfile, self.keyfile = certfile, keyfile
        self._tls_context = None
        if starttls:
            if certfile is None:
                self._temp_dir = tempfile.mkdtemp(prefix="smtp-test-server-")
                self.certfile, self.keyfile = make_self_signed_cert(self._temp_dir, hostname)
            self._tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls_context.load_cert_chain(self.certfile, self.keyfile)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if data_read_rate is not None:
            # Set before listen, so accepted sockets get it and the window stays small.
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        self._listener.bind((host, port))
        self._listener.listen(128)
        self._listener.settimeout(POLL_INTERVAL)
        self.port = self._listener.getsockname()[1]
        self._accept_thread = None

    # -- life ------------------------------------------------------------------------------

    def start(self):
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True,
                                               name="smtp-test-server-accept")
        self._accept_thread.start()
        return self

    def stop(self, timeout=10):
        """Stops accepting, closes every connection, waits (bounded) for the threads."""
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._listener.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def address(self):
        """"127.0.0.1:PORT" or "[::1]:PORT", as a facteur static route writes it."""
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)

    # -- observation -----------------------------------------------------------------------

    def wait_for(self, predicate, timeout=10):
        """Waits until predicate() (called under the server's lock) is true; raises
        AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("condition not met within %ss; transactions: %r" % (
                        timeout, self.transactions))
                self._changed.wait(remaining)

    def accepted(self):
        """The transactions whose data got a 2xx."""
        with self._lock:
            return [t for t in self.transactions if t.accepted]

    def delivered_to(self, address):
        """The accepted transactions that carried `address`."""
        address = address.lower()
        return [t for t in self.accepted() if address in (r.lower() for r in t.rcpt_to)]

    # -- subclass hooks (see the module docstring) -----------------------------------------

    def greeting_for(self, session):
        return self.greeting

    def mail_reply_for(self, session, address, now):
        return self.mail_reply

    def rcpt_reply_for(self, session, transaction, address, now):
        return self.rcpt_replies.get(address.lower(), self.rcpt_reply)

    def transaction_done(self, session, transaction):
        pass

    def session_leaving(self, session):
        pass

    # -- internals -------------------------------------------------------------------------

    def _notify(self):
        with self._changed:
            self._changed.notify_all()

    def _pick(self, spec, *args):
        """Resolves a reply spec (see the module docstring) to a reply line, DROP or STALL."""
        while True:
            if callable(spec):
                spec = spec(*args)
            elif isinstance(spec, list):
                with self._lock:
                    spec = spec.pop(0) if len(spec) > 1 else spec[0]
            else:
                return spec

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                sock, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(POLL_INTERVAL)
            session = Session(peer[:2])
            session.opened_at = self.clock()
            thread = threading.Thread(target=self._serve, args=(sock, session), daemon=True,
                                      name="smtp-test-server-%d" % peer[1])
            with self._lock:
                self.sessions.append(session)
                self._sockets.add(sock)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock, session):
        conn = _Connection(self, sock, session)
        try:
            conn.run()
        except _Dropped:
            session.unread_at_drop = conn.reader.buffer
        except _Stalled:
            try:
                conn.reader.discard_until_eof()
            except (OSError, ValueError):
                pass
        except (OSError, ValueError, ssl.SSLError) as e:
            session.error = "%s: %s" % (type(e).__name__, e)
        finally:
            self.session_leaving(session)
            try:
                conn.sock.close()
            except OSError:
                pass
            with self._lock:
                self._sockets.discard(sock)
                self._sockets.discard(conn.sock)  # the TLS socket after STARTTLS
                session.closed = True
            self._notify()


class _Connection:
    """The protocol for one connection."""

    def __init__(self, server, sock, session):
        self.server = server
        self.sock = sock
        self.session = session
        self.reader = _LineReader(sock, server._stop)
        self.transaction = None
        self.helo_done = False
        self.last_read = -1  # the read that brought the last command
        self.end_of_data_read = -2  # the read that brought the last final "."

    def send(self, spec, *args):
        """Sends the reply a spec resolves to; DROP and STALL raise."""
        reply = self.server._pick(spec, *args)
        if reply == DROP:
            raise _Dropped()
        if reply == STALL:
            raise _Stalled()
        lines = reply.split("\n")
        code = lines[0][:3]
        out = []
        for i, line in enumerate(lines):
            text = line[3:] if line[:3] == code else " " + line
            text = text[1:] if text[:1] in (" ", "-") else text
            last = i == len(lines) - 1
            out.append("%s%s%s\r\n" % (code, " " if last else "-", text))
        self.sock.sendall("".join(out).encode("utf-8"))
        if isinstance(reply, Close):
            raise _Dropped()
        return reply

    def run(self):
        self.send(self.server.greeting_for(self.session))
        while True:
            raw, read_number = self.reader.readline()
            if not raw:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            with self.server._lock:
                self.session.commands.append(line)
                if self.session.batches and read_number == self.last_read:
                    self.session.batches[-1].append(line)
                else:
                    self.session.batches.append([line])
                self.last_read = read_number
            self.server._notify()
            verb, _, argument = line.partition(" ")
            verb = verb.upper()
            handler = getattr(self, "do_" + verb, None)
            if handler is None:
                self.send("502 5.5.2 Error: command not recognized")
            elif handler(argument) is False:
                return

    # Commands. A handler returning False ends the connection.

    def ehlo_lines(self):
        s = self.server
        lines = ["250-" + s.hostname]
        if s.pipelining:
            lines.append("PIPELINING")
        if s.size is not None:
            lines.append("SIZE %d" % s.size)
        if s.starttls and not self.session.tls:
            lines.append("STARTTLS")
        if s.eight_bit_mime:
            lines.append("8BITMIME")
        if s.smtputf8:
            lines.append("SMTPUTF8")
        if s.dsn:
            lines.append("DSN")
        if s.enhanced_status_codes:
            lines.append("ENHANCEDSTATUSCODES")
        return "\n".join(lines)

    def do_EHLO(self, argument):
        self.hello(argument)
        if self.server.ehlo_reply is not None:
            reply = self.send(self.server.ehlo_reply)
            self.helo_done = reply.startswith("2")
        else:
            self.send(self.ehlo_lines())
            self.helo_done = True

    def do_HELO(self, argument):
        self.hello(argument)
        self.send("250 " + self.server.hostname)
        self.helo_done = True

    def hello(self, argument):
        with self.server._lock:
            self.session.ehlo = argument
            self.session.ehlo_names.append(argument)
        self.transaction = None

    def do_STARTTLS(self, argument):
        if not self.server.starttls or self.session.tls:
            self.send("502 5.5.1 Error: STARTTLS not available")
            return
        self.send("220 2.0.0 Ready to start TLS")
        if self.server.starttls_breaks == "reset":
            # A zero linger time makes close() send RST, as a middlebox killing TLS does.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raise _Dropped()
        if self.server.starttls_breaks == "stall":
            raise _Stalled()
        # RFC 3207 §4.2: anything the client sent before the handshake is dropped.
        self.reader.buffer = b""
        self.sock.settimeout(10)
        tls_sock = self.server._tls_context.wrap_socket(self.sock, server_side=True)
        tls_sock.settimeout(POLL_INTERVAL)
        with self.server._lock:
            self.server._sockets.discard(self.sock)
            self.server._sockets.add(tls_sock)
            self.session.tls = True
            self.session.tls_version = tls_sock.version()
        self.sock = tls_sock
        self.reader.sock = tls_sock
        self.helo_done = False
        self.transaction = None

    def do_MAIL(self, argument):
        if not self.helo_done:
            self.send("503 5.5.1 Error: send HELO/EHLO first")
            return
        if self.server.require_tls and not self.session.tls:
            self.send("530 5.7.0 Must issue a STARTTLS command first")
            return
        if self.transaction is not None:
            self.send("503 5.5.1 Error: nested MAIL command")
            return
        if not argument.upper().startswith("FROM:"):
            self.send("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        address, params = self.path(argument[5:])
        if address is None:
            self.send("501 5.1.7 Bad sender address syntax")
            return
        for param in params:
            key, _, value = param.partition("=")
            if key.upper() == "SIZE" and self.server.size and value.isdigit() and \
                    int(value) > self.server.size:
                self.send("552 5.3.4 Message size exceeds fixed limit")
                return
        now = self.server.clock()
        reply = self.send(self.server.mail_reply_for(self.session, address, now), address)
        if reply.startswith("2"):
            t = Transaction(self.session)
            t.started = now
            t.after_end_of_data = self.last_read == self.end_of_data_read
            t.mail_from = address
            t.mail_params = params
            self.transaction = t

    def do_RCPT(self, argument):
        if self.transaction is None:
            self.send("503 5.5.1 Error: need MAIL command")
            return
        if not argument.upper().startswith("TO:"):
            self.send("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        address, params = self.path(argument[3:])
        if address is None:
            self.send("501 5.1.3 Bad recipient address syntax")
            return
        spec = self.server.rcpt_reply_for(self.session, self.transaction, address,
                                          self.server.clock())
        reply = self.send(spec, address)
        if reply.startswith("2"):
            self.transaction.rcpt_to.append(address)
            self.transaction.rcpt_params[address] = params
        else:
            self.transaction.refused.append((address, reply))

    def do_DATA(self, argument):
        t = self.transaction
        if t is None:
            self.send("503 5.5.1 Error: need MAIL command")
            return
        if not t.rcpt_to:
            self.send("554 5.5.1 Error: no valid recipients")
            return
        self.send(self.server.data_reply)
        data = []
        reads_at_start = self.reader.reads
        started, size = time.monotonic(), 0
        while True:
            raw, _ = self.reader.readline()
            if not raw:
                return False  # EOF inside DATA: the transaction is lost
            size += len(raw)
            if self.server.data_read_rate is not None:
                ahead = size / self.server.data_read_rate - (time.monotonic() - started)
                if ahead > 0.01:
                    time.sleep(ahead)
            if (self.server.drop_mid_data or self.server.stall_mid_data) and \
                    self.reader.reads > reads_at_start:
                if self.server.drop_mid_data:
                    raise _Dropped()
                raise _Stalled()
            if raw in (b".\r\n", b".\n"):
                self.end_of_data_read = self.reader.reads
                break
            if raw.startswith(b"."):
                raw = raw[1:]  # RFC 5321 §4.5.2
            data.append(raw)
        t.data = b"".join(data)
        self.transaction = None
        if self.server.end_of_data_reply is None:
            with self.server._lock:
                self.server._queued += 1
                number = self.server._queued
            spec = "250 2.0.0 Ok: queued as TEST%06d" % number
        else:
            spec = self.server.end_of_data_reply
        reply = self.server._pick(spec, t)
        t.finished = self.server.clock()
        if reply not in (DROP, STALL):
            t.reply = reply
            t.accepted = reply.startswith("2")
        with self.server._lock:
            self.session.transactions.append(t)
            self.server.transactions.append(t)
            self.server.transaction_done(self.session, t)
        self.server._notify()
        self.send(reply)

    def do_RSET(self, argument):
        self.transaction = None
        self.send("250 2.0.0 Ok")

    def do_NOOP(self, argument):
        self.send("250 2.0.0 Ok")

    def do_VRFY(self, argument):
        self.send("252 2.0.0 Cannot VRFY")

    def do_QUIT(self, argument):
        # Before the reply: a client that reconnects as soon as it reads 221 must not find
        # this connection still counted.
        self.server.session_leaving(self.session)
        self.send(self.server.quit_reply)
        return False

    @staticmethod
    def path(text):
        """'<a@b> SIZE=1' -> ('a@b', ['SIZE=1']); (None, []) when the brackets are missing."""
        text = text.strip()
        if not text.startswith("<"):
            return None, []
        end = text.find(">")
        if end < 0:
            return None, []
        return text[1:end], text[end + 1:].split()
