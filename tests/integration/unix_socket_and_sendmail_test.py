"""Local applications submit through the Unix socket without AUTH (issue #2 points 3 and 7):
raw SMTP over the socket, and `facteur sendmail -t -i` the way PHP's mail() and cron call
sendmail (LF line ends, recipients from To/Cc/Bcc, Bcc removed); exit 0 once queued, and 75
(EX_TEMPFAIL) when the server is down. Also as cron calls it (domainless addresses), with the
null sender, address-list arguments, an mbox "From " line, and past the server's recipient
limit."""

import base64
import email
import email.policy
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

EX_TEMPFAIL = 75
EX_DATAERR = 65

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
        # No AUTH on the socket: the user and process that connected are what traces it.
        self.assertRegex(shown["client"], r"^unix uid=%d pid=\d+$" % os.getuid())
        body = self.server.cli("queue", "show", message_id, "--body").stdout
        self.assertIn(b"(local socket, uid %d)" % os.getuid(), body)

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

    def body_of(self, entry):
        return self.server.cli("queue", "show", entry["id"], "--body").stdout.replace(
            b"\r\n", b"\n")

    def test_every_bcc_field_is_dropped_with_or_without_t(self):
        message = (b"From: app@asso.example\nTo: to@example.com\nBcc: b1@example.com\n"
                   b"bcc: b2@example.com,\n b3@example.com\nResent-Bcc: b4@example.com\n"
                   b"Subject: blind\n\nbody\n")
        result = self.server.cli("sendmail", "-t", "-i", input=message, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        result = self.server.cli("sendmail", "-i", "other@example.com", input=message,
                                 check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        listed = sorted(self.messages(), key=lambda m: len(m["recipients"]))
        self.assertEqual([sorted(m["recipients"]) for m in listed], [
            ["other@example.com"],
            ["b1@example.com", "b2@example.com", "b3@example.com", "to@example.com"]])
        for entry in listed:
            body = self.body_of(entry)
            for hidden in (b"b1@", b"b2@", b"b3@", b"b4@", b"Bcc:", b"bcc:"):
                self.assertNotIn(hidden, body)
            self.assertIn(b"\nTo: to@example.com\nSubject: blind\n", body)

    def test_sendmail_as_cron_calls_it(self):
        # Debian's cron: sendmail -FCronDaemon -i -B8BITMIME -oem root, with domainless
        # addresses in From: and To:. They get @hostname, as Postfix's append_at_myorigin does.
        message = (b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> df\n"
                   b"Content-Type: text/plain; charset=UTF-8\n\n/dev/vda1 91%\n")
        result = self.server.cli("sendmail", "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root",
                                 input=message, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        [entry] = self.messages()
        self.assertEqual(entry["recipients"], ["root@relay.test.example"])
        self.assertTrue(entry["sender"].endswith("@relay.test.example"), entry)
        body = self.body_of(entry)
        self.assertIn(b"\nFrom: root@relay.test.example (Cron Daemon)\n", body)
        self.assertIn(b"\nTo: root@relay.test.example\n", body)
        self.assertIn(b"\nDate: ", body)
        self.assertIn(b"\nMessage-ID: <", body)

    def test_sendmail_t_with_an_unreadable_recipient_field_queues_nothing(self):
        message = b"To: ok@example.com, bad@@example.com\nSubject: x\n\nbody\n"
        result = self.server.cli("sendmail", "-t", input=message, check=False)
        self.assertEqual(result.returncode, 65, result.stderr)  # EX_DATAERR
        self.assertIn(b"To:", result.stderr)
        # An empty group names nobody: not an error.
        message = b"To: undisclosed-recipients:;\nBcc: hidden@example.com\nSubject: x\n\nb\n"
        result = self.server.cli("sendmail", "-t", input=message, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([m["recipients"] for m in self.messages()], [["hidden@example.com"]])

    def test_sendmail_null_sender_address_lists_and_ignored_options(self):
        # -f '' is the null sender (autoresponders); each argument is an address list; -O and
        # -p take a separate value, which is not a recipient.
        result = self.server.cli("sendmail", "-f", "", "-O", "LogLevel=9", "-p", "local",
                                 "i@example.com, j@example.com", "Bob <bob@example.com>",
                                 input=b"Subject: vacation\n\naway\n", check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        [entry] = self.messages()
        self.assertEqual(entry["sender"], "")
        self.assertEqual(sorted(entry["recipients"]),
                         ["bob@example.com", "i@example.com", "j@example.com"])
        # No From: in the message: the invoking user's address, never none.
        self.assertRegex(self.body_of(entry), rb"\nFrom: [^\n]+@relay\.test\.example\n")

    def test_sendmail_edge_cases_of_php_and_scripts(self):
        # A body with no header at all stays a body, after the fields sendmail adds.
        result = self.server.cli("sendmail", "-i", "ops@example.com", input=b"hello\nworld\n",
                                 check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        # PHP's mail('', ...) with only Bcc: an empty To: names nobody, it is no error; the
        # address named twice is sent to once.
        result = self.server.cli("sendmail", "-t", "-i", input=(
            b"To: \nCc: undisclosed-recipients: (none);\nBcc: hidden@example.com, hidden@EXAMPLE.COM\n"
            b"Subject: php\n\nbody\n"), check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        # Domainless addresses in a long folded To: and in From:, with long body lines: the
        # rewritten fields stay folded, and the text around them intact.
        long_to = b",\n ".join(b"user%02d@example.com" % i for i in range(60)) + b",\n root"
        body = b"".join(b"line %03d " % i + b"x" * 70 + b"\n" for i in range(200))
        result = self.server.cli("sendmail", "-t", "-i", input=(
            b"From: root\nTo: " + long_to + b"\nSubject: long\n\n" + body), check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        listed = {tuple(sorted(m["recipients"])): m for m in self.messages()}
        self.assertEqual(len(listed), 3, listed)
        plain = self.body_of(listed[("ops@example.com",)])
        self.assertIn(b"\nMessage-ID: <", plain)
        self.assertRegex(plain, rb"\nMessage-ID: <[^\n]+>\n\nhello\nworld\n$")
        self.assertIn(("hidden@example.com",), listed)
        many = [r for r in listed if len(r) > 1][0]
        self.assertEqual(len(many), 61)
        self.assertIn("root@relay.test.example", many)
        text = self.body_of(listed[many])
        self.assertIn(b"\nFrom: root@relay.test.example\n", text)
        self.assertIn(b"user59@example.com,\n root@relay.test.example\nSubject: long\n", text)
        self.assertTrue(text.endswith(b"\n\n" + body), text[-300:])
        self.assertLess(max(len(line) for line in text.split(b"\n")), 100)

    def test_sendmail_f_and_F_from_a_web_form_cannot_add_commands_or_fields(self):
        # PHP's mail() with "-f $email" or "-F $name" taken from a form: a line end in them
        # must not add an SMTP command (another RCPT) or a header field (a Bcc:).
        result = self.server.cli(
            "sendmail", "-f", "web@asso.example>\r\nRCPT TO:<victim@example.com",
            "to@example.com", input=b"Subject: form\n\nhi\n", check=False)
        self.assertEqual(result.returncode, 64, result.stderr)
        self.assertIn(b"-f: not a mail address", result.stderr)
        self.assertEqual(self.messages(), [])
        result = self.server.cli(
            "sendmail", "-f", "web@asso.example",
            "-F", 'Eve "the boss" \\\r\nBcc: victim@example.com', "to@example.com",
            input=b"Subject: form\n\nhi\n", check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        [entry] = self.messages()
        self.assertEqual(entry["recipients"], ["to@example.com"])
        body = self.body_of(entry)
        self.assertIn(b'\nFrom: "Eve \\"the boss\\" \\\\  Bcc: victim@example.com" '
                      b'<web@asso.example>\n', body)
        self.assertNotIn(b"\nBcc:", body)
        # A name in UTF-8 goes as RFC 2047 encoded-words.
        first = entry["id"]
        seen = {first}
        name = "Élodie Durand-Lefèvre de la Société des Anciens Élèves"
        result = self.server.cli("sendmail", "-f", "web@asso.example", "-F", name,
                                 "to@example.com", input=b"Subject: form\n\nhi\n", check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        [entry] = [m for m in self.messages() if m["id"] != first]
        seen.add(entry["id"])
        body = self.body_of(entry)
        field = re.search(rb"\nFrom:((?:[^\n]*\n[ \t])*[^\n]*)\n", body).group(1)
        # Folded (RFC 5322 §2.1.1): no line of it past 78 characters.
        self.assertLessEqual(max(len(line) for line in (b"From:" + field).split(b"\n")), 78)
        words = field.replace(b"\n", b"").split()[:-1]
        self.assertEqual(field.split()[-1], b"<web@asso.example>")
        self.assertGreater(len(words), 1)
        decoded = b""
        for word in words:
            self.assertTrue(word.startswith(b"=?UTF-8?B?") and word.endswith(b"?="), word)
            self.assertLessEqual(len(word), 75)
            decoded += base64.b64decode(word[len(b"=?UTF-8?B?"):-2])
        self.assertEqual(decoded.decode("utf-8"), name)
        # Octets that begin no character, and a long ASCII name: encoded or quoted all the same,
        # folded, and cut at 256 octets.
        for full_name, expected in ((b"\xe2" + b"\x80" * 100, None),
                                    ("word " * 80, b'"' + b"word " * 51 + b'w"')):
            result = self.server.cli("sendmail", "-f", "web@asso.example", "-F", full_name,
                                     "to@example.com", input=b"Subject: x\n\nhi\n", check=False)
            self.assertEqual(result.returncode, 0, result.stderr)
            [entry] = [m for m in self.messages() if m["id"] not in seen]
            seen.add(entry["id"])
            field = re.search(rb"\nFrom:((?:[^\n]*\n[ \t])*[^\n]*)\n",
                              self.body_of(entry)).group(1)
            self.assertLessEqual(max(len(line) for line in (b"From:" + field).split(b"\n")), 78)
            if expected is not None:
                self.assertEqual(field.replace(b"\n", b"").strip(),
                                 expected + b" <web@asso.example>")

    def test_sendmail_takes_lines_longer_than_smtp_allows(self):
        # PHP's mail() with an HTML body on one line, and a multipart one: the server refuses
        # lines over 1,000 octets (500 5.5.6), so sendmail re-encodes them; what the reader
        # sees is the same text.
        html = "<p>" + "Bonne ann\u00e9e \u00e0 tous, = " * 300 + "</p>"
        message = ("From: www@asso.example\nTo: bob@example.com\nSubject: greetings\n"
                   "Content-Type: text/html; charset=utf-8\n\n" + html + "\n").encode()
        result = self.server.cli("sendmail", "-t", "-i", input=message, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        alternative = ("From: www@asso.example\nTo: carol@example.com\nMIME-Version: 1.0\n"
                       "Content-Type: multipart/alternative; boundary=\"b1\"\n\n"
                       "--b1\nContent-Type: text/plain; charset=utf-8\n\nshort\n"
                       "--b1\nContent-Type: text/html; charset=utf-8\n"
                       "Content-Transfer-Encoding: 8bit\n\n" + html + "\n--b1--\n").encode()
        result = self.server.cli("sendmail", "-t", "-i", input=alternative, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        bodies = {}
        for entry in self.messages():
            bodies[entry["recipients"][0]] = self.server.cli(
                "queue", "show", entry["id"], "--body").stdout
        for body in bodies.values():
            self.assertLessEqual(max(len(line) for line in body.split(b"\r\n")), 998)
        parsed = email.message_from_bytes(bodies["bob@example.com"], policy=email.policy.default)
        self.assertEqual(parsed["Content-Transfer-Encoding"], "quoted-printable")
        # (Python keeps the CRLFs of the bytes it parsed in what it decodes.)
        self.assertEqual(parsed.get_content().replace("\r\n", "\n").rstrip("\n"), html)
        parsed = email.message_from_bytes(bodies["carol@example.com"],
                                          policy=email.policy.default)
        parts = [part.get_content().replace("\r\n", "\n").rstrip("\n")
                 for part in parsed.iter_parts()]
        self.assertEqual(parts, ["short", html])

    def test_sendmail_folds_header_lines_longer_than_smtp_allows(self):
        # A To: naming sixty members on one line (2,000 octets): folded at the white space
        # after its commas, so the server takes it and every reader unfolds the same list.
        members = [f"Member {i} <member{i}@example.com>" for i in range(60)]
        message = ("From: www@asso.example\nTo: " + ", ".join(members) +
                   "\nSubject: greetings\n\nHappy new year.\n").encode()
        result = self.server.cli("sendmail", "-t", "-i", input=message, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        entries = self.messages()
        self.assertEqual(sorted(r for entry in entries for r in entry["recipients"]),
                         sorted(f"member{i}@example.com" for i in range(60)))
        body = self.body_of(entries[0])
        header = body.split(b"\n\n")[0]
        self.assertLessEqual(max(len(line) for line in header.split(b"\n")), 78, header)
        parsed = email.message_from_bytes(body, policy=email.policy.default)
        self.assertEqual([str(address) for address in parsed["To"].addresses], members)
        self.assertEqual(parsed.get_content().strip(), "Happy new year.")

        # No white space to fold at: said before anything is sent, with the line.
        result = self.server.cli("sendmail", "a@example.com", input=(
            b"Subject: x\nX-Token: " + b"t" * 1200 + b"\n\nbody\n"), check=False)
        self.assertEqual(result.returncode, EX_DATAERR, result.stderr)
        self.assertIn(b"line 2 of the message is longer than SMTP allows", result.stderr)
        self.assertEqual(len(self.messages()), len(entries))

    def test_common_options_before_sendmail_are_not_recipients(self):
        # "facteur --config F sendmail -i -- a@x": the options go before the "--", whatever
        # their form; after it they would be recipients (--config@HOSTNAME).
        for config in (["--config", self.server.config_path],
                       ["--config=" + self.server.config_path]):
            result = subprocess.run([harness.BINARY] + config + ["sendmail", "-i", "--",
                                                                 "a@example.com"],
                                    input=b"Subject: x\n\nbody\n", capture_output=True,
                                    timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([m["recipients"] for m in self.messages()],
                         [["a@example.com"], ["a@example.com"]])

    def test_sendmail_keeps_an_obsolete_from_field(self):
        # "From : a@x" (RFC 5322 §4.5.8) is a field, not an mbox "From " line.
        result = self.server.cli("sendmail", "-t", input=(
            b"From : someone@example.org\nTo: a@example.com\nSubject: obs\n\nbody\n"),
            check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        [entry] = self.messages()
        self.assertIn(b"\nFrom : someone@example.org\n", self.body_of(entry))

    def test_sendmail_drops_a_leading_mbox_from_line(self):
        message = (b"From someone@example.org Sat Dec  5 10:00:00 2026\n"
                   b"From: someone@example.org\nTo: a@example.com\nSubject: patch\n\nbody\n")
        result = self.server.cli("sendmail", "-t", input=message, check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        [entry] = self.messages()
        self.assertEqual(entry["recipients"], ["a@example.com"])
        body = self.body_of(entry)
        self.assertIn(b"\nFrom: someone@example.org\nTo: a@example.com\nSubject: patch\n", body)
        self.assertNotIn(b"From someone", body)

    def test_a_message_queued_for_some_recipients_exits_0_and_names_the_others(self):
        # PHP's mail() reads a non-zero status as "not sent" and scripts retry: the recipients
        # that have the message would get it twice.
        self.server.cli("suppression", "add", "gone@example.com")
        result = self.server.cli("sendmail", "gone@example.com", "kept@example.com",
                                 input=b"Subject: partly\n\nbody\n", check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"<gone@example.com>", result.stderr)
        self.assertIn(b"queued for 1 of 2 recipients", result.stderr)
        listed = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
        self.assertIn(["kept@example.com"], [m["recipients"] for m in listed])
        # Nobody taken: the status still says so.
        result = self.server.cli("sendmail", "gone@example.com",
                                 input=b"Subject: none\n\nbody\n", check=False)
        self.assertEqual(result.returncode, 69, result.stderr)

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


class SendmailAsAnApplicationUserTest(harness.unittest.TestCase):
    """The layout of deploy/systemd/facteur.service: the data directory is private to the
    service (mode 0700, as DynamicUser's /var/lib/private), the socket is in a runtime
    directory of mode 0755 (/run/facteur) and the configuration is readable by all
    (/etc/facteur). A web application's user (nobody) calls sendmail through a link named
    sendmail, as /usr/sbin/sendmail would be."""

    def setUp(self):
        self.public = tempfile.mkdtemp(prefix="facteur-run-")
        self.addCleanup(shutil.rmtree, self.public, True)
        os.chmod(self.public, 0o755)
        self.socket = os.path.join(self.public, "facteur.sock")
        self.server = harness.Facteur(listeners=[
            {"name": "local", "address": "unix:" + self.socket},
            {"name": "private", "address": "unix:facteur.sock"},  # in the data directory
        ])
        self.addCleanup(self.server.cleanup)
        self.server.start()
        os.chmod(self.server.data_dir, 0o700)
        self.config = os.path.join(self.public, "facteur.toml")
        shutil.copy(self.server.config_path, self.config)
        os.chmod(self.config, 0o644)
        self.sendmail = os.path.join(self.public, "sendmail")
        os.symlink(os.path.abspath(harness.BINARY), self.sendmail)

    def as_nobody(self, *args):
        return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               self.sendmail, "--config", self.config] + list(args),
                              input=b"From: www@asso.example\nTo: bob@example.com\n"
                                    b"Subject: from php\n\nhello\n",
                              capture_output=True, timeout=60)

    def test_an_application_user_submits_through_the_runtime_directory(self):
        result = self.as_nobody("-t", "-i")
        self.assertEqual(result.returncode, 0, result)
        listed = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
        self.assertEqual([m["recipients"] for m in listed], [["bob@example.com"]])
        shown = json.loads(self.server.cli("queue", "show", listed[0]["id"], "--json").stdout)
        self.assertRegex(shown["client"], r"^unix uid=%d pid=\d+$" % pwd.getpwnam("nobody").pw_uid)
        # Why the unit does not leave the socket in the data directory: there, the same user
        # cannot reach it, and sendmail can only say to try later.
        private = os.path.join(self.server.data_dir, "facteur.sock")
        self.assertTrue(os.path.exists(private))
        result = self.as_nobody("--socket", private, "-t", "-i")
        self.assertEqual(result.returncode, EX_TEMPFAIL, result)
        self.assertIn(b"Permission denied", result.stderr)


class SendmailPastTheRecipientLimitTest(harness.ServerTestCase):
    """RFC 5321 §4.5.3.1.10: recipients the server refuses 452 (too many for one message) go
    in another transaction; sendmail does that itself, and every one gets the same message."""

    listeners = LISTENERS
    extra = "[smtp]\nmax_recipients = 2\n"

    def test_five_recipients_take_three_transactions(self):
        recipients = ["r%d@example.com" % i for i in range(5)]
        before = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
        result = self.server.cli("sendmail", *recipients, input=b"Subject: many\n\nbody\n",
                                 check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        listed = [m for m in json.loads(self.server.cli("queue", "ls", "--json").stdout)[
            "messages"] if m not in before]
        self.assertEqual(sorted(len(m["recipients"]) for m in listed), [1, 2, 2])
        self.assertEqual(sorted(r for m in listed for r in m["recipients"]), recipients)
        ids = set()
        for entry in listed:
            body = self.server.cli("queue", "show", entry["id"], "--body").stdout
            ids.add(body.split(b"\r\nMessage-ID: ", 1)[1].split(b"\r\n", 1)[0])
        self.assertEqual(len(ids), 1, ids)  # one message, in three transactions

    def test_a_recipient_named_twice_past_the_limit_gets_one_copy(self):
        before = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
        result = self.server.cli("sendmail", "-t", input=(
            b"To: x1@example.com, x2@example.com\nCc: x3@example.com, x1@Example.COM\n"
            b"Subject: twice\n\nbody\n"), check=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        listed = json.loads(self.server.cli("queue", "ls", "--json").stdout)["messages"]
        added = [r for m in listed if m not in before for r in m["recipients"]]
        self.assertEqual(sorted(added), ["x1@example.com", "x2@example.com", "x3@example.com"])


if __name__ == "__main__":
    harness.main()
