#include "engine/metrics/metrics.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(MetricsTest, ListenerSeriesAreCreatedOnceAndExposed) {
  Metrics metrics;
  ListenerMetrics& submission = metrics.ForListener("submission");
  EXPECT_EQ(&metrics.ForListener("submission"), &submission);
  submission.sessions.Increment();
  submission.sessions.Increment();
  submission.sessions_active.Increment();
  submission.CountReply(250);
  submission.CountReply(451);
  submission.CountReply(550);
  submission.CountReply(354);  // not a class we count
  submission.accept_seconds.Observe(0.003);

  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("# HELP facteur_smtp_sessions_total "));
  EXPECT_THAT(text, HasSubstr("# TYPE facteur_smtp_sessions_total counter"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_smtp_sessions_total{listener="submission"} 2)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_smtp_sessions_active{listener="submission"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_smtp_replies_total{class="2xx",listener="submission"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_smtp_replies_total{class="4xx",listener="submission"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_smtp_replies_total{class="5xx",listener="submission"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_smtp_accept_seconds_bucket{le="0.005"} 1)"));
  EXPECT_THAT(text, HasSubstr("facteur_smtp_auth_failures_total{listener=\"submission\"} 0"));
  EXPECT_THAT(text, Not(HasSubstr("listener=\"other\"")));
}

TEST(MetricsTest, ReceivedByAccountClassAndSessionDurations) {
  Metrics metrics;
  ListenerMetrics& relay = metrics.ForListener("relay");
  relay.Received(AccountClass::kTrusted).Increment();
  relay.Received(AccountClass::kTrusted).Increment();
  relay.Received(AccountClass::kAuthenticated).Increment();
  relay.session_seconds.Observe(0.2);
  EXPECT_STREQ(AccountClassName(AccountClass::kLocal), "local");
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("# TYPE facteur_messages_received_total counter"));
  EXPECT_THAT(text, HasSubstr(
      R"(facteur_messages_received_total{account_class="trusted",listener="relay"} 2)"));
  EXPECT_THAT(text, HasSubstr(
      R"(facteur_messages_received_total{account_class="authenticated",listener="relay"} 1)"));
  // Every class from the start: a rate() over a fresh server is 0, not absent.
  EXPECT_THAT(text, HasSubstr(
      R"(facteur_messages_received_total{account_class="local",listener="relay"} 0)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_smtp_session_seconds_bucket{listener="relay",le="0.25"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_smtp_session_seconds_bucket{listener="relay",le="0.1"} 0)"));
  EXPECT_THAT(text, HasSubstr("facteur_delivery_session_seconds_count 0"));
}

TEST(MetricsTest, ScrapeHooksRunBeforeEachExposition) {
  Metrics metrics;
  int scrapes = 0;
  metrics.AddScrapeHook([&] { metrics.delivery().queue_ready.Set(++scrapes); });
  metrics.delivery().queue_scheduled.Set(7);
  EXPECT_THAT(metrics.Serialize(), HasSubstr(R"(facteur_queue_messages{state="ready"} 1)"));
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr(R"(facteur_queue_messages{state="ready"} 2)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_queue_messages{state="scheduled"} 7)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_queue_messages{state="in_flight"} 0)"));
  EXPECT_THAT(text, HasSubstr("facteur_accounts_suspended 0"));
}

TEST(MetricsTest, SpoolMetrics) {
  Metrics metrics;
  metrics.ObserveSpoolCommit(3, 0.002);
  metrics.spool_commit_errors().Increment();
  metrics.spool_messages().Set(42);
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("facteur_spool_commit_errors_total 1"));
  EXPECT_THAT(text, HasSubstr("facteur_spool_messages 42"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_spool_commit_batch_size_bucket{le="2"} 0)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_spool_commit_batch_size_bucket{le="4"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_spool_commit_batch_size_bucket{le="256"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(facteur_spool_commit_seconds_bucket{le="0.0025"} 1)"));
  EXPECT_THAT(text, HasSubstr("facteur_spool_commit_seconds_count 1"));
  EXPECT_NE(metrics.registry(), nullptr);
}

}  // namespace
}  // namespace facteur::metrics
