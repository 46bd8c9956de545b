#include "engine/admin/json.h"

#include <algorithm>
#include <array>
#include <optional>

#include "absl/time/time.h"
#include "throttle/response_class.h"

namespace facteur::admin {

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
}

const char* RecipientStateName(queue::RecipientState state) {
  switch (state) {
    case queue::RecipientState::kPending: return "pending";
    case queue::RecipientState::kDelivered: return "delivered";
    case queue::RecipientState::kBounced: return "bounced";
  }
  return "unknown";
}

std::vector<std::string> PendingRecipients(const queue::Envelope& envelope) {
  std::vector<std::string> pending;
  for (const queue::RecipientRecord& recipient : envelope.recipients) {
    if (recipient.state == queue::RecipientState::kPending) pending.push_back(recipient.address);
  }
  return pending;
}

nlohmann::json EnvelopeSummaryJson(const queue::Envelope& envelope) {
  return nlohmann::json{{"id", envelope.id.ToString()},
                        {"sender", envelope.sender},
                        {"recipients", PendingRecipients(envelope)},
                        {"received_at", Rfc3339(envelope.received_at)},
                        {"attempts", envelope.attempts},
                        {"account", envelope.account},
                        {"listener", envelope.listener}};
}

nlohmann::json MessageJson(const queue::Envelope& envelope, size_t body_size) {
  nlohmann::json message = EnvelopeSummaryJson(envelope);
  // One message shown whole: every recipient, done or not; recipient_states says which.
  nlohmann::json recipients = nlohmann::json::array();
  for (const queue::RecipientRecord& recipient : envelope.recipients) {
    recipients.push_back(recipient.address);
  }
  message["recipients"] = std::move(recipients);
  nlohmann::json states = nlohmann::json::array();
  for (const queue::RecipientRecord& recipient : envelope.recipients) {
    nlohmann::json state{{"address", recipient.address},
                         {"state", RecipientStateName(recipient.state)},
                         {"notify", recipient.notify},
                         {"orcpt", recipient.orcpt},
                         {"last_reply", recipient.last_reply}};
    if (recipient.state == queue::RecipientState::kPending) {
      // The message's next attempt, or the recipient's own time when later (greylisted).
      state["next_attempt"] = Rfc3339(std::max(envelope.next_attempt, recipient.retry_at));
    }
    states.push_back(std::move(state));
  }
  message["recipient_states"] = std::move(states);
  message["client"] = envelope.client;
  message["next_attempt"] = Rfc3339(envelope.next_attempt);
  message["smtputf8"] = envelope.smtputf8;
  message["eight_bit"] = envelope.eight_bit;
  message["dsn_ret"] = envelope.dsn_ret;
  message["dsn_envid"] = envelope.dsn_envid;
  message["size"] = body_size;
  return message;
}

nlohmann::json AccountJson(const policy::Account& account,
                           const throttle::AccountQuotaState* quota) {
  // Two suspensions hold an account: an administrator's (the account's own flag) and the
  // [quota] rule's for unusual volume (its quota state); either lasts until `account resume`.
  const bool by_volume = quota != nullptr && quota->suspended;
  nlohmann::json by = nullptr;
  if (by_volume) {
    by = "unusual volume";
  } else if (account.suspended) {
    by = "administrator";
  }
  const nlohmann::json none;
  return nlohmann::json{
      {"name", account.name},
      {"grants", account.grants},
      {"suspended", account.suspended || by_volume},
      {"suspended_by", std::move(by)},
      {"suspended_at", by_volume ? nlohmann::json(Rfc3339(quota->suspended_at)) : none},
      {"suspension_detail", by_volume ? nlohmann::json(quota->suspension_detail) : none},
      {"created_at", Rfc3339(account.created_at)}};
}

std::string DumpJson(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {

// "2027-03-10T12:00:00Z" (RFC 3339, UTC, whole seconds), as `facteur reputation` always printed.
std::string Rfc3339Seconds(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

nlohmann::json ByClassJson(const std::array<uint64_t, throttle::kResponseClassCount>& counts) {
  nlohmann::json by_class = nlohmann::json::object();
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] != 0) by_class[std::string(throttle::kResponseClassNames[i])] = counts[i];
  }
  return by_class;
}

nlohmann::json CountersJson(const throttle::ReputationCounters& c) {
  return nlohmann::json{{"delivered", c.delivered},
                        {"deferred", c.TotalDeferred()},
                        {"deferred_by_class", ByClassJson(c.deferred)},
                        {"bounced", c.TotalBounced()},
                        {"bounced_by_class", ByClassJson(c.bounced)},
                        {"blocked", c.blocked},
                        {"final_answers", c.final_answers}};
}

}  // namespace

nlohmann::json ReputationJson(const throttle::Reputation& reputation, absl::Time now,
                              const WarmupPlanOf& plan_of) {
  nlohmann::json pairs = nlohmann::json::array();
  for (const throttle::PairReport& r : reputation.Report(now)) {
    const throttle::WarmupPlan* plan = plan_of ? plan_of(r.source) : nullptr;
    // sent_today: the report's own count (what SentToday reads), consistent with its other
    // counts; the cap's day is taken at the same `now`.
    const std::optional<uint32_t> cap = reputation.WarmupCap(r.source, plan, r.site, now);
    nlohmann::json warmup{
        {"day", r.warmup_day.has_value() ? nlohmann::json(*r.warmup_day) : nlohmann::json(nullptr)},
        {"plan", plan != nullptr ? nlohmann::json(plan->name) : nlohmann::json(nullptr)},
        {"cap", cap.has_value() ? nlohmann::json(*cap) : nlohmann::json(nullptr)},
        {"sent_today", r.today.final_answers},
        {"resets_at", Rfc3339Seconds(throttle::Reputation::WarmupResetsAt(now))}};
    pairs.push_back(nlohmann::json{{"source", r.source},
                                   {"site", r.site},
                                   {"health", r.health},
                                   {"last_24h", CountersJson(r.last_day)},
                                   {"today", CountersJson(r.today)},
                                   {"lifetime", CountersJson(r.lifetime)},
                                   {"warmup", std::move(warmup)},
                                   {"last_reply", r.last_record == absl::InfinitePast()
                                                      ? nlohmann::json(nullptr)
                                                      : nlohmann::json(Rfc3339Seconds(r.last_record))}});
  }
  return nlohmann::json{{"now", Rfc3339Seconds(now)}, {"pairs", std::move(pairs)}};
}

}  // namespace facteur::admin
