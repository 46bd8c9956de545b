// File: engine/dkim/signing_pool.cc
#include "engine/dkim/signing_pool.h"

#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "engine/base/status.h"
#include "engine/mail/address.h"
#include "engine/mail/header.h"

namespace facteur::dkim {
namespace {

size_t ThreadCount(size_t configured) {
  if (configured != 0) return configured;
  unsigned cores = std::thread::hardware_concurrency();
  return cores == 0 ? 1 : cores;
}

// The domain of the first author in From: (RFC 5322 §3.6.2), or "" when there is none to read.
std::string FromDomain(const mail::HeaderSection& section) {
  for (const mail::HeaderField& field : section.fields) {
    if (!absl::EqualsIgnoreCase(ToAbsl(field.name), "From")) continue;
    absl::StatusOr<std::vector<mail::Mailbox>> authors =
        mail::ParseAddressList(mail::UnfoldedValue(field));
    if (!authors.ok() || authors->empty()) return "";
    return authors->front().domain;
  }
  return "";
}

}  // namespace

SigningPool::SigningPool(std::unique_ptr<Signer> signer, std::shared_ptr<const SigningTable> table,
                         Clock& clock, metrics::Metrics* metrics, SigningPoolOptions options)
    : signer_(std::move(signer)),
      clock_(clock),
      metrics_(metrics),
      threads_(ThreadCount(options.threads)),
      table_(std::move(table)),
      pool_("facteur-dkim", threads_, options.max_queued) {
  if (metrics_ != nullptr) {
    rsa_signatures_ = &metrics_->dkim().Signatures("rsa-sha256", signer_->engine_name());
    ed25519_signatures_ = &metrics_->dkim().Signatures("ed25519-sha256", signer_->engine_name());
  }
}

SigningPool::~SigningPool() = default;

bool SigningPool::Sign(std::string_view message, std::string account, Done done,
                       Started started) {
  // Counted before the task can run, so that it never goes below zero.
  size_t depth = queued_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (metrics_ != nullptr) metrics_->dkim().queue_depth.Set(static_cast<double>(depth));
  bool submitted = pool_.TrySubmit(
      [this, message, account = std::move(account), done = std::move(done),
       started = std::move(started)]() mutable {
        size_t left = queued_.fetch_sub(1, std::memory_order_relaxed) - 1;
        if (metrics_ != nullptr) metrics_->dkim().queue_depth.Set(static_cast<double>(left));
        if (started) std::move(started)();
        std::move(done)(SignNow(message, account));
      });
  if (!submitted) {
    size_t left = queued_.fetch_sub(1, std::memory_order_relaxed) - 1;
    if (metrics_ != nullptr) metrics_->dkim().queue_depth.Set(static_cast<double>(left));
  }
  return submitted;
}

absl::StatusOr<std::string> SigningPool::SignNow(std::string_view message,
                                                 std::string_view account) const {
  std::shared_ptr<const SigningTable> table = this->table();
  const mail::HeaderSection section = mail::ParseHeaderSection(message);
  const std::string domain = FromDomain(section);
  std::vector<const SigningKey*> keys;
  if (table != nullptr && !domain.empty()) keys = table->KeysFor(domain, account);
  if (keys.empty()) {
    if (metrics_ != nullptr) metrics_->dkim().unsigned_total.Increment();
    return std::string();
  }
  const absl::Time now = clock_.Now();
  std::string fields;
  for (const SigningKey* key : keys) {
    const absl::Time start = absl::Now();
    FACTEUR_ASSIGN_OR_RETURN(std::string field, signer_->Sign(*key, message, section, now));
    fields.append(field);
    if (metrics_ != nullptr) {
      metrics_->dkim().sign_seconds.Observe(absl::ToDoubleSeconds(absl::Now() - start));
      (key->key->algorithm() == DkimAlgorithm::kEd25519Sha256 ? ed25519_signatures_
                                                               : rsa_signatures_)
          ->Increment();
    }
  }
  return fields;
}

void SigningPool::Reload(std::shared_ptr<const SigningTable> table) {
  absl::MutexLock lock(&mutex_);
  table_ = std::move(table);
}

std::shared_ptr<const SigningTable> SigningPool::table() const {
  absl::MutexLock lock(&mutex_);
  return table_;
}

}  // namespace facteur::dkim
