#include "engine/admin/json.h"

#include "absl/time/time.h"

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

nlohmann::json EnvelopeSummaryJson(const queue::Envelope& envelope) {
  nlohmann::json recipients = nlohmann::json::array();
  for (const queue::RecipientRecord& recipient : envelope.recipients) {
    recipients.push_back(recipient.address);
  }
  return nlohmann::json{{"id", envelope.id.ToString()},
                        {"sender", envelope.sender},
                        {"recipients", std::move(recipients)},
                        {"received_at", Rfc3339(envelope.received_at)},
                        {"attempts", envelope.attempts},
                        {"account", envelope.account},
                        {"listener", envelope.listener}};
}

nlohmann::json MessageJson(const queue::Envelope& envelope, size_t body_size) {
  nlohmann::json message = EnvelopeSummaryJson(envelope);
  nlohmann::json states = nlohmann::json::array();
  for (const queue::RecipientRecord& recipient : envelope.recipients) {
    states.push_back(nlohmann::json{{"address", recipient.address},
                                    {"state", RecipientStateName(recipient.state)},
                                    {"notify", recipient.notify},
                                    {"orcpt", recipient.orcpt}});
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

nlohmann::json AccountJson(const policy::Account& account) {
  return nlohmann::json{{"name", account.name},
                        {"grants", account.grants},
                        {"suspended", account.suspended},
                        {"created_at", Rfc3339(account.created_at)}};
}

std::string DumpJson(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace facteur::admin
