"""Past [smtp] max_sessions a new client gets 421 4.7.0 and is closed, while the sessions
already open keep working; once one of them ends, a new client is served again."""

import harness


class TooManySessions421Test(harness.ServerTestCase):
    extra = "[smtp]\nmax_sessions = 2\n"

    def open_session(self):
        session = self.server.raw()
        return session, session.reply()

    def test_third_session_is_refused_then_admitted_after_one_leaves(self):
        first, greeting = self.open_session()
        self.assertEqual(greeting[0], 220, greeting)
        second, greeting = self.open_session()
        self.assertEqual(greeting[0], 220, greeting)

        third, refusal = self.open_session()
        self.assertEqual(refusal[0], 421, refusal)
        self.assertIn("421 4.7.0 ", refusal[1])
        self.assertTrue(third.closed(), "the refused session was left open")
        third.close()

        # The admitted sessions are unaffected.
        self.assertEqual(first.command("NOOP\r\n")[0], 250)
        self.assertEqual(second.command("NOOP\r\n")[0], 250)

        self.assertEqual(first.command("QUIT\r\n")[0], 221)
        self.assertTrue(first.closed())
        first.close()
        # The count drops when the server has closed its side; a few tries bound the wait.
        for _ in range(50):
            fourth, greeting = self.open_session()
            if greeting[0] == 220:
                break
            fourth.close()
        self.assertEqual(greeting[0], 220, greeting)
        self.assertEqual(fourth.command("NOOP\r\n")[0], 250)
        fourth.close()
        second.close()


if __name__ == "__main__":
    harness.main()
