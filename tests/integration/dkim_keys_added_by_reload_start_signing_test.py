"""DKIM keys added to a server that started without any: `facteur dkim keygen` says to add the
[[dkim.key]] and reload, and after `facteur reload` the server signs (it said "restart facteur
to start signing" and went on sending unsigned mail). Mail accepted before the reload stays
unsigned; mail after it carries a signature that dkimpy verifies against the published key."""

import json
import time

import dkim

import harness


class DkimKeysAddedByReloadStartSigningTest(harness.ServerTestCase):
    def submit(self, subject):
        with self.server.smtp() as client:
            client.sendmail("app@asso.test", ["bob@example.test"], harness.simple_message(
                sender="App <app@asso.test>", to="bob@example.test", subject=subject))

    def queued_body(self, subject):
        return harness.queued_message_with_subject(self.server, subject)

    def test_reload_with_the_first_keys_starts_signing(self):
        self.submit("before the keys")
        self.assertNotIn(b"DKIM-Signature", self.queued_body("before the keys"))

        made = json.loads(self.server.cli("dkim", "keygen", "--domain", "asso.test",
                                          "--selector", "first", "--algorithm", "ed25519",
                                          "--json").stdout)
        # With [dkim] settings of its own: the pool starts with them, no restart asked.
        with open(self.server.config_path, "a") as f:
            f.write('\n[dkim]\nthreads = 1\n[[dkim.key]]\ndomain = "asso.test"\n'
                    'selector = "first"\nalgorithm = "ed25519-sha256"\nkey_file = "%s"\n'
                    % made["key_file"])
        self.server.cli("reload")
        harness.wait_until(lambda: "signing starts" in self.server.log(), timeout=10,
                           what="the reload's log line")

        self.submit("after the keys")
        message = self.queued_body("after the keys")
        headers, _ = dkim.rfc822_parse(message)
        found = [dkim.util.parse_tag_value(v) for k, v in headers
                 if k.lower() == b"dkim-signature"]
        self.assertEqual(len(found), 1, message[:1500])
        self.assertEqual((found[0][b"d"], found[0][b"s"]), (b"asso.test", b"first"))
        records = {made["name"]: made["value"]}
        dnsfunc = lambda name, timeout=5: records.get(
            (name.decode() if isinstance(name, bytes) else name).rstrip("."), "").encode()
        self.assertTrue(dkim.DKIM(message).verify(dnsfunc=dnsfunc))
        self.assertNotIn(b"DKIM-Signature", self.queued_body("before the keys"))
        self.assertNotIn("restart", self.server.log())
        self.assertLessEqual(abs(int(found[0][b"t"]) - time.time()), 120)


if __name__ == "__main__":
    harness.main()
