"""On an implicit-TLS listener (port 465 style), a client that connects and never starts its
handshake is closed after the idle timeout, and well-behaved TLS clients are served meanwhile."""

import socket

import harness


class ImplicitTlsSilentClientTimesOutTest(harness.ServerTestCase):
    listeners = [
        {"name": "smtps", "address": "127.0.0.1:0", "role": "submission", "tls": "implicit"},
    ]
    extra = '[smtp]\nidle_timeout = "1s"\n'

    def test_silent_client_is_closed_and_others_are_served(self):
        host, port = self.server.host_port("smtps")
        silent = harness.RawSmtp(socket.create_connection((host, port), timeout=10))
        try:
            with self.server.smtp_ssl("smtps") as client:
                code, _ = client.ehlo("client.example")
                self.assertEqual(code, 250)
            # No handshake, no byte: the server gives up after about a second.
            self.assertTrue(silent.closed(timeout=8), "a silent client was kept open")
        finally:
            silent.close()
        with self.server.smtp_ssl("smtps") as client:
            self.assertEqual(client.noop()[0], 250)


if __name__ == "__main__":
    harness.main()
