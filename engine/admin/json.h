// File: engine/admin/json.h
// The JSON views of queue entries and accounts, shared by the admin API and the CLI so that
// both always print the same fields.
// Thread contract: pure functions.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "engine/policy/account_store.h"
#include "nlohmann/json.hpp"
#include "queue/spool.h"
#include "throttle/account_quota.h"
#include "throttle/reputation.h"
#include "throttle/shaping.h"

namespace facteur::admin {

// The recipients of `envelope` still to deliver, as mailq lists them: a delivered or bounced
// one is done.
std::vector<std::string> PendingRecipients(const queue::Envelope& envelope);
// id, sender, recipients (PendingRecipients), received_at (RFC 3339), attempts, account,
// listener.
nlohmann::json EnvelopeSummaryJson(const queue::Envelope& envelope);
// The summary, with every recipient (delivered and bounced ones too), plus each one's state, client, next_attempt, SMTPUTF8/8BIT, DSN fields, size.
nlohmann::json MessageJson(const queue::Envelope& envelope, size_t body_size);
// name, grants, suspended, created_at; suspended_by ("administrator", "unusual volume" or
// null), suspended_at and suspension_detail (of the [quota] rule's suspension in `quota`, the
// account's stored or live quota state when known). Never the password hash.
nlohmann::json AccountJson(const policy::Account& account,
                           const throttle::AccountQuotaState* quota = nullptr);
const char* RecipientStateName(queue::RecipientState state);
std::string Rfc3339(absl::Time t);
// `facteur reputation --json` and GET /api/reputation: {"now", "pairs":[{source, site, health,
// last_24h, today, lifetime (counters by class), warmup {day, plan, cap, sent_today,
// resets_at}, last_reply}]} at `now`. `plan_of` names each source's warmup plan (null: none).
using WarmupPlanOf = std::function<const throttle::WarmupPlan*(const std::string& source)>;
nlohmann::json ReputationJson(const throttle::Reputation& reputation, absl::Time now,
                              const WarmupPlanOf& plan_of);
// Serialises without throwing: invalid UTF-8 (a hostile client's address) becomes U+FFFD.
std::string DumpJson(const nlohmann::json& value);

}  // namespace facteur::admin
