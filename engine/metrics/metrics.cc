// File: engine/metrics/metrics.cc
#include "engine/metrics/metrics.h"

#include <utility>

#include "prometheus/text_serializer.h"

namespace facteur::metrics {
namespace {

prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& registry,
                                                       const std::string& name,
                                                       const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& registry,
                                                   const std::string& name,
                                                   const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

prometheus::Histogram& UnlabelledHistogram(prometheus::Registry& registry, const std::string& name,
                                           const std::string& help,
                                           prometheus::Histogram::BucketBoundaries buckets) {
  return prometheus::BuildHistogram()
      .Name(name)
      .Help(help)
      .Register(registry)
      .Add({}, std::move(buckets));
}

// Session lengths, inbound and outbound: a quick submission to a connection kept for hours.
prometheus::Histogram::BucketBoundaries SessionBuckets() {
  return {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600};
}

}  // namespace

const char* AccountClassName(AccountClass account_class) {
  switch (account_class) {
    case AccountClass::kAuthenticated: return "authenticated";
    case AccountClass::kTrusted: return "trusted";
    case AccountClass::kLocal: return "local";
  }
  return "trusted";
}

prometheus::Counter& ListenerMetrics::Received(AccountClass account_class) {
  switch (account_class) {
    case AccountClass::kAuthenticated: return received_authenticated;
    case AccountClass::kLocal: return received_local;
    case AccountClass::kTrusted: break;
  }
  return received_trusted;
}

void ListenerMetrics::CountReply(int code) {
  switch (code / 100) {
    case 2: replies_2xx.Increment(); break;
    case 4: replies_4xx.Increment(); break;
    case 5: replies_5xx.Increment(); break;
    default: break;
  }
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      sessions_total_(CounterFamily(*registry_, "facteur_smtp_sessions_total",
                                    "SMTP sessions opened, by listener.")),
      messages_accepted_total_(CounterFamily(
          *registry_, "facteur_smtp_messages_accepted_total",
          "Messages answered 250 after DATA/BDAT (durably queued), by listener.")),
      messages_rejected_total_(CounterFamily(
          *registry_, "facteur_smtp_messages_rejected_total",
          "Messages refused with a 4xx or 5xx after DATA/BDAT, by listener.")),
      replies_total_(CounterFamily(*registry_, "facteur_smtp_replies_total",
                                   "SMTP replies sent, by listener and class (2xx, 4xx, 5xx).")),
      auth_failures_total_(CounterFamily(*registry_, "facteur_smtp_auth_failures_total",
                                         "Failed AUTH attempts, by listener.")),
      sessions_active_(GaugeFamily(*registry_, "facteur_smtp_sessions_active",
                                   "SMTP sessions currently open, by listener.")),
      messages_received_total_(CounterFamily(
          *registry_, "facteur_messages_received_total",
          "Messages accepted (answered 250), by listener and account class: authenticated "
          "(SMTP AUTH), trusted (a relay listener's trusted network), local (Unix socket).")),
      smtp_session_seconds_(prometheus::BuildHistogram()
                                .Name("facteur_smtp_session_seconds")
                                .Help("Duration of inbound SMTP sessions, from accept to close, "
                                      "in seconds, by listener.")
                                .Register(*registry_)),
      spool_commit_errors_(CounterFamily(*registry_, "facteur_spool_commit_errors_total",
                                         "Spool group commits that failed (the messages of the "
                                         "batch were answered 4xx).")
                               .Add({})),
      spool_messages_(GaugeFamily(*registry_, "facteur_spool_messages",
                                  "Messages currently in the spool.")
                          .Add({})),
      spool_commit_batch_size_(UnlabelledHistogram(
          *registry_, "facteur_spool_commit_batch_size",
          "Changes (enqueues, updates, removals) in one synced spool write (group commit).",
          {1, 2, 4, 8, 16, 32, 64, 128, 256})),
      spool_commit_seconds_(UnlabelledHistogram(
          *registry_, "facteur_spool_commit_seconds",
          "Duration of one synced spool write, in seconds.",
          {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1})),
      smtp_accept_seconds_(UnlabelledHistogram(
          *registry_, "facteur_smtp_accept_seconds",
          "Time from the end of a message's data to its 250 reply (signing and the synced "
          "enqueue), in seconds.",
          {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2})) {}

ListenerMetrics& Metrics::ForListener(const std::string& name) {
  absl::MutexLock lock(&mutex_);
  auto it = listeners_.find(name);
  if (it != listeners_.end()) return *it->second;
  const prometheus::Labels labels{{"listener", name}};
  auto reply_labels = [&](const char* reply_class) {
    return prometheus::Labels{{"listener", name}, {"class", reply_class}};
  };
  auto created = std::unique_ptr<ListenerMetrics>(new ListenerMetrics{
      sessions_total_.Add(labels),
      messages_accepted_total_.Add(labels),
      messages_rejected_total_.Add(labels),
      replies_total_.Add(reply_labels("2xx")),
      replies_total_.Add(reply_labels("4xx")),
      replies_total_.Add(reply_labels("5xx")),
      auth_failures_total_.Add(labels),
      sessions_active_.Add(labels),
      smtp_accept_seconds_,
      messages_received_total_.Add({{"listener", name}, {"account_class", "authenticated"}}),
      messages_received_total_.Add({{"listener", name}, {"account_class", "trusted"}}),
      messages_received_total_.Add({{"listener", name}, {"account_class", "local"}}),
      smtp_session_seconds_.Add(labels, SessionBuckets()),
  });
  ListenerMetrics& result = *created;
  listeners_.emplace(name, std::move(created));
  return result;
}

DkimMetrics::DkimMetrics(prometheus::Registry& registry)
    : signatures_total(CounterFamily(registry, "facteur_dkim_signatures_total",
                                     "DKIM signatures made, by algorithm and signing engine.")),
      unsigned_total(CounterFamily(registry, "facteur_dkim_unsigned_total",
                                   "Messages queued without a DKIM signature: no key for their "
                                   "From: domain.")
                         .Add({})),
      sign_seconds(UnlabelledHistogram(
          registry, "facteur_dkim_sign_seconds",
          "Time to make one DKIM signature (canonicalisation, hashes, signature), in seconds.",
          {0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1})),
      queue_depth(GaugeFamily(registry, "facteur_dkim_queue_depth",
                              "Messages waiting for a DKIM signing thread.")
                      .Add({})) {}

prometheus::Counter& DkimMetrics::Signatures(const std::string& algorithm,
                                             const std::string& engine) {
  return signatures_total.Add({{"algorithm", algorithm}, {"engine", engine}});
}

DeliveryMetrics::DeliveryMetrics(prometheus::Registry& registry)
    : delivered_total(CounterFamily(registry, "facteur_messages_delivered_total",
                                    "Recipients delivered (the server answered 2xx), by site and "
                                    "source.")),
      deferred_total(CounterFamily(registry, "facteur_messages_deferred_total",
                                   "Recipients deferred by a delivery attempt, by site, source "
                                   "and class of the reply.")),
      bounced_total(CounterFamily(registry, "facteur_messages_bounced_total",
                                  "Recipients bounced by a delivery attempt, by site, source and "
                                  "class of the reply.")),
      expired_total(CounterFamily(registry, "facteur_messages_expired_total",
                                  "Recipients bounced because their queue lifetime ran out, by "
                                  "the site and source of their last attempt; "
                                  "site=\"unattempted\",source=\"none\": not attempted since "
                                  "the server started.")),
      queue_seconds(UnlabelledHistogram(
          registry, "facteur_delivery_queue_seconds",
          "Time from reception to delivery of each delivered recipient, in seconds.",
          {1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600})),
      attempt_seconds(UnlabelledHistogram(
          registry, "facteur_delivery_attempt_seconds",
          "Time of one delivery attempt (one transaction), from dispatch to result, in seconds.",
          {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300})),
      in_flight(GaugeFamily(registry, "facteur_delivery_in_flight",
                            "Messages leased to the delivery shards (being delivered).")
                    .Add({})),
      queue_messages(GaugeFamily(registry, "facteur_queue_messages",
                                 "Messages in the spool by state: ready (due now, waiting for "
                                 "the delivery side), scheduled (due later), in_flight (leased).")),
      queue_ready(queue_messages.Add({{"state", "ready"}})),
      queue_scheduled(queue_messages.Add({{"state", "scheduled"}})),
      queue_in_flight(queue_messages.Add({{"state", "in_flight"}})),
      scheduled_by_site(GaugeFamily(registry, "facteur_queue_scheduled_messages",
                                    "Messages waiting for their next attempt, by the site of the "
                                    "attempt that deferred them; site=\"unattempted\": not "
                                    "tried since the server started (or failed before their "
                                    "site was known).")) {}

ShapingMetrics::ShapingMetrics(prometheus::Registry& registry)
    : replies_total(CounterFamily(registry, "facteur_site_replies_total",
                                  "Classified replies of each site to each source, by class.")),
      suspensions_total(CounterFamily(registry, "facteur_site_suspensions_total",
                                      "Suspensions of a (site, source) pair, by the class of the "
                                      "reply that began them.")),
      throttled_seconds_total(CounterFamily(
          registry, "facteur_site_throttled_seconds_total",
          "Time mail waited on a (site, source) pair's limits or suspension, in seconds.")),
      // The pair gauges are the site's own pairs': a [[domain]] override with limits of its
      // own is not among them (ShardDelivery::ReportMetrics).
      state(GaugeFamily(registry, "facteur_site_state",
                        "State of a (site, source) pair: 0 normal, 1 backoff, 2 suspended; "
                        "the site's own pairs, not a [[domain]] override's.")),
      message_rate(GaugeFamily(registry, "facteur_site_message_rate",
                               "Messages per minute a (site, source) pair may start now (its "
                               "limit, cut while backing off); 0: no limit.")),
      max_connections(GaugeFamily(registry, "facteur_site_max_connections",
                                  "Connections a (site, source) pair may have open now.")),
      open_connections(GaugeFamily(registry, "facteur_site_open_connections",
                                   "Connections a (site, source) pair has open.")),
      health(GaugeFamily(registry, "facteur_site_health",
                         "Health score of a (site, source) pair over the last 24 hours, 0 to 1.")),
      warmup_cap(GaugeFamily(registry, "facteur_site_warmup_cap",
                             "Recipients a warming-up source may have given a final answer by a "
                             "site today; absent when the source has no warmup plan or is warm, "
                             "before the site's first answer to it, and for an unknown MX set "
                             "without a label of its own.")),
      warmup_sent(GaugeFamily(registry, "facteur_site_warmup_sent",
                              "Recipients a site gave a warming-up source a final answer for "
                              "today (UTC).")),
      pairs_suspended(GaugeFamily(registry, "facteur_site_pairs_suspended",
                                  "(site, source) pairs suspended now, by site.")),
      ready_recipients(GaugeFamily(registry, "facteur_queue_ready_recipients",
                                   "Recipients waiting in the delivery shards for a connection "
                                   "or a site's limits, by site.")),
      delivery_session_seconds(UnlabelledHistogram(
          registry, "facteur_delivery_session_seconds",
          "Lifetime of outbound SMTP connections, from connect to close, in seconds.",
          SessionBuckets())) {}

QuotaMetrics::QuotaMetrics(prometheus::Registry& registry)
    : refusals_total(CounterFamily(registry, "facteur_account_quota_refusals_total",
                                   "SMTP refusals by an account's quota, by reason: hourly or "
                                   "daily message quota, recipients per message, suspended.")),
      suspensions_total(CounterFamily(registry, "facteur_account_suspensions_total",
                                      "Accounts suspended for unusual sending volume.")
                            .Add({})),
      suppressed_rcpt_total(CounterFamily(registry, "facteur_suppressed_recipients_refused_total",
                                          "RCPT TO refused because the address is on the "
                                          "suppression list.")
                                .Add({})),
      accounts_suspended(GaugeFamily(registry, "facteur_accounts_suspended",
                                     "Accounts suspended now for unusual sending volume (until "
                                     "an administrator resumes them).")
                             .Add({})) {
  // Every reason from the start, so that a rate() over a fresh server is 0, not absent.
  for (const char* reason : {"hourly", "daily", "recipients", "suspended"}) Refusals(reason);
}

prometheus::Counter& QuotaMetrics::Refusals(const std::string& reason) {
  return refusals_total.Add({{"reason", reason}});
}

void Metrics::ObserveSpoolCommit(size_t batch_size, double seconds) {
  spool_commit_batch_size_.Observe(static_cast<double>(batch_size));
  spool_commit_seconds_.Observe(seconds);
}

void Metrics::AddScrapeHook(std::function<void()> hook) {
  absl::MutexLock lock(&hooks_mutex_);
  scrape_hooks_.push_back(std::move(hook));
}

std::string Metrics::Serialize() const {
  {
    absl::MutexLock lock(&hooks_mutex_);
    for (const std::function<void()>& hook : scrape_hooks_) hook();
  }
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace facteur::metrics
