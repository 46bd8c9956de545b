// File: engine/metrics/metrics.h
// Every Prometheus metric facteur exports, declared once here with its help text (STYLE.md
// rule 8), and the text exposition served by the admin API's GET /metrics. Labels are bounded
// (DESIGN.md §6): `listener` is the name of a configured listener, `class` one of 2xx/4xx/5xx;
// never an address, a domain or anything a client chose; `account_class` one of
// AccountClassName()'s three words; `site` a delivery::SiteLabeler label: a shaping-file site,
// "route", "other", or one of at most [delivery] metrics_site_labels unknown MX sets.
// Thread contract: thread-safe. ForListener() is meant to be called once per configured listener
// at startup (sessions keep the returned reference); it may be called again from any thread and
// returns the same object. Counters, gauges and histograms are atomics, updated lock-free.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "engine/metrics/account_class.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace facteur::metrics {

// The series of one SMTP listener. Every member refers into the Metrics registry and lives as
// long as the Metrics object.
struct ListenerMetrics {
  prometheus::Counter& sessions;            // facteur_smtp_sessions_total
  prometheus::Counter& messages_accepted;   // facteur_smtp_messages_accepted_total
  prometheus::Counter& messages_rejected;   // facteur_smtp_messages_rejected_total
  prometheus::Counter& replies_2xx;         // facteur_smtp_replies_total{class="2xx"}
  prometheus::Counter& replies_4xx;         // facteur_smtp_replies_total{class="4xx"}
  prometheus::Counter& replies_5xx;         // facteur_smtp_replies_total{class="5xx"}
  prometheus::Counter& auth_failures;       // facteur_smtp_auth_failures_total
  prometheus::Gauge& sessions_active;       // facteur_smtp_sessions_active
  // facteur_smtp_accept_seconds, shared by all listeners (no listener label): kept here so a
  // session finds everything it records in one place.
  prometheus::Histogram& accept_seconds;
  // facteur_messages_received_total{listener,account_class}: one per message answered 250.
  prometheus::Counter& received_authenticated;
  prometheus::Counter& received_trusted;
  prometheus::Counter& received_local;
  prometheus::Histogram& session_seconds;  // facteur_smtp_session_seconds{listener}

  prometheus::Counter& Received(AccountClass account_class);
  // Counts one reply by its first digit (2, 4 or 5); other codes (1xx, 3xx) are not counted.
  void CountReply(int code);
};

// DKIM signing (engine/dkim/signing_pool.h).
struct DkimMetrics {
  explicit DkimMetrics(prometheus::Registry& registry);
  // facteur_dkim_signatures_total{algorithm="rsa-sha256"|"ed25519-sha256",engine="native"|"opendkim"}
  prometheus::Counter& Signatures(const std::string& algorithm, const std::string& engine);

  prometheus::Family<prometheus::Counter>& signatures_total;
  prometheus::Counter& unsigned_total;    // facteur_dkim_unsigned_total
  prometheus::Histogram& sign_seconds;    // facteur_dkim_sign_seconds
  prometheus::Gauge& queue_depth;         // facteur_dkim_queue_depth
};

// Submission quotas and the suppression list (issue #5; engine/policy/account_quotas.h,
// queue/suppression.h). `reason` is one of throttle::QuotaReasonName()'s four words.
struct QuotaMetrics {
  explicit QuotaMetrics(prometheus::Registry& registry);
  // facteur_account_quota_refusals_total{reason="hourly"|"daily"|"recipients"|"suspended"}
  prometheus::Counter& Refusals(const std::string& reason);

  prometheus::Family<prometheus::Counter>& refusals_total;
  prometheus::Counter& suspensions_total;     // facteur_account_suspensions_total
  prometheus::Counter& suppressed_rcpt_total;  // facteur_suppressed_recipients_refused_total
  prometheus::Gauge& accounts_suspended;       // facteur_accounts_suspended (scrape hook)
};

// Traffic shaping per (site, source) (issue #5 point 9; engine/delivery/shard_delivery.h). `site`
// is a site of the shaping file, an unknown MX set's key for the first [delivery]
// metrics_site_labels of them, "other" for every other unknown MX set together, "route" for
// static routes; `source` a configured [[source]] name; `class` a throttle::ResponseClassName().
// Pair gauges are written for sites with a label of their own only (an "other" gauge would mix
// unrelated MX sets).
struct ShapingMetrics {
  explicit ShapingMetrics(prometheus::Registry& registry);

  prometheus::Family<prometheus::Counter>& replies_total;          // {site,source,class}
  prometheus::Family<prometheus::Counter>& suspensions_total;      // {site,source,class}
  prometheus::Family<prometheus::Counter>& throttled_seconds_total;  // {site,source}
  prometheus::Family<prometheus::Gauge>& state;                    // {site,source}: 0 1 2
  prometheus::Family<prometheus::Gauge>& message_rate;             // {site,source}, per minute
  prometheus::Family<prometheus::Gauge>& max_connections;          // {site,source}
  prometheus::Family<prometheus::Gauge>& open_connections;         // {site,source}
  prometheus::Family<prometheus::Gauge>& health;                   // {site,source}
  // Set at scrape time from the reputation (engine/main/serve.cc), one writer: a series goes
  // when its source is warm or its plan is dropped. Of several sites sharing a label (a
  // [[domain]] override's site), the one nearest its cap.
  prometheus::Family<prometheus::Gauge>& warmup_cap;               // {site,source}
  prometheus::Family<prometheus::Gauge>& warmup_sent;              // {site,source}
  // Written by every shard's metrics sweep; a label's value is the sum of what the shards hold
  // (each adds the difference from its last sweep), so sites sharing a label add up.
  prometheus::Family<prometheus::Gauge>& pairs_suspended;   // {site}: (site, source) pairs
  prometheus::Family<prometheus::Gauge>& ready_recipients;  // {site}: waiting in the shards
  // Outbound SMTP connection lifetime, connect to close (facteur_delivery_session_seconds).
  prometheus::Histogram& delivery_session_seconds;
};

