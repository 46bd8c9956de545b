// File: throttle/pause_ledger.h
// The running pauses of (site, source) pairs, as they must survive a restart: an operator's
// (`facteur site suspend`) and those a reply began (a blocklist answer pauses the pair for hours,
// a rate limit for minutes). A PairThrottle (site_throttle.h) lives in the memory of the shard
// that owns its site and is gone after a restart; the delivery shards tell this ledger of each
// pause that begins, moves or is lifted, and a writer thread takes what changed
// (TakeDirtyWhenAny) to queue/suspension_store.h. At start-up the stored pauses come back
// through the same type. Pure bookkeeping: no clock is read, times are passed in.
// Thread contract: thread-safe (one mutex). Record/Lift are memory-only and cheap, so the I/O
// threads call them; TakeDirtyWhenAny blocks (it waits for a change) and is the writer's.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "throttle/response_class.h"

namespace facteur::throttle {

// What a reply left on a (site, source) pair besides its pause (site_throttle.h): the rate cut,
// the connection cap, the ceiling it taught and the hold on recovery. Kept with the pause so
// that a restart does not bring back at full speed a pair the site has just told to slow down
// (the test drive: Gmail's second 421 right after the restart's pause ended).
struct PairBackoff {
  double rate = 0;         // messages per minute in force; 0: the rate is not cut
  double rate_target = 0;  // what recovery climbs back to (the nominal rate, or the observed one)
  uint32_t connections = 0;        // connection cap in force; 0: not capped
  uint32_t connection_target = 0;  // what recovery climbs back to
  double ceiling = 0;              // the learned ceiling, messages per minute; 0: none
  absl::Time ceiling_until = absl::InfinitePast();
  absl::Time hold_until = absl::InfinitePast();  // no recovery before (ClassAction::hold)

  friend bool operator==(const PairBackoff&, const PairBackoff&) = default;
};

// One pause of a (site, source) pair, or of every source of a site; or, once the pause has
// ended, the back-off that outlives it.
struct PairPause {
  std::string site;    // the site key ("google", "google/example.com", "mx:...", "route:...")
  std::string source;  // the [[source]] name; "" for an operator's pause of every source
  // The site's pool when known, so that a site restored before any mail lists as it did.
  std::string pool;
  absl::Time since = absl::InfinitePast();  // when it began (bounds how far a reply extends it)
  absl::Time until = absl::InfinitePast();  // when it ends
  bool manual = false;                      // an operator's (SuspendManually), not a reply's
  // The class of the reply that began or last extended it; none for a manual pause.
  std::optional<ResponseClass> cause;
  // The pair's back-off when it was recorded; none when the pair was at its nominal limits.
  std::optional<PairBackoff> backoff;

  friend bool operator==(const PairPause&, const PairPause&) = default;
};

// Until when a record matters: the pause's end, or later the end of the hold or of the learned
// ceiling it keeps. A rate cut or a connection cap alone is kept no longer than the pause: a
// restart after it loses what recovery had left to do, never a pause or a ceiling.
absl::Time KeptUntil(const PairPause& pause);

// What changed since the last TakeDirty: pauses to write, and pairs whose pause was lifted (to
// delete). A pair appears in one list at most.
struct PauseDelta {
  std::vector<PairPause> set;
  std::vector<std::pair<std::string, std::string>> lifted;  // (site, source)
  // The ledger's change count this delta brings the store up to (Written).
  uint64_t through = 0;
  // A change an operator made (Record or Lift `by_operator`) is in it.
  bool by_operator = false;
  bool empty() const { return set.empty() && lifted.empty(); }
  // An operator's change is in it (a manual pause, or a resume): worth a synced write, since
  // the operator is told it is done. A reply's pause or back-off is advisory, like reputation,
  // and rides the spool's next sync.
  bool has_operator_change() const;
};

class PauseLedger {
 public:
  PauseLedger() = default;
  PauseLedger(const PauseLedger&) = delete;
  PauseLedger& operator=(const PauseLedger&) = delete;

  // The pair's pause is now `pause` (begun, extended, or replaced). Marked dirty unless equal
  // to what the ledger holds. `by_operator`: an operator's command made the change (`site
  // suspend`/`resume`), which is then written synced.
  void Record(PairPause pause, bool by_operator = false);
  // The pair has nothing left to keep before its time: an operator's resume, or a back-off
  // recovered. Marked dirty when the ledger held a record. A pause that simply runs out needs
  // no call: its record expires by its time.
  void Lift(std::string_view site, std::string_view source, bool by_operator = false);

  // Pauses read back at start-up: held, not dirty (they are stored already).
  void Restore(const std::vector<PairPause>& pauses);
  // The records that matter at `now` (KeptUntil), by site then source.
  std::vector<PairPause> Running(absl::Time now) const;

  // The changes since the last call, which are then no longer dirty. Waits up to `max_wait`
  // (real time) for one when there is none; returns at once after Close().
  PauseDelta TakeDirtyWhenAny(absl::Duration max_wait);
  // A delta that could not be written: its pairs become dirty again (with their state now).
  void Redirty(const PauseDelta& delta);
  // The writer stored a delta: every change up to its `through` is on disk.
  void Written(const PauseDelta& delta);
  // Waits up to `timeout` (real time) until every change made so far is written; false when
  // that did not happen (a failing disk, or closed first). For `site suspend`, which must not
  // answer "suspended" for a pause a restart would forget.
  bool WaitWritten(absl::Duration timeout);
  // Wakes the writer for good: TakeDirtyWhenAny no longer waits (what is dirty is still given).
  void Close();
  bool closed() const;

 private:
  using Key = std::pair<std::string, std::string>;  // (site, source)
  mutable absl::Mutex mutex_;
  std::map<Key, PairPause> pauses_ ABSL_GUARDED_BY(mutex_);
  // Pairs changed since the last TakeDirty: their state is what pauses_ holds (none: lifted).
  std::set<Key> dirty_ ABSL_GUARDED_BY(mutex_);
  uint64_t changes_ ABSL_GUARDED_BY(mutex_) = 0;  // Record/Lift calls that made a pair dirty
  bool operator_dirty_ ABSL_GUARDED_BY(mutex_) = false;  // an operator's change is not yet taken
  uint64_t written_ ABSL_GUARDED_BY(mutex_) = 0;  // of them, those stored
  bool closed_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace facteur::throttle
