"""The simulated providers (provider_sim.py) behave as the receivers they imitate, on the scaled
test clock (test_clock.py): the greylister refuses a triplet's first attempt and an early retry
with Postgrey's 450 4.2.0 and accepts the retry after the delay; the rate limiter answers
Gmail's 421 4.7.28 and closes beyond N messages per calendar minute or hour (over all clients
or per client IP) and lets the next minute through; the connection limiter greets Orange's 421
beyond K open connections per client IP and frees a slot at QUIT; the blocklister refuses listed
IPs at MAIL or RCPT; the counters say what happened; thousands of messages go through quickly.
Driven by smtplib from several loopback source addresses; it needs no facteur binary."""

import os
import smtplib
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provider_sim import ProviderSim, postgrey_sender  # noqa: E402
from smtp_test_server import DROP  # noqa: E402
from test_clock import ScaledClock, hour_of, minute_of  # noqa: E402

MESSAGE = b"From: app@asso.test\r\nTo: someone@provider.test\r\nSubject: hi\r\n\r\nbody\r\n"
SENDER = "app@asso.test"


class FakeRealClock:
    """A real-time source the test moves by hand, to check ScaledClock's arithmetic."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class ScaledClockTest(unittest.TestCase):
    def test_scales_around_the_anchor(self):
        real = FakeRealClock(1000.0)
        clock = ScaledClock(anchor=1000.0, speed=600, real_clock=real)
        self.assertEqual(clock(), 1000.0)
        real.now = 1001.0
        self.assertEqual(clock(), 1600.0)  # one real second is ten test minutes
        real.now = 1000.5
        self.assertEqual(clock(), 1300.0)
        self.assertEqual(clock.real_seconds(300), 0.5)
        self.assertEqual(clock.real_time_at(1600.0), 1001.0)
        self.assertEqual(clock.next_boundary(60), 1320.0)
        self.assertEqual((minute_of(1319.9), minute_of(1320.0), hour_of(7199), hour_of(7200)),
                         (21, 22, 1, 2))

    def test_defaults_to_now_and_sleeps_in_test_time(self):
        clock = ScaledClock(speed=600)
        self.assertAlmostEqual(clock(), time.time(), delta=5)
        began = time.monotonic()
        target = clock() + 120
        clock.sleep_until(target)  # two test minutes: 0.2 s
        self.assertGreaterEqual(clock(), target)
        self.assertLess(time.monotonic() - began, 2.0)
        with self.assertRaises(ValueError):
            ScaledClock(speed=0)


class ProviderSimSelfTest(unittest.TestCase):
    def sim(self, **settings):
        sim = ProviderSim(**settings).start()
        self.addCleanup(sim.stop)
        return sim

    def client(self, sim, source="127.0.0.1", timeout=10):
        client = smtplib.SMTP(sim.host, sim.port, local_hostname="relay.asso.test",
                              timeout=timeout, source_address=(source, 0))
        self.addCleanup(client.close)
        client.ehlo()
        return client

    def rcpt(self, client, rcpt, sender=SENDER):
        """One transaction up to RCPT; returns the RCPT reply, leaves no transaction open."""
        self.assertEqual(client.mail(sender)[0], 250)
        code, text = client.rcpt(rcpt)
        client.rset()
        return code, text.decode()

    # -- greylisting ----------------------------------------------------------------------

    def test_greylister_accepts_the_retry_after_the_delay(self):
        clock = ScaledClock(speed=600)  # 300 test seconds = 0.5 real seconds
        sim = self.sim(clock=clock, greylist_delay=300,
                       rcpt_replies={"nobody@provider.test": "550 5.1.1 no such user"})
        client = self.client(sim)
        code, text = self.rcpt(client, "bob@provider.test")
        self.assertEqual((code, text), (450, "4.2.0 <bob@provider.test>: Recipient address "
                                             "rejected: Greylisted for 300 seconds"))
        # The wait counts from when the simulator saw the first RCPT, not from when the test
        # sent it: at 600x, a slow reply (ASan, a loaded CI machine) is several test seconds.
        first_attempt = sim.attempts["bob@provider.test"][0].time
        # An early retry is greylisted again, and the wait still counts from the first one.
        clock.sleep(100)
        code, text = self.rcpt(client, "bob@provider.test")
        self.assertEqual(code, 450)
        seconds = int(text.split("Greylisted for ")[1].split()[0])
        self.assertLess(seconds, 300 - 50)
        # An unknown user gets the mailbox's answer, not a greylisting.
        self.assertEqual(self.rcpt(client, "nobody@provider.test")[0], 550)

        clock.sleep_until(first_attempt + 300)
        self.assertEqual(client.sendmail(SENDER, ["bob@provider.test"], MESSAGE), {})
        # The triplet stays known: the next message goes straight through.
        self.assertEqual(client.sendmail(SENDER, ["bob@provider.test"], MESSAGE), {})
        client.quit()

        number, attempts = sim.delivered_on_attempt("Bob@Provider.test")
        self.assertEqual(number, 3)
        self.assertEqual(len(attempts), 4)
        self.assertEqual({a.ip for a in attempts}, {"127.0.0.1"})
        self.assertGreaterEqual(attempts[2].time - attempts[0].time, 300)
        self.assertEqual(sim.delivered["bob@provider.test"], 2)
        self.assertEqual(sim.duplicates(), {"bob@provider.test": 2})
        self.assertEqual(sim.greylist_replies, 2)
        self.assertEqual(sim.attempts["nobody@provider.test"][0].reply,
                         "550 5.1.1 no such user")

    def test_retry_from_another_ip_is_a_new_triplet(self):
        clock = ScaledClock(speed=600)
        sim = self.sim(clock=clock, greylist_delay=300)
        # Two recipients in one transaction: only the one already waited for passes.
        self.assertEqual(self.rcpt(self.client(sim), "old@provider.test")[0], 450)
        clock.sleep(301)
        client = self.client(sim)
        refused = client.sendmail(SENDER, ["old@provider.test", "new@provider.test"], MESSAGE)
        self.assertEqual(list(refused), ["new@provider.test"])
        self.assertEqual(refused["new@provider.test"][0], 450)
        # The retry of new@ comes from another address: greylisted as a first attempt.
        clock.sleep(301)
        other = self.client(sim, source="127.0.0.2")
        code, text = self.rcpt(other, "new@provider.test")
        self.assertEqual(code, 450)
        self.assertIn("Greylisted for 300 seconds", text)
        # ... and so is another sender from the first address.
        self.assertEqual(self.rcpt(client, "new@provider.test", sender="x@asso.test")[0], 450)
        # The same sender from the first address has waited long enough.
        self.assertEqual(client.sendmail(SENDER, ["new@provider.test"], MESSAGE), {})
        number, attempts = sim.delivered_on_attempt("new@provider.test")
        self.assertEqual(number, 4)
        self.assertEqual([a.ip for a in attempts],
                         ["127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.1"])
        self.assertEqual(sim.delivered, {"old@provider.test": 1, "new@provider.test": 1})

    def test_postgrey_keys_subnet_and_normalised_sender(self):
        clock = ScaledClock(speed=600)
        sim = self.sim(clock=clock, greylist_delay=300, greylist_subnet=24,
                       greylist_normalize_sender=True)
        self.assertEqual(postgrey_sender("bounce+1234-bob=x.test@asso.test"), "bounce@asso.test")
        self.assertEqual(postgrey_sender("list-42-x@asso.test"), "list-#-x@asso.test")
        self.assertEqual(self.rcpt(self.client(sim, source="127.0.0.5"), "bob@provider.test",
                                   sender="bounce+1@asso.test")[0], 450)
        clock.sleep(301)
        # Another address of the /24, another VERP token: the same triplet for Postgrey.
        self.assertEqual(self.rcpt(self.client(sim, source="127.0.0.6"), "bob@provider.test",
                                   sender="bounce+2@asso.test")[0], 250)

    def test_greylist_retry_window(self):
        clock = ScaledClock(speed=6000)
        sim = self.sim(clock=clock, greylist_delay=300, greylist_retry_window=3000)
        client = self.client(sim)
        self.assertEqual(self.rcpt(client, "late@provider.test")[0], 450)
        clock.sleep(3100)  # the first retry comes after the window: it starts over
        self.assertEqual(self.rcpt(client, "late@provider.test")[0], 450)
        clock.sleep(301)
        self.assertEqual(self.rcpt(client, "late@provider.test")[0], 250)

    # -- rate limiting --------------------------------------------------------------------

    def test_rate_limit_per_minute(self):
        clock = ScaledClock(speed=30)  # a test minute is 2 real seconds
        sim = self.sim(clock=clock, rate_limit_per_minute=3)
        clock.sleep_until(clock.next_boundary(60) + 1)
        minute = minute_of(clock())
        client = self.client(sim)
        for i in range(3):
            self.assertEqual(client.sendmail(SENDER, ["r%d@provider.test" % i], MESSAGE), {})
        code, text = client.mail(SENDER)
        self.assertEqual(code, 421)
        self.assertTrue(text.decode().startswith(
            "4.7.28 [127.0.0.1] Our system has detected an unusual rate of unsolicited mail"))
        self.assertLess(minute_of(clock()), minute + 1, "the machine is too slow for this test")
        # The server closed the connection after its 421.
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            client.noop()
        # Another client in the same minute is limited too (the count is over every client).
        with self.assertRaises(smtplib.SMTPSenderRefused) as refused:
            self.client(sim, source="127.0.0.2").sendmail(SENDER, ["x@provider.test"], MESSAGE)
        self.assertEqual(refused.exception.smtp_code, 421)
        # The next calendar minute lets mail through again.
        clock.sleep_until((minute + 1) * 60)
        self.assertEqual(self.client(sim).sendmail(SENDER, ["r3@provider.test"], MESSAGE), {})
        self.assertEqual(sim.accepted_per_minute, {minute: 3, minute + 1: 1})
        self.assertEqual(sim.rate_limit_replies, 2)
        self.assertEqual(sim.stats()["max_accepted_per_minute"], 3)

    def test_rate_limit_per_ip_and_per_hour(self):
        clock = ScaledClock(speed=1800)  # a test hour is 2 real seconds
        sim = self.sim(clock=clock, rate_limit_per_hour=2, rate_limit_per_ip=True)
        clock.sleep_until(clock.next_boundary(3600) + 10)
        hour = hour_of(clock())
        one, two = self.client(sim), self.client(sim, source="127.0.0.2")
        for client in (one, two):
            for i in range(2):
                self.assertEqual(client.sendmail(SENDER, ["h%d@provider.test" % i], MESSAGE), {})
        self.assertEqual(one.mail(SENDER)[0], 421)
        code, text = two.mail(SENDER)
        self.assertEqual(code, 421)
        self.assertIn(b"[127.0.0.2]", text)
        self.assertEqual(hour_of(clock()), hour, "the machine is too slow for this test")
        clock.sleep_until((hour + 1) * 3600)
        self.assertEqual(self.client(sim).sendmail(SENDER, ["h@provider.test"], MESSAGE), {})
        self.assertEqual(sim.accepted_per_hour, {hour: 4, hour + 1: 1})
        self.assertEqual(sum(sim.accepted_per_ip_minute.values()), 5)
        self.assertEqual(sim.rate_limit_replies, 2)

    # -- connections ----------------------------------------------------------------------

    def test_connection_limit_per_ip(self):
        sim = self.sim(max_connections=2)
        first, second = self.client(sim), self.client(sim)
        with self.assertRaises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(sim.host, sim.port, timeout=10, source_address=("127.0.0.1", 0))
        self.assertEqual(refused.exception.smtp_code, 421)
        self.assertEqual(refused.exception.smtp_error,
                         b"4.7.0 Too many connections, slow down. OFR005_104")
        # Another client IP has its own allowance.
        self.client(sim, source="127.0.0.2")
        # QUIT frees the slot before its reply: reconnecting at once is accepted.
        first.quit()
        third = self.client(sim)
        self.assertEqual(third.sendmail(SENDER, ["c@provider.test"], MESSAGE), {})
        stats = sim.stats()
        self.assertEqual(stats["connection_limit_replies"], 1)
        self.assertEqual(stats["max_connections_seen"], 3)
        self.assertEqual(stats["max_connections_seen_per_ip"],
                         {"127.0.0.1": 2, "127.0.0.2": 1})
        # A client that just goes away stops counting too.
        second.close()
        third.close()
        sim.wait_for(lambda: sim.stats()["open_connections"] == 1)

    def test_connection_limit_over_all_clients(self):
        sim = self.sim(max_connections=1, connection_limit_per_ip=False,
                       connection_limit_reply="421 4.7.0 busy, {ip}")
        self.client(sim)
        with self.assertRaises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(sim.host, sim.port, timeout=10, source_address=("127.0.0.2", 0))
        self.assertEqual(refused.exception.smtp_error, b"4.7.0 busy, 127.0.0.2")
        self.assertEqual(sim.connection_limit_replies, 1)

    # -- blocklisting ---------------------------------------------------------------------

    def test_blocklist_at_mail_and_at_rcpt(self):
        sim = self.sim(blocklist={"127.0.0.3"})
        with self.assertRaises(smtplib.SMTPSenderRefused) as refused:
            self.client(sim, source="127.0.0.3").sendmail(SENDER, ["b@provider.test"], MESSAGE)
        self.assertEqual(refused.exception.smtp_code, 550)
        self.assertEqual(refused.exception.smtp_error,
                         b"5.7.1 Service unavailable; client [127.0.0.3] blocked using "
                         b"zen.spamhaus.org")
        self.assertEqual(self.client(sim).sendmail(SENDER, ["b@provider.test"], MESSAGE), {})

        sim.blocklist_at = "RCPT"
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            self.client(sim, source="127.0.0.3").sendmail(SENDER, ["c@provider.test"], MESSAGE)
        self.assertEqual(sim.blocklist_replies, 2)
        self.assertTrue(sim.attempts["c@provider.test"][0].reply.startswith("550 5.7.1 "))
        self.assertEqual(set(sim.delivered), {"b@provider.test"})

    # -- the base server is still there ---------------------------------------------------

    def test_base_settings_and_clock_stamps(self):
        clock = ScaledClock(speed=600)
        sim = self.sim(clock=clock, greylist_delay=300,
                       rcpt_replies={"gone@provider.test": DROP})
        client = self.client(sim)
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            client.sendmail(SENDER, ["gone@provider.test"], MESSAGE)
        self.assertEqual(sim.attempts["gone@provider.test"][0].reply, DROP)
        before = clock()
        clock.sleep(301)
        self.rcpt(self.client(sim), "t@provider.test")
        clock.sleep(301)
        client = self.client(sim)
        self.assertEqual(client.sendmail(SENDER, ["t@provider.test"], MESSAGE), {})
        t = sim.accepted()[0]
        self.assertLessEqual(before, t.started)
        self.assertLessEqual(t.started, t.finished)
        self.assertLessEqual(t.finished, clock())
        self.assertEqual(sim.deliveries[0].time, t.started)
        self.assertLessEqual(sim.sessions[-1].opened_at, t.started)

    # -- volume ---------------------------------------------------------------------------

    def test_thousands_of_messages(self):
        clock = ScaledClock(speed=600)
        sim = self.sim(clock=clock, greylist_delay=300, rate_limit_per_minute=100000,
                       max_connections=8)
        connections, per_connection = 8, 250
        errors = []
        began = time.monotonic()

        def send(n):
            try:
                with smtplib.SMTP(sim.host, sim.port, timeout=30) as client:
                    for i in range(per_connection):
                        rcpt = "u%d-%d@provider.test" % (n, i)
                        try:
                            client.sendmail(SENDER, [rcpt], MESSAGE)
                        except smtplib.SMTPRecipientsRefused as e:
                            errors.append(e.recipients[rcpt])
            except Exception as e:  # noqa: BLE001 — reported below
                errors.append(e)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - began
        total = connections * per_connection
        # Every first attempt was greylisted.
        self.assertEqual(len(errors), total, errors[:3])
        self.assertEqual({code for code, _ in errors}, {450})
        self.assertEqual(sim.greylist_replies, total)
        sys.stderr.write("%d greylisted attempts in %.2fs (%.0f/s)\n" % (
            total, elapsed, total / elapsed))
        clock.sleep(301)
        errors.clear()
        began = time.monotonic()
        threads = [threading.Thread(target=send, args=(n,)) for n in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        elapsed = time.monotonic() - began
        self.assertEqual(errors, [])
        sim.wait_for(lambda: len(sim.delivered) == total)
        sys.stderr.write("%d messages accepted in %.2fs (%.0f/s)\n" % (
            total, elapsed, total / elapsed))
        self.assertEqual(sim.duplicates(), {})
        self.assertEqual(sum(sim.accepted_per_minute.values()), total)
        stats = sim.stats()
        self.assertEqual(stats["connection_limit_replies"], 0)
        self.assertEqual(stats["rate_limit_replies"], 0)
        self.assertLessEqual(stats["max_connections_seen"], connections)
        self.assertEqual(sim.delivered_on_attempt("u3-17@provider.test")[0], 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
