"""deploy/prometheus/ against the real thing (issue #6 point 2): `promtool check config` and
`promtool check rules` pass; then Debian's Prometheus, started on loopback with the shipped
rules, scrapes a running facteur that has delivered mail, and evaluates every alert rule without
an error; the series the rules stand on (queue depth, replies by site and class, up) return
data through Prometheus's HTTP API."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import harness
from smtp_test_server import SmtpTestServer

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RULES = os.path.join(REPO, "deploy", "prometheus", "facteur-alerts.yml")
CONFIG = os.path.join(REPO, "deploy", "prometheus", "prometheus.yml")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusAlertRulesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = SmtpTestServer(host="127.0.0.1").start()
        cls.server = harness.Facteur(extra="\n".join([
            "[[route]]", 'domain = "*"', 'destination = "[127.0.0.1]:%d"' % cls.sink.port,
            'tls = "none"']) + "\n[delivery]\nvalidate_recipient_domains = false\n")
        cls.server.start_or(cls.tearDownClass)
        cls.dir = tempfile.mkdtemp(prefix="facteur-prometheus-")
        cls.port = free_port()
        admin = cls.server.endpoints["admin"]
        with open(os.path.join(cls.dir, "prometheus.yml"), "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "rule_files:\n  - %s\n"
                    "scrape_configs:\n  - job_name: facteur\n    static_configs:\n"
                    "      - targets: [\"%s\"]\n" % (RULES, admin))
        cls.log = open(os.path.join(cls.dir, "prometheus.log"), "wb")
        cls.prometheus = subprocess.Popen(
            ["prometheus", "--config.file=" + os.path.join(cls.dir, "prometheus.yml"),
             "--storage.tsdb.path=" + os.path.join(cls.dir, "data"),
             "--web.listen-address=127.0.0.1:%d" % cls.port],
            stdout=cls.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @classmethod
    def tearDownClass(cls):
        prometheus = getattr(cls, "prometheus", None)
        if prometheus is not None:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=10)
            except subprocess.TimeoutExpired:
                prometheus.kill()
                prometheus.wait()
            cls.log.close()
        if getattr(cls, "dir", None):
            shutil.rmtree(cls.dir, ignore_errors=True)
        cls.server.cleanup()
        cls.sink.stop()

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            answer = json.load(r)
        self.assertEqual(answer["status"], "success", answer)
        return answer["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def test_promtool_accepts_the_shipped_files(self):
        for command in (["promtool", "check", "config", CONFIG], ["promtool", "check", "rules", RULES]):
            result = subprocess.run(command, capture_output=True, cwd=os.path.dirname(CONFIG))
            self.assertEqual(result.returncode, 0, result)
            self.assertIn(b"SUCCESS", result.stdout + result.stderr)

    def test_every_rule_evaluates_on_a_live_facteur(self):
        with self.server.smtp() as client:
            for i in range(5):
                client.sendmail("app@asso.example", ["bob%d@example.org" % i],
                                harness.simple_message(to="bob%d@example.org" % i))
        self.sink.wait_for(lambda: len(self.sink.accepted()) >= 5)

        def ready():
            try:
                return self.query('up{job="facteur"} == 1') or None
            except OSError:
                return None
        harness.wait_until(ready, timeout=30, what="Prometheus scraping facteur")
        # The delivery counters reach /metrics every 5 s (the shards' sweep).
        harness.wait_until(
            lambda: self.query('sum(facteur_site_replies_total{class="success",site="route"}) >= 5')
            or None, timeout=30, what="the deliveries in Prometheus")

        def evaluated():
            groups = self.api("rules", type="alert")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                          not r["lastEvaluation"].startswith("0001")
                                          for r in rules) else None
        rules = harness.wait_until(evaluated, timeout=30, what="every rule evaluated")
        self.assertEqual(len(rules), 7, [r["name"] for r in rules])
        for rule in rules:
            with self.subTest(rule=rule["name"]):
                self.assertEqual(rule["health"], "ok", rule)
                self.query(rule["query"])  # parses and runs through the query API too
        # Nothing is wrong with this relay: no alert fires.
        self.assertEqual([r["name"] for r in rules if r["state"] == "firing"], [])
        # The series the rules stand on are there.
        for expr in ("facteur_spool_messages", "facteur_spool_commit_errors_total",
                     'sum by (site, class) (facteur_site_replies_total)', 'up'):
            self.assertTrue(self.query(expr), expr)


if __name__ == "__main__":
    harness.main()
