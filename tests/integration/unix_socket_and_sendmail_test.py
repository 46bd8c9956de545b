"""Local applications submit through the Unix socket without AUTH (issue #2 points 3 and 7):
raw SMTP over the socket, and `facteur sendmail -t -i` the way PHP's mail() and cron call
sendmail (LF line ends, recipients from To/Cc/Bcc, Bcc removed); exit 0 once queued, and 75
(EX_TEMPFAIL) when the server is down."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

EX_TEMPFAIL = 75

LISTENERS = [
    {"name": "relay", "address": "127.0.0.1:0", "role": "relay", "tls": "none"},
    # A submission role: the Unix socket is trusted all the same (issue #2 point 6).
    {"name": "local", "address": "unix:facteur.sock", "role": "submission"},
]


class UnixSocketAndSendmailTest(harness.unittest.TestCase):
    def setUp(self):
        self.server = harness.Facteur(listeners=LISTENERS)
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def count(self):
        return int(self.server.cli("queue", "count").stdout)

    def messages(self):
        return json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]

    def test_endpoints_name_the_socket(self):
        path = self.server.socket_path()
        self.assertTrue(os.path.isabs(path), path)
        self.assertEqual(self.server.listener("local")["address"], "unix:" + path)
        self.assertEqual(path, os.path.join(self.server.data_dir, "facteur.sock"))

    def test_raw_smtp_over_the_socket_without_auth(self):
        raw = self.server.raw_unix()
        self.addCleanup(raw.close)
        self.assertEqual(raw.reply(), (220, "220 relay.test.example ESMTP facteur\r\n"))
        code, text = raw.command("EHLO localhost\r\n")
        self.assertEqual(code, 250)
        self.assertIn("AUTH PLAIN LOGIN", text)  # offered without TLS on the socket
        self.assertNotIn("STARTTLS", text)
        self.assertEqual(raw.command("MAIL FROM:<cron@asso.example>\r\n")[1][:9], "250 2.1.0")
        self.assertEqual(raw.command("RCPT TO:<admin@example.com>\r\n")[1][:9], "250 2.1.5")
        self.assertEqual(raw.command("DATA\r\n")[0], 354)
        code, text = raw.command(harness.simple_message(subject="from cron") + b".\r\n")
        self.assertTrue(text.startswith("250 2.0.0 Ok: queued as "), text)
        message_id = harness.queued_id(text)
        shown = json.loads(self.server.cli("queue", "show", message_id, "--json").stdout)
        self.assertEqual(shown["sender"], "cron@asso.example")
        self.assertEqual(shown["recipients"], ["admin@example.com"])
        self.assertEqual(shown["listener"], "local")
        body = self.server.cli("queue", "show", message_id, "--body").stdout
        self.assertIn(b"(local socket)", body)

    def test_sendmail_t_i_reads_recipients_and_drops_bcc(self):
        message = (b"From: Web App <www@asso.example>\n"
                   b"To: Bob <bob@example.com>, carol@example.org\n"
                   b"Cc: dave@example.net\n"
                   b"Bcc: hidden@example.com\n"
                   b"Subject: from php\n"
                   b"\n"
                   b"Line one\n"
                   b".\n"  # with -i a lone dot is text, not the end
                   b"Line three\n")
        result = self.server.cli("sendmail", "-t", "-i", "-f", "www@asso.example",
                                 input=message, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        listed = self.messages()
        self.assertEqual(len(listed), 1, listed)
        entry = listed[0]
        self.assertEqual(entry["sender"], "www@asso.example")
        self.assertEqual(sorted(entry["recipients"]), ["bob@example.com", "carol@example.org",
                                                       "dave@example.net", "hidden@example.com"])
        body = self.server.cli("queue", "show", entry["id"], "--body").stdout
        self.assertNotIn(b"hidden@example.com", body)
        self.assertNotIn(b"Bcc:", body)
        self.assertIn(b"Cc: dave@example.net", body)
        self.assertIn(b"Subject: from php", body)
        normalized = body.replace(b"\r\n", b"\n")
        self.assertIn(b"Line one\n.\nLine three\n", normalized)

    def test_sendmail_with_explicit_socket_and_recipient(self):
        result = self.server.cli("sendmail", "--socket", self.server.socket_path(), "-i",
                                 "ops@example.com", input=b"Subject: disk\n\nalmost full\n",
                                 check=False, data_dir=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        listed = self.messages()
        self.assertEqual([m["recipients"] for m in listed], [["ops@example.com"]])

    def test_sendmail_modes_other_than_sending_queue_nothing(self):
        # -bi (newaliases, which package scripts call): nothing to do, exit 0. -bs (SMTP on
        # standard input) and -bp (the queue) are other modes: refused, standard input unsent.
        result = self.server.cli("sendmail", "-bi", input=b"", check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        for mode in ("-bs", "-bp"):
            result = self.server.cli("sendmail", mode, "rcpt@example.com",
                                     input=b"EHLO x\r\nQUIT\r\n", check=False)
            self.assertEqual(result.returncode, 64, (mode, result.stderr))
            self.assertIn(b"not supported", result.stderr)
        result = self.server.cli("sendmail", "-bm", "rcpt@example.com",
                                 input=b"Subject: -bm\n\nthe default mode\n", check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([m["recipients"] for m in self.messages()], [["rcpt@example.com"]])

    def test_sendmail_exits_75_when_the_server_is_down(self):
        socket_path = self.server.socket_path()
        self.assertEqual(self.server.stop(), 0)
        result = self.server.cli("sendmail", "rcpt@example.com", input=b"Subject: x\n\nbody\n",
                                 check=False)
        self.assertEqual(result.returncode, EX_TEMPFAIL, (result.stdout, result.stderr))
        result = self.server.cli("sendmail", "--socket", socket_path, "rcpt@example.com",
                                 input=b"Subject: x\n\nbody\n", check=False, data_dir=False)
        self.assertEqual(result.returncode, EX_TEMPFAIL, (result.stdout, result.stderr))
        self.assertEqual(self.count(), 0)


if __name__ == "__main__":
    harness.main()
