"""deploy/prometheus/ and deploy/grafana/ against the real thing (issue #6 points 2 and 3):
`promtool check config` and `promtool check rules` pass, and promtool's unit tests of the alerts
(prometheus/facteur-alerts-test.yml) show them firing on a first event; then Debian's Prometheus, started on
loopback with the shipped rules, scrapes a running facteur that has delivered mail, evaluates
every alert rule without an error, and answers every PromQL expression of the Grafana dashboard
through its HTTP API; the core ones (throughput, queue, deliveries by site) return data."""

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
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "facteur.json")
# Dashboard expressions that must return data once facteur has taken and delivered mail.
CORE = [
    "sum(rate(facteur_smtp_messages_accepted_total[5m]))",
    "sum(rate(facteur_messages_delivered_total[5m]))",
    "facteur_spool_messages",
    "sum by (site) (rate(facteur_messages_delivered_total[5m]))",
    "sum by (le) (rate(facteur_delivery_queue_seconds_bucket[5m]))",
    "sum by (listener, account_class) (rate(facteur_messages_received_total[5m]))",
    "sum by (state) (facteur_queue_messages)",
    "sum by (site) (facteur_site_pairs_suspended)",
    "facteur_accounts_suspended",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusRulesAndDashboardTest(unittest.TestCase):
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

    def test_the_alerts_fire_on_their_first_event(self):
        # promtool's unit tests (prometheus/facteur-alerts-test.yml): a blocklist suspension
        # whose series is born at 1 fires FacteurSourceBlocklisted; none for an hour: quiet.
        tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prometheus")
        result = subprocess.run(["promtool", "test", "rules", "facteur-alerts-test.yml"],
                                capture_output=True, cwd=tests)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
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
        self.assertEqual(len(rules), 9, [r["name"] for r in rules])
        for rule in rules:
            with self.subTest(rule=rule["name"]):
                self.assertEqual(rule["health"], "ok", rule)
                self.query(rule["query"])  # parses and runs through the query API too
        # Nothing is wrong with this relay: no alert fires.
        self.assertEqual([r["name"] for r in rules if r["state"] == "firing"], [])
        # Every expression of the dashboard runs; the core ones have data.
        with open(DASHBOARD) as f:
            dashboard = json.load(f)
        exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
        self.assertGreater(len(exprs), 20)
        for expr in CORE:
            self.assertIn(expr, exprs)
        for expr in exprs:
            with self.subTest(expr=expr):
                self.query(expr)
        for expr in CORE:
            harness.wait_until(lambda expr=expr: self.query(expr) or None, timeout=20,
                               what="data for %s" % expr)
        delivered = self.query('sum(facteur_messages_delivered_total{site="route"})')
        self.assertEqual(float(delivered[0]["value"][1]), 5)
        received = self.query('sum(facteur_messages_received_total{listener="relay",'
                              'account_class="trusted"})')
        self.assertEqual(float(received[0]["value"][1]), 5)
        # The series the rules stand on are there.
        for expr in ("facteur_spool_messages", "facteur_spool_commit_errors_total",
                     'sum by (site, class) (facteur_site_replies_total)', 'up'):
            self.assertTrue(self.query(expr), expr)


if __name__ == "__main__":
    harness.main()
