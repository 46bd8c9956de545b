// File: engine/policy/sender_policy.cc
#include "engine/policy/sender_policy.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"

namespace facteur::policy {

bool MaySendAs(const std::vector<std::string>& grants, const mail::Mailbox& address) {
  if (address.domain.empty()) return false;  // the null sender <> belongs to nobody
  const std::string canonical = address.Canonical();
  for (const std::string& grant : grants) {
    if (grant.empty()) continue;
    if (grant.front() == '@') {
      const std::string_view domain = std::string_view(grant).substr(1);
      if (!domain.empty() && absl::EqualsIgnoreCase(ToAbsl(domain), address.domain)) return true;
    } else if (absl::EqualsIgnoreCase(grant, canonical)) {
      return true;
    }
  }
  return false;
}

std::string SenderRefusal(std::string_view account, const mail::Mailbox& address) {
  return absl::StrCat("Sender address <", address.ToString(),
                      "> is not among the addresses account '", ToAbsl(account), "' may send as");
}

}  // namespace facteur::policy
