// File: throttle/pause_ledger.cc
// PauseLedger: the running pair pauses and which of them changed since the writer last looked.
#include "throttle/pause_ledger.h"

#include <algorithm>

namespace facteur::throttle {

void PauseLedger::Record(PairPause pause, bool by_operator) {
  Key key(pause.site, pause.source);
  absl::MutexLock lock(&mutex_);
  auto it = pauses_.find(key);
  if (it != pauses_.end() && it->second == pause) return;
  pauses_.insert_or_assign(key, std::move(pause));
  dirty_.insert(std::move(key));
  ++changes_;
  operator_dirty_ = operator_dirty_ || by_operator;
}

void PauseLedger::Lift(std::string_view site, std::string_view source, bool by_operator) {
  Key key{std::string(site), std::string(source)};
  absl::MutexLock lock(&mutex_);
  if (pauses_.erase(key) == 0) return;
  dirty_.insert(std::move(key));
  ++changes_;
  operator_dirty_ = operator_dirty_ || by_operator;
}

void PauseLedger::Restore(const std::vector<PairPause>& pauses) {
  absl::MutexLock lock(&mutex_);
  for (const PairPause& pause : pauses) pauses_.insert_or_assign(Key(pause.site, pause.source), pause);
}

absl::Time KeptUntil(const PairPause& pause) {
  if (!pause.backoff.has_value()) return pause.until;
  return std::max({pause.until, pause.backoff->ceiling_until, pause.backoff->hold_until});
}

std::vector<PairPause> PauseLedger::Running(absl::Time now) const {
  absl::MutexLock lock(&mutex_);
  std::vector<PairPause> running;
  for (const auto& [key, pause] : pauses_) {
    if (KeptUntil(pause) > now) running.push_back(pause);
  }
  return running;
}

PauseDelta PauseLedger::TakeDirtyWhenAny(absl::Duration max_wait) {
  absl::MutexLock lock(&mutex_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return closed_ || !dirty_.empty(); };
  mutex_.AwaitWithTimeout(absl::Condition(&ready), max_wait);
  PauseDelta delta;
  for (const Key& key : dirty_) {
    auto it = pauses_.find(key);
    if (it == pauses_.end()) {
      delta.lifted.push_back(key);
    } else {
      delta.set.push_back(it->second);
    }
  }
  dirty_.clear();
  delta.through = changes_;
  delta.by_operator = operator_dirty_;
  operator_dirty_ = false;
  return delta;
}

bool PauseDelta::has_operator_change() const {
  return by_operator ||
         std::any_of(set.begin(), set.end(), [](const PairPause& p) { return p.manual; });
}

void PauseLedger::Written(const PauseDelta& delta) {
  absl::MutexLock lock(&mutex_);
  written_ = std::max(written_, delta.through);
}

bool PauseLedger::WaitWritten(absl::Duration timeout) {
  absl::MutexLock lock(&mutex_);
  const uint64_t target = changes_;
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return written_ >= target || closed_;
  };
  mutex_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return written_ >= target;
}

void PauseLedger::Redirty(const PauseDelta& delta) {
  absl::MutexLock lock(&mutex_);
  for (const PairPause& pause : delta.set) dirty_.emplace(pause.site, pause.source);
  for (const Key& key : delta.lifted) dirty_.insert(key);
  operator_dirty_ = operator_dirty_ || delta.by_operator;
}

void PauseLedger::Close() {
  absl::MutexLock lock(&mutex_);
  closed_ = true;
}

bool PauseLedger::closed() const {
  absl::MutexLock lock(&mutex_);
  return closed_;
}

}  // namespace facteur::throttle