// Outcomes of delivery attempts, per recipient (issue #6 point 1; engine/delivery/queue_manager.h).
// `site` and `source` as for ShapingMetrics; `class` a throttle::ResponseClassName().
struct DeliveryMetrics {
  explicit DeliveryMetrics(prometheus::Registry& registry);

  prometheus::Family<prometheus::Counter>& delivered_total;  // {site,source}
  prometheus::Family<prometheus::Counter>& deferred_total;   // {site,source,class}
  prometheus::Family<prometheus::Counter>& bounced_total;    // {site,source,class}
  // {site,source} of the recipient's last attempt (a deferral): site="unattempted",
  // source="none" when it was not attempted since the start; source="none" when its site's
  // limits held it back every time.
  prometheus::Family<prometheus::Counter>& expired_total;
  prometheus::Histogram& queue_seconds;    // reception to delivery, per delivered recipient
  prometheus::Histogram& attempt_seconds;  // dispatch to result, per attempted transaction
  prometheus::Gauge& in_flight;            // messages leased to the delivery shards
  // facteur_queue_messages{state="ready"|"scheduled"|"in_flight"}: the spool's messages due
  // now and not leased, due later, leased. Set when /metrics is scraped (Metrics::AddScrapeHook).
  prometheus::Family<prometheus::Gauge>& queue_messages;
  prometheus::Gauge& queue_ready;
  prometheus::Gauge& queue_scheduled;
  prometheus::Gauge& queue_in_flight;
  // facteur_queue_scheduled_messages{site}: messages waiting for their next attempt, by the site
  // of the attempt that deferred them; "unattempted" for those not tried since the start.
  prometheus::Family<prometheus::Gauge>& scheduled_by_site;
};

class Metrics {
 public:
  Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The series of listener `name`, created on first call (startup), the same object afterwards.
  ListenerMetrics& ForListener(const std::string& name);

  // Spool metrics, fed by the spool's CommitObserver and the queue size.
  prometheus::Counter& spool_commit_errors() { return spool_commit_errors_; }
  prometheus::Gauge& spool_messages() { return spool_messages_; }
  prometheus::Histogram& spool_commit_batch_size() { return spool_commit_batch_size_; }
  prometheus::Histogram& spool_commit_seconds() { return spool_commit_seconds_; }
  prometheus::Histogram& smtp_accept_seconds() { return smtp_accept_seconds_; }

  // Records one group commit: what queue::CommitObserver reports.
  void ObserveSpoolCommit(size_t batch_size, double seconds);

  // Shared with whoever wants to register more collectables or collect directly (an optional
  // prometheus::Exposer, tests); the Metrics object keeps its own reference, so the registry
  // outlives it for as long as any sharer holds one.
  std::shared_ptr<prometheus::Registry> registry() { return registry_; }

  DkimMetrics& dkim() { return *dkim_; }
  QuotaMetrics& quota() { return *quota_; }
  ShapingMetrics& shaping() { return *shaping_; }
  DeliveryMetrics& delivery() { return *delivery_; }

  // Runs `hook` at the start of every Serialize(), on the scraping thread (the admin server's
  // civetweb pool, never a shard): for gauges that are cheaper to read when asked than to keep
  // current (queue depth). Hooks run one scrape at a time, in the order added; they must not
  // call Serialize() and must stay valid while anyone may scrape.
  void AddScrapeHook(std::function<void()> hook);

  // The Prometheus text exposition format (version 0.0.4) of every metric.
  std::string Serialize() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;  // see registry()
  std::unique_ptr<DkimMetrics> dkim_ = std::make_unique<DkimMetrics>(*registry_);
  std::unique_ptr<QuotaMetrics> quota_ = std::make_unique<QuotaMetrics>(*registry_);
  std::unique_ptr<ShapingMetrics> shaping_ = std::make_unique<ShapingMetrics>(*registry_);
  std::unique_ptr<DeliveryMetrics> delivery_ = std::make_unique<DeliveryMetrics>(*registry_);

  prometheus::Family<prometheus::Counter>& sessions_total_;
  prometheus::Family<prometheus::Counter>& messages_accepted_total_;
  prometheus::Family<prometheus::Counter>& messages_rejected_total_;
  prometheus::Family<prometheus::Counter>& replies_total_;
  prometheus::Family<prometheus::Counter>& auth_failures_total_;
  prometheus::Family<prometheus::Gauge>& sessions_active_;
  prometheus::Family<prometheus::Counter>& messages_received_total_;
  prometheus::Family<prometheus::Histogram>& smtp_session_seconds_;

  prometheus::Counter& spool_commit_errors_;
  prometheus::Gauge& spool_messages_;
  prometheus::Histogram& spool_commit_batch_size_;
  prometheus::Histogram& spool_commit_seconds_;
  prometheus::Histogram& smtp_accept_seconds_;

  absl::Mutex mutex_;
  // std::map of unique_ptr: references handed out stay valid while the map grows.
  std::map<std::string, std::unique_ptr<ListenerMetrics>> listeners_ ABSL_GUARDED_BY(mutex_);
  mutable absl::Mutex hooks_mutex_;
  std::vector<std::function<void()>> scrape_hooks_ ABSL_GUARDED_BY(hooks_mutex_);
};

}  // namespace facteur::metrics
