"""Simulated mailbox providers on loopback: SmtpTestServer plus what big receivers do to a
sender that goes too fast (issue #5 point 8).

A ProviderSim is a SmtpTestServer (every setting and record of smtp_test_server.py still
applies) with four optional behaviours, each modelled on a real receiver and answering with
that receiver's text (/work/shared/research/providers.md):

  greylister       (Postgrey) the first RCPT of a triplet (client IP, MAIL FROM, RCPT TO)
                   gets "450 4.2.0 <rcpt>: Recipient address rejected: Greylisted for N
                   seconds" (N: the seconds still to wait); a retry of the triplet once
                   greylist_delay has passed since its first attempt is accepted, and so is
                   every later message with that triplet; an early retry is greylisted again
                   without resetting the first attempt. Options: greylist_subnet (24 keys on
                   the client's /24 as Postgrey does; default the exact IP),
                   greylist_normalize_sender (Postgrey's sender rewriting: "+ext" dropped,
                   lone numbers -> "#"), greylist_retry_window (a first retry later than this
                   starts over, Postgrey's 2 days).
  rate limiter     (Gmail) a MAIL beyond rate_limit_per_minute messages in the current
                   calendar minute of the clock, or beyond rate_limit_per_hour in the current
                   hour, gets "421 4.7.28 [ip] Our system has detected an unusual rate..." and
                   the connection is closed. Counted over every client, or per client IP with
                   rate_limit_per_ip. A message counts in the minute its MAIL was answered
                   250, whatever happens to it next: then no calendar minute ever holds more
                   accepted messages than the limit.
  connection limiter (Orange) a connection beyond max_connections open at once (per client
                   IP with connection_limit_per_ip, the default; else over all clients) is
                   greeted "421 4.7.0 Too many connections, slow down. OFR005_104" and closed.
                   A connection stops counting when QUIT arrives (before the 221), or when it
                   closes.
  blocklister      (Spamhaus) a client whose IP is in `blocklist` gets "550 5.7.1 Service
                   unavailable; client [ip] blocked using zen.spamhaus.org" at MAIL (or at
                   RCPT with blocklist_at="RCPT").

Time is the `clock` (a callable returning seconds, default time.time; test_clock.ScaledClock
runs hours of provider time in seconds). Every reply text is a setting with "{ip}", "{rcpt}"
and "{seconds}" placeholders.

What a test asserts on (read under the lock, e.g. in wait_for's predicate, or via stats()):
    accepted_per_minute   Counter {calendar minute (test_clock.minute_of): messages accepted}
    accepted_per_hour     Counter {calendar hour: messages accepted}
    accepted_per_ip_minute Counter {(client IP, minute): messages accepted}
    max_connections_seen  most connections open at once (refused ones not counted)
    max_connections_seen_per_ip {client IP: most open at once}
    rate_limit_replies, connection_limit_replies, greylist_replies, blocklist_replies
    attempts              {recipient (lower case): [Attempt(time, ip, mail_from, reply)]}, one
                          per RCPT, oldest first
    delivered             {recipient (lower case): number of accepted messages carrying it}
    deliveries            [Delivery(time, ip, mail_from, recipients)] per accepted message
Helpers: delivered_on_attempt(rcpt), duplicates(), stats().

Per message the cost is a few dictionary updates under one lock; nothing sleeps.

    clock = ScaledClock(speed=600)
    with ProviderSim(host="127.0.0.41", clock=clock, greylist_delay=300) as gmail:
        ... deliver ...
        gmail.wait_for(lambda: len(gmail.delivered) == 100, timeout=60)
        attempt = gmail.attempts["bob@gmail.test"]
"""

import collections
import ipaddress
import re

from smtp_test_server import Close, SmtpTestServer
from test_clock import hour_of, minute_of

GREYLIST_REPLY = ("450 4.2.0 <{rcpt}>: Recipient address rejected: "
                  "Greylisted for {seconds} seconds")
RATE_LIMIT_REPLY = (
    "421 4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited mail "
    "originating from your IP address. To protect our users from spam, mail sent from your "
    "IP address has been temporarily rate limited.")
CONNECTION_LIMIT_REPLY = "421 4.7.0 Too many connections, slow down. OFR005_104"
BLOCKLIST_REPLY = "550 5.7.1 Service unavailable; client [{ip}] blocked using zen.spamhaus.org"

# One RCPT as the simulator saw it. reply: the line sent (or "DROP"/"STALL").
Attempt = collections.namedtuple("Attempt", "time ip mail_from reply")
# One accepted message. time: when its MAIL was answered; recipients: as the client spelt them.
Delivery = collections.namedtuple("Delivery", "time ip mail_from recipients")


