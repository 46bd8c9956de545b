// File: engine/dkim/signing_table.h
// Which keys sign which mail: per From: domain, optionally per submitting account, one or more
// keys (dual signing, e.g. Ed25519 + RSA, RFC 8463 §1). Built from [[dkim.key]] with every key
// file read and checked at once, so that a bad file stops a start or a reload with a message
// naming it, never the signing of one message.
// Thread contract: immutable once built. The signing pool holds the current table as a
// shared_ptr snapshot and swaps it whole on reload; work in flight keeps the snapshot it began
// with.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/config/config.h"
#include "engine/dkim/signer.h"

namespace facteur::dkim {

class SigningTable {
 public:
  // Loads every key of `keys`; `resolve_path` turns a configured key_file into the path to open
  // (Config::ResolvePath). Errors: those of PrivateKey::LoadFile (the message names the file),
  // InvalidArgument for a domain/selector/account declared twice or a missing field.
  static absl::StatusOr<std::shared_ptr<const SigningTable>> Load(
      const std::vector<config::DkimKeyOptions>& keys,
      const std::function<std::string(std::string_view)>& resolve_path);
  static absl::StatusOr<std::shared_ptr<const SigningTable>> FromConfig(
      const config::Config& config);
  // A table of keys already loaded (tests, benchmarks). `account` may be empty.
  struct Entry {
    SigningKey key;
    std::string account;  // "" = every sender of the domain
  };
  static std::shared_ptr<const SigningTable> FromEntries(std::vector<Entry> entries);

  // The keys that sign mail whose From: domain is `domain` (any case), submitted by `account`
  // ("" when none): the keys declared for that account and domain when there are any, else the
  // domain's keys declared for every sender. Empty: the message goes out unsigned. Pointers
  // stay valid as long as this table.
  std::vector<const SigningKey*> KeysFor(std::string_view domain, std::string_view account) const;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  SigningTable() = default;

  // Lower-case domain → its entries in configuration order.
  absl::flat_hash_map<std::string, std::vector<Entry>> by_domain_;
  size_t size_ = 0;
};

}  // namespace facteur::dkim
