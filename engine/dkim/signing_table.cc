// File: engine/dkim/signing_table.cc
#include "engine/dkim/signing_table.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"

namespace facteur::dkim {
namespace {

std::string Lower(std::string_view s) { return absl::AsciiStrToLower(ToAbsl(s)); }

}  // namespace

absl::StatusOr<std::shared_ptr<const SigningTable>> SigningTable::Load(
    const std::vector<config::DkimKeyOptions>& keys,
    const std::function<std::string(std::string_view)>& resolve_path) {
  std::vector<Entry> entries;
  absl::flat_hash_set<std::string> seen;
  for (const config::DkimKeyOptions& k : keys) {
    if (k.domain.empty() || k.selector.empty() || k.key_file.empty()) {
      return absl::InvalidArgumentError(
          "[[dkim.key]]: domain, selector and key_file are required");
    }
    std::string id = absl::StrCat(Lower(k.domain), "/", Lower(k.selector), "/", k.account);
    if (!seen.insert(id).second) {
      return absl::InvalidArgumentError(absl::StrCat("[[dkim.key]]: domain ", k.domain,
                                                     " selector ", k.selector,
                                                     k.account.empty() ? "" : " account ",
                                                     k.account, " is declared twice"));
    }
    FACTEUR_ASSIGN_OR_RETURN(std::unique_ptr<PrivateKey> key,
                             PrivateKey::LoadFile(resolve_path(k.key_file), k.algorithm));
    entries.push_back(Entry{SigningKey{Lower(k.domain), k.selector, std::move(key)}, k.account});
  }
  return FromEntries(std::move(entries));
}

absl::StatusOr<std::shared_ptr<const SigningTable>> SigningTable::FromConfig(
    const config::Config& config) {
  return Load(config.dkim.keys,
              [&config](std::string_view path) { return config.ResolvePath(path); });
}

std::shared_ptr<const SigningTable> SigningTable::FromEntries(std::vector<Entry> entries) {
  std::shared_ptr<SigningTable> table(new SigningTable());
  for (Entry& e : entries) {
    e.key.domain = Lower(e.key.domain);
    std::string domain = e.key.domain;
    table->by_domain_[domain].push_back(std::move(e));
    ++table->size_;
  }
  return table;
}

std::vector<const SigningKey*> SigningTable::KeysFor(std::string_view domain,
                                                     std::string_view account) const {
  std::vector<const SigningKey*> out;
  std::string key = Lower(domain);
  while (!key.empty() && key.back() == '.') key.pop_back();  // "example.org." is the same domain
  auto it = by_domain_.find(key);
  if (it == by_domain_.end()) return out;
  if (!account.empty()) {
    for (const Entry& e : it->second) {
      if (e.account == account) out.push_back(&e.key);
    }
    if (!out.empty()) return out;
  }
  for (const Entry& e : it->second) {
    if (e.account.empty()) out.push_back(&e.key);
  }
  return out;
}

}  // namespace facteur::dkim