def _client_ip(session):
    return session.peer[0]


def postgrey_sender(address):
    """Postgrey's do_sender_substitutions: "+ext" dropped, lone numbers replaced by "#", so
    VERP senders make one key (BATV unwrapping left out)."""
    user, at, domain = address.rpartition("@")
    if not at:
        return address
    user = user.split("+", 1)[0]
    return re.sub(r"\b\d+\b", "#", user) + "@" + domain


class ProviderSim(SmtpTestServer):
    """See the module docstring. Keyword arguments beyond the ones below go to
    SmtpTestServer (host, port, hostname, starttls, rcpt_replies, clock, ...)."""

    def __init__(self, greylist_delay=None, greylist_reply=GREYLIST_REPLY,
                 greylist_subnet=None, greylist_normalize_sender=False,
                 greylist_retry_window=None,
                 rate_limit_per_minute=None, rate_limit_per_hour=None, rate_limit_per_ip=False,
                 rate_limit_reply=RATE_LIMIT_REPLY,
                 max_connections=None, connection_limit_per_ip=True,
                 connection_limit_reply=CONNECTION_LIMIT_REPLY,
                 blocklist=(), blocklist_at="MAIL", blocklist_reply=BLOCKLIST_REPLY,
                 **settings):
        super().__init__(**settings)
        if blocklist_at not in ("MAIL", "RCPT"):
            raise ValueError("blocklist_at is MAIL or RCPT, got %r" % (blocklist_at,))
        # Behaviours (attributes, changeable while the server runs; None disables).
        self.greylist_delay = greylist_delay
        self.greylist_reply = greylist_reply
        self.greylist_subnet = greylist_subnet
        self.greylist_normalize_sender = greylist_normalize_sender
        self.greylist_retry_window = greylist_retry_window
        self.rate_limit_per_minute = rate_limit_per_minute
        self.rate_limit_per_hour = rate_limit_per_hour
        self.rate_limit_per_ip = rate_limit_per_ip
        self.rate_limit_reply = rate_limit_reply
        self.max_connections = max_connections
        self.connection_limit_per_ip = connection_limit_per_ip
        self.connection_limit_reply = connection_limit_reply
        self.blocklist = set(blocklist)
        self.blocklist_at = blocklist_at
        self.blocklist_reply = blocklist_reply

        # Records (guarded by self._lock).
        self.accepted_per_minute = collections.Counter()
        self.accepted_per_hour = collections.Counter()
        self.accepted_per_ip_minute = collections.Counter()
        self.max_connections_seen = 0
        self.max_connections_seen_per_ip = {}
        self.rate_limit_replies = 0
        self.connection_limit_replies = 0
        self.greylist_replies = 0
        self.blocklist_replies = 0
        self.attempts = collections.defaultdict(list)
        self.delivered = collections.Counter()
        self.deliveries = []

        self._greylist = {}  # triplet -> (first attempt, last attempt) times
        self._started_per_minute = collections.Counter()  # (ip or None, minute) -> MAILs
        self._started_per_hour = collections.Counter()  # (ip or None, hour) -> MAILs
        self._open = 0
        self._open_per_ip = collections.Counter()
        self._counted = set()  # id() of the sessions counted open (self.sessions keeps them)

    # -- hooks ----------------------------------------------------------------------------

    def greeting_for(self, session):
        ip = _client_ip(session)
        with self._lock:
            if self.max_connections is not None:
                open_now = self._open_per_ip[ip] if self.connection_limit_per_ip else self._open
                if open_now >= self.max_connections:
                    self.connection_limit_replies += 1
                    return Close(self.connection_limit_reply.format(ip=ip))
            self._open += 1
            self._open_per_ip[ip] += 1
            self._counted.add(id(session))
            self.max_connections_seen = max(self.max_connections_seen, self._open)
            self.max_connections_seen_per_ip[ip] = max(
                self.max_connections_seen_per_ip.get(ip, 0), self._open_per_ip[ip])
        return self.greeting

    def session_leaving(self, session):
        with self._lock:
            if id(session) in self._counted:
                self._counted.discard(id(session))
                ip = _client_ip(session)
                self._open -= 1
                self._open_per_ip[ip] -= 1

    def mail_reply_for(self, session, address, now):
        ip = _client_ip(session)
        if ip in self.blocklist and self.blocklist_at == "MAIL":
            with self._lock:
                self.blocklist_replies += 1
            return self.blocklist_reply.format(ip=ip)
        reply = self._pick(self.mail_reply, address)
        if not reply.startswith("2"):
            return reply  # refused anyway (or DROP/STALL): it is no message for the limiter
        scope = ip if self.rate_limit_per_ip else None
        minute_key = (scope, minute_of(now))
        hour_key = (scope, hour_of(now))
        with self._lock:
            if (self.rate_limit_per_minute is not None and
                    self._started_per_minute[minute_key] >= self.rate_limit_per_minute) or \
                    (self.rate_limit_per_hour is not None and
                     self._started_per_hour[hour_key] >= self.rate_limit_per_hour):
                self.rate_limit_replies += 1
                return Close(self.rate_limit_reply.format(ip=ip))
            self._started_per_minute[minute_key] += 1
            self._started_per_hour[hour_key] += 1
        return reply

    def rcpt_reply_for(self, session, transaction, address, now):
        ip = _client_ip(session)
        key = address.lower()
        if ip in self.blocklist and self.blocklist_at == "RCPT":
            reply = self.blocklist_reply.format(ip=ip, rcpt=address)
            with self._lock:
                self.blocklist_replies += 1
                self.attempts[key].append(Attempt(now, ip, transaction.mail_from, reply))
            return reply
        # What the mailbox says comes first, as in Postfix with reject_unlisted_recipient
        # before the policy service: an unknown user gets its 550, not a greylisting.
        reply = self._pick(super().rcpt_reply_for(session, transaction, address, now), address)
        with self._lock:
            if reply.startswith("2") and self.greylist_delay is not None:
                remaining = self._greylist_remaining(ip, transaction.mail_from, key, now)
                if remaining > 0:
                    self.greylist_replies += 1
                    reply = self.greylist_reply.format(
                        ip=ip, rcpt=address, seconds=max(1, int(round(remaining))))
            self.attempts[key].append(Attempt(now, ip, transaction.mail_from, reply))
        return reply

    def transaction_done(self, session, transaction):
        # Called under self._lock.
        if not transaction.accepted:
            return
        ip = _client_ip(session)
        minute = minute_of(transaction.started)
        self.accepted_per_minute[minute] += 1
        self.accepted_per_hour[hour_of(transaction.started)] += 1
        self.accepted_per_ip_minute[(ip, minute)] += 1
        for rcpt in transaction.rcpt_to:
            self.delivered[rcpt.lower()] += 1
        self.deliveries.append(Delivery(transaction.started, ip, transaction.mail_from,
                                        list(transaction.rcpt_to)))

    # -- greylisting ----------------------------------------------------------------------

    def _greylist_remaining(self, ip, mail_from, rcpt, now):
        """Seconds the triplet must still wait (<= 0: pass); records a first attempt.
        Postgrey's smtpd_access_policy, without whitelists. Called under self._lock."""
        client = ip
        if self.greylist_subnet is not None:
            client = str(ipaddress.ip_network("%s/%d" % (ip, self.greylist_subnet),
                                              strict=False).network_address)
        sender = mail_from.lower()
        if self.greylist_normalize_sender:
            sender = postgrey_sender(sender)
        triplet = (client, sender, rcpt)
        seen = self._greylist.get(triplet)
        if seen is None:
            first = now
        else:
            first, last = seen
            # A triplet that never passed and whose retry comes after the window starts over.
            if last - first < self.greylist_delay and self.greylist_retry_window is not None \
                    and now - first > self.greylist_retry_window:
                first = now
            first = min(first, now)
        self._greylist[triplet] = (first, now)
        return self.greylist_delay - (now - first)

    # -- observation ----------------------------------------------------------------------

    def delivered_on_attempt(self, rcpt):
        """The 1-based number of the RCPT attempt that was accepted first for `rcpt` (None if
        none was), and the list of attempts."""
        with self._lock:
            attempts = list(self.attempts.get(rcpt.lower(), []))
        for number, attempt in enumerate(attempts, 1):
            if attempt.reply.startswith("2"):
                return number, attempts
        return None, attempts

    def duplicates(self):
        """{recipient: count} for the recipients accepted in more than one message."""
        with self._lock:
            return {rcpt: n for rcpt, n in self.delivered.items() if n > 1}

    def stats(self):
        """A snapshot of the counters, for assertions and failure messages."""
        with self._lock:
            return {
                "accepted": len(self.deliveries),
                "recipients_delivered": len(self.delivered),
                "max_accepted_per_minute": max(self.accepted_per_minute.values(), default=0),
                "max_accepted_per_hour": max(self.accepted_per_hour.values(), default=0),
                "max_connections_seen": self.max_connections_seen,
                "max_connections_seen_per_ip": dict(self.max_connections_seen_per_ip),
                "open_connections": self._open,
                "rate_limit_replies": self.rate_limit_replies,
                "connection_limit_replies": self.connection_limit_replies,
                "greylist_replies": self.greylist_replies,
                "blocklist_replies": self.blocklist_replies,
                "sessions": len(self.sessions),
            }
