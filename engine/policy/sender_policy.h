// File: engine/policy/sender_policy.h
// Sender alignment: whether an authenticated account may use an envelope sender (MAIL FROM) or
// a From: address, given the account's grants (AccountStore). An exact address grants that
// address; "@domain" grants every address at exactly that domain (subdomains are not included:
// a grant for @example.com does not cover news.example.com, which may be delegated elsewhere).
// Thread contract: pure functions.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "engine/mail/address.h"

namespace facteur::policy {

// True when `address` matches one of `grants` ("local@domain" or "@domain"). Comparison is
// ASCII case-insensitive on both parts: the domain is case-insensitive (RFC 5321 §2.4), and we
// treat local parts case-insensitively too, as every mailbox provider does, so that a grant for
// alice@example.com is not escaped by writing Alice@example.com. Non-ASCII octets compare exactly.
bool MaySendAs(const std::vector<std::string>& grants, const mail::Mailbox& address);

// The sentence for a refused sender, for the SMTP reply text and the logs.
std::string SenderRefusal(std::string_view account, const mail::Mailbox& address);

}  // namespace facteur::policy
