// File: queue/spool.cc
// The envelope codec, recovery, the due index, the group-committing writer thread and the read
// functions.
#include "queue/spool.h"

#include <pthread.h>
#include <algorithm>
#include <iterator>
#include <atomic>
#include <chrono>
#include <deque>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/base/varint_codec.h"
#include "rocksdb/iterator.h"
#include "rocksdb/write_batch.h"

namespace facteur::queue {
namespace {

// Version 2 added the recipients' greylisting pins, version 3 their last reply, version 4 their
// own retry time; spools written by versions 1 to 3 are still read.
constexpr uint8_t kEnvelopeVersion = 4;
constexpr uint8_t kEnvelopeVersionWithoutRetryAt = 3;
constexpr uint8_t kEnvelopeVersionWithoutLastReply = 2;
constexpr uint8_t kEnvelopeVersionWithoutPins = 1;
constexpr uint64_t kFlagSmtpUtf8 = 1 << 0;
constexpr uint64_t kFlagEightBit = 1 << 1;
constexpr uint64_t kKnownFlags = kFlagSmtpUtf8 | kFlagEightBit;
// The smallest encoded recipient: three empty strings and a state.
constexpr size_t kMinRecipientBytes = 4;
// After a failed commit, Resume() is tried at most this often: a full disk does not empty itself
// in microseconds, and each attempt flushes memtables.
constexpr absl::Duration kResumeInterval = absl::Seconds(1);
// Resume() flushes every memtable; if that flush hits a full disk again, RocksDB marks the error
// fatal and only a reopen clears it. So resume only with room for the memtables plus this.
constexpr uint64_t kResumeSpareBytes = 64 << 20;

rocksdb::Slice ToSlice(std::string_view s) { return {s.data(), s.size()}; }
std::string_view ToView(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

// Encoding primitives: engine/base/varint_codec.h.
using Reader = VarintReader;

absl::Status Malformed(std::string_view what) {
  return absl::DataLossError(absl::StrCat("malformed envelope: ", ToAbsl(what)));
}

std::string IdText(std::string_view key) {
  std::optional<MessageId> id = MessageId::FromBytes(key);
  if (id.has_value()) return id->ToString();
  std::string hex;
  for (unsigned char c : key) absl::StrAppend(&hex, absl::Hex(c, absl::kZeroPad2));
  return absl::StrCat("key 0x", hex);
}

// The time a schedule key holds for `t` (ScheduleKey()): whole microseconds, and the epoch for
// anything before it. The due index keeps these, so that an entry it hands out names its key.
absl::Time KeyTime(absl::Time t) {
  return absl::FromUnixMicros(std::max<int64_t>(0, absl::ToUnixMicros(t)));
}

// Removes what a crash or a bug could leave behind, so that every envelope left has its body and
// exactly one schedule entry, at its next attempt, and every body and schedule entry its
// envelope. Returns the schedule of the messages left (one entry each) for the due index.
// Each family is read once: envelopes and bodies share their keys (the id), so one merge walk
// over both finds the orphans of either side and notes the due time of each good envelope; the
// walk over the schedule then checks each entry against those notes.
absl::StatusOr<std::vector<ScheduleEntry>> Recover(Store& store) {
  rocksdb::DB& db = store.db();
  rocksdb::ReadOptions read_options;
  read_options.fill_cache = false;  // a one-off scan; keep the cache for the delivery path
  // Sequential reads of whole files: large reads instead of one pread per 4 KB block.
  read_options.readahead_size = 2 << 20;
  rocksdb::WriteBatch repairs;
  uint64_t removed = 0;
  struct Due {
    absl::Time due;
    bool scheduled = false;  // its schedule entry was seen
  };
  absl::flat_hash_map<MessageId, Due> messages;

  {
    std::unique_ptr<rocksdb::Iterator> envelopes(
        db.NewIterator(read_options, store.family(Family::kEnvelope)));
    std::unique_ptr<rocksdb::Iterator> bodies(
        db.NewIterator(read_options, store.family(Family::kBody)));
    envelopes->SeekToFirst();
    bodies->SeekToFirst();
    while (envelopes->Valid() || bodies->Valid()) {
      int order;
      if (!envelopes->Valid()) {
        order = 1;
      } else if (!bodies->Valid()) {
        order = -1;
      } else {
        order = envelopes->key().compare(bodies->key());
      }
      if (order > 0) {
        Log(LogLevel::kWarning, "spool recovery: removing body of %s, which has no envelope",
            IdText(ToView(bodies->key())));
        FACTEUR_RETURN_IF_ERROR(
            ToStatus(repairs.Delete(store.family(Family::kBody), bodies->key()), "recovery"));
        ++removed;
        bodies->Next();
        continue;
      }
      const std::string key = envelopes->key().ToString();
      absl::StatusOr<Envelope> envelope = DecodeEnvelope(ToView(envelopes->value()));
      if (absl::IsFailedPrecondition(envelope.status())) {
        // A rollback: removing what a newer version wrote would lose acknowledged mail.
        return absl::FailedPreconditionError(
            absl::StrCat("spool ", store.path(), ": message ", IdText(key), ": ",
                         envelope.status().message(), "; run that version, or a later one"));
      }
      const bool has_body = order == 0;
      if (envelope.ok() && envelope->id.Bytes() != key) {
        envelope = absl::DataLossError("envelope id differs from its key");
      }
      if (!envelope.ok() || !has_body) {
        Log(LogLevel::kWarning, "spool recovery: removing message %s: %s", IdText(key),
            envelope.ok() ? "its body is missing" : std::string(envelope.status().message()));
        FACTEUR_RETURN_IF_ERROR(
            ToStatus(repairs.Delete(store.family(Family::kEnvelope), key), "recovery"));
        if (has_body) {
          FACTEUR_RETURN_IF_ERROR(
              ToStatus(repairs.Delete(store.family(Family::kBody), key), "recovery"));
        }
        // Its schedule entry, if any, finds no envelope in the schedule walk below.
        ++removed;
      } else {
        messages.try_emplace(envelope->id, Due{KeyTime(envelope->next_attempt)});
      }
      envelopes->Next();
      if (has_body) bodies->Next();
    }
    FACTEUR_RETURN_IF_ERROR(ToStatus(envelopes->status(), "recovery: scanning envelopes"));
    FACTEUR_RETURN_IF_ERROR(ToStatus(bodies->status(), "recovery: scanning bodies"));
  }

  // Schedule entries: each must name a live envelope whose next attempt is the entry's time;
  // anything else would make the scheduler look up a message that is gone or run it twice.
  // The good ones come out in key order, i.e. earliest due first: the due index is built from
  // them by appending (DueIndex), where a million entries in hash order took a second.
  std::vector<ScheduleEntry> due_times;
  due_times.reserve(messages.size());
  {
    std::unique_ptr<rocksdb::Iterator> schedule(
        db.NewIterator(read_options, store.family(Family::kSchedule)));
    for (schedule->SeekToFirst(); schedule->Valid(); schedule->Next()) {
      absl::StatusOr<ScheduleEntry> entry = ParseScheduleKey(ToView(schedule->key()));
      if (entry.ok()) {
        auto it = messages.find(entry->id);
        if (it != messages.end() && it->second.due == entry->due) {
          it->second.scheduled = true;  // keys are unique: one entry per (due, id)
          due_times.push_back(*entry);
          continue;
        }
      }
      Log(LogLevel::kWarning,
          "spool recovery: removing schedule entry %s without an envelope due then",
          entry.ok() ? entry->id.ToString() : IdText(ToView(schedule->key())));
      FACTEUR_RETURN_IF_ERROR(ToStatus(
          repairs.Delete(store.family(Family::kSchedule), schedule->key()), "recovery"));
      ++removed;
    }
    FACTEUR_RETURN_IF_ERROR(ToStatus(schedule->status(), "recovery: scanning the schedule"));
  }
  // Conversely an envelope without its entry would never be tried: it gets one back.
  for (const auto& [id, due] : messages) {
    if (due.scheduled) continue;
    Log(LogLevel::kWarning, "spool recovery: rescheduling %s, which had no schedule entry",
        id.ToString());
    FACTEUR_RETURN_IF_ERROR(ToStatus(
        repairs.Put(store.family(Family::kSchedule), ScheduleKey(due.due, id), ""), "recovery"));
    due_times.push_back(ScheduleEntry{due.due, id});
  }
  if (repairs.Count() > 0) {
    rocksdb::WriteOptions write_options;
    write_options.sync = true;
    FACTEUR_RETURN_IF_ERROR(ToStatus(db.Write(write_options, &repairs), "recovery: repairing"));
  }
  Log(LogLevel::kInfo, "spool %s: %d messages, %d broken entries removed", store.path(),
      due_times.size(), removed);
  return due_times;
}

// The due time of every queued message and which of them are leased: the scheduler's view of
// the `schedule` family, in memory so that finding due work costs no disk read. Loaded from
// recovery; the writer thread applies each commit to it after the synced write returns, so it
// holds exactly what is durable, and the writer resolves updates and removals against it.
// Thread contract: thread-safe.
class DueIndex {
 public:
  // What a commit did: each id's new due time, or nullopt when it left the queue.
  using Changes = absl::flat_hash_map<MessageId, std::optional<absl::Time>>;

  // `entries` earliest first (as Recover() gives them) cost an append each; any order works.
  explicit DueIndex(const std::vector<ScheduleEntry>& entries) {
    absl::MutexLock lock(&mutex_);
    by_id_.reserve(entries.size());
    for (const ScheduleEntry& entry : entries) {
      if (by_id_.try_emplace(entry.id, Slot{entry.due, false}).second) {
        // Nothing counts as due yet (cursor_ is InfinitePast): no AddUnleased() bookkeeping.
        unleased_.insert(unleased_.end(), {entry.due, entry.id});
      }
    }
  }

  // The due time of `id`; nullopt when it is not queued.
  std::optional<absl::Time> DueOf(const MessageId& id) const {
    absl::MutexLock lock(&mutex_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return std::nullopt;
    return it->second.due;
  }

  // A committed change ends the lease of each id it touches.
  void Apply(const Changes& changes) {
    absl::MutexLock lock(&mutex_);
    for (const auto& [id, due] : changes) {
      auto it = by_id_.find(id);
      if (it != by_id_.end()) {
        if (it->second.leased) {
          --leased_;
        } else {
          RemoveUnleased(it->second.due, id);
        }
        if (!due.has_value()) {
          by_id_.erase(it);
          continue;
        }
        it->second = Slot{*due, false};
      } else if (due.has_value()) {
        by_id_.try_emplace(id, Slot{*due, false});
      } else {
        continue;
      }
      AddUnleased(*due, id);
    }
  }

  std::vector<ScheduleEntry> LeaseDue(absl::Time now, size_t max) {
    std::vector<ScheduleEntry> due;
    absl::MutexLock lock(&mutex_);
    while (due.size() < max && !unleased_.empty() && unleased_.begin()->first <= now) {
      auto first = unleased_.begin();
      due.push_back(ScheduleEntry{first->first, first->second});
      by_id_.find(first->second)->second.leased = true;
      ++leased_;
      if (first->first <= cursor_) --due_at_cursor_;
      unleased_.erase(first);
    }
    return due;
  }

  void Release(const MessageId& id) {
    absl::MutexLock lock(&mutex_);
    auto it = by_id_.find(id);
    if (it == by_id_.end() || !it->second.leased) return;
    it->second.leased = false;
    --leased_;
    AddUnleased(it->second.due, id);
  }

  absl::Time NextDue() const {
    absl::MutexLock lock(&mutex_);
    return unleased_.empty() ? absl::InfiniteFuture() : unleased_.begin()->first;
  }

  size_t size() const {
    absl::MutexLock lock(&mutex_);
    return by_id_.size();
  }

  size_t leased() const {
    absl::MutexLock lock(&mutex_);
    return leased_;
  }

  // Exact, and cheap however large the queue: the count of unleased entries due by a cursor
  // time is kept as entries come and go, and each call only walks the entries that fell due
  // since the previous one (a clock that went back starts over from the front).
  QueueCounts Counts(absl::Time now) const {
    absl::MutexLock lock(&mutex_);
    if (now < cursor_) {
      cursor_ = absl::InfinitePast();
      due_at_cursor_ = 0;
    }
    auto it = unleased_.lower_bound({cursor_, MessageId()});
    while (it != unleased_.end() && it->first <= cursor_) ++it;  // the few due at cursor_
    for (; it != unleased_.end() && it->first <= now; ++it) ++due_at_cursor_;
    cursor_ = now;
    QueueCounts counts;
    counts.leased = leased_;
    counts.ready = due_at_cursor_;
    counts.scheduled = unleased_.size() - due_at_cursor_;
    return counts;
  }

 private:
  void AddUnleased(absl::Time due, const MessageId& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (unleased_.insert({due, id}).second && due <= cursor_) ++due_at_cursor_;
  }
  void RemoveUnleased(absl::Time due, const MessageId& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (unleased_.erase({due, id}) > 0 && due <= cursor_) --due_at_cursor_;
  }

  struct Slot {
    absl::Time due;
    bool leased;  // when leased, the message is not in unleased_
  };

  mutable absl::Mutex mutex_;
  // (due, id) of the messages not leased, earliest first: LeaseDue() and NextDue() read its front.
  absl::btree_set<std::pair<absl::Time, MessageId>> unleased_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<MessageId, Slot> by_id_ ABSL_GUARDED_BY(mutex_);
  size_t leased_ ABSL_GUARDED_BY(mutex_) = 0;
  // Counts(): how many entries of unleased_ are due at or before cursor_.
  mutable absl::Time cursor_ ABSL_GUARDED_BY(mutex_) = absl::InfinitePast();
  mutable uint64_t due_at_cursor_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace

// --- Envelope codec ---

std::string EncodeEnvelope(const Envelope& envelope) {
  // The oldest version that holds what the envelope has: what an older facteur can still
  // read, so that a rollback keeps the mail (DecodeEnvelope refuses newer versions). Most
  // envelopes never need version 4: a recipient has a retry time of its own only when the
  // message has several that wait for different things.
  const bool retry_times =
      std::any_of(envelope.recipients.begin(), envelope.recipients.end(),
                  [](const RecipientRecord& r) { return r.retry_at != absl::InfinitePast(); });
  const bool last_replies =
      retry_times || std::any_of(envelope.recipients.begin(), envelope.recipients.end(),
                                 [](const RecipientRecord& r) { return !r.last_reply.empty(); });
  std::string out;
  out.reserve(64 + envelope.sender.size() + envelope.recipients.size() * 32);
  out.push_back(static_cast<char>(retry_times    ? kEnvelopeVersion
                                  : last_replies ? kEnvelopeVersionWithoutRetryAt
                                                 : kEnvelopeVersionWithoutLastReply));
  out.append(envelope.id.Bytes());
  PutVarint(out, (envelope.smtputf8 ? kFlagSmtpUtf8 : 0) | (envelope.eight_bit ? kFlagEightBit : 0));
  PutString(out, envelope.sender);
  PutString(out, envelope.listener);
  PutString(out, envelope.account);
  PutString(out, envelope.client);
  PutTime(out, envelope.received_at);
  PutString(out, envelope.dsn_ret);
  PutString(out, envelope.dsn_envid);
  PutVarint(out, envelope.attempts);
  PutTime(out, envelope.next_attempt);
  PutVarint(out, envelope.recipients.size());
  for (const RecipientRecord& recipient : envelope.recipients) {
    PutString(out, recipient.address);
    PutVarint(out, static_cast<uint64_t>(recipient.state));
    PutString(out, recipient.notify);
    PutString(out, recipient.orcpt);
    PutString(out, recipient.pinned_source);
    PutVarint(out, recipient.greylisted);
    if (last_replies) PutString(out, recipient.last_reply);
    // The epoch stands for "none" (InfinitePast has no micros): due either way.
    if (retry_times) {
      PutTime(out, recipient.retry_at == absl::InfinitePast() ? absl::UnixEpoch()
                                                              : recipient.retry_at);
    }
  }
  return out;
}

absl::StatusOr<Envelope> DecodeEnvelope(std::string_view bytes) {
  Reader in(bytes);
  Envelope envelope;
  std::string_view version;
  if (!in.Bytes(1, version)) return Malformed("empty");
  const uint8_t format = static_cast<uint8_t>(version[0]);
  if (format > kEnvelopeVersion) {
    // Not damage: a newer facteur wrote it. Recovery stops rather than remove it as broken.
    return absl::FailedPreconditionError(
        absl::StrCat("envelope version ", format, ", written by a newer facteur (this one reads ",
                     "versions up to ", kEnvelopeVersion, ")"));
  }
  if (format < kEnvelopeVersionWithoutPins) {
    return Malformed(absl::StrCat("unknown version ", format));
  }
  std::string_view id;
  if (!in.Bytes(MessageId::kBytes, id)) return Malformed("truncated id");
  envelope.id = *MessageId::FromBytes(id);
  uint64_t flags;
  if (!in.Varint(flags)) return Malformed("truncated flags");
  if ((flags & ~kKnownFlags) != 0) return Malformed("unknown flags");
  envelope.smtputf8 = (flags & kFlagSmtpUtf8) != 0;
  envelope.eight_bit = (flags & kFlagEightBit) != 0;
  uint64_t attempts;
  if (!in.String(envelope.sender) || !in.String(envelope.listener) ||
      !in.String(envelope.account) || !in.String(envelope.client) ||
      !in.Time(envelope.received_at) || !in.String(envelope.dsn_ret) ||
      !in.String(envelope.dsn_envid) || !in.Varint(attempts) || !in.Time(envelope.next_attempt)) {
    return Malformed("truncated header field");
  }
  if (attempts > UINT32_MAX) return Malformed("attempts out of range");
  envelope.attempts = static_cast<uint32_t>(attempts);
  uint64_t count;
  if (!in.Varint(count)) return Malformed("truncated recipient count");
  // Bounds the reserve() below by what the bytes can hold, whatever the count claims.
  if (count > in.remaining() / kMinRecipientBytes) return Malformed("recipient count too large");
  envelope.recipients.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    RecipientRecord& recipient = envelope.recipients.emplace_back();
    uint64_t state;
    if (!in.String(recipient.address) || !in.Varint(state) || !in.String(recipient.notify) ||
        !in.String(recipient.orcpt)) {
      return Malformed("truncated recipient");
    }
    if (format >= kEnvelopeVersionWithoutLastReply) {
      uint64_t greylisted;
      if (!in.String(recipient.pinned_source) || !in.Varint(greylisted)) {
        return Malformed("truncated recipient");
      }
      if (greylisted > UINT32_MAX) return Malformed("greylisted count out of range");
      recipient.greylisted = static_cast<uint32_t>(greylisted);
    }
    if (format >= kEnvelopeVersionWithoutRetryAt && !in.String(recipient.last_reply)) {
      return Malformed("truncated recipient");
    }
    if (format >= kEnvelopeVersion) {
      if (!in.Time(recipient.retry_at)) return Malformed("truncated recipient");
      if (recipient.retry_at == absl::UnixEpoch()) recipient.retry_at = absl::InfinitePast();
    }
    if (state > static_cast<uint64_t>(RecipientState::kBounced)) {
      return Malformed("unknown recipient state");
    }
    recipient.state = static_cast<RecipientState>(state);
  }
  if (in.remaining() != 0) return Malformed("trailing bytes");
  return envelope;
}

std::string ScheduleKey(absl::Time due, const MessageId& id) {
  const uint64_t micros = static_cast<uint64_t>(std::max<int64_t>(0, absl::ToUnixMicros(due)));
  std::string key(8, '\0');
  for (int i = 0; i < 8; ++i) key[i] = static_cast<char>(micros >> (56 - 8 * i));
  key.append(id.Bytes());
  return key;
}

absl::StatusOr<ScheduleEntry> ParseScheduleKey(std::string_view key) {
  if (key.size() != 8 + MessageId::kBytes) {
    return absl::DataLossError(absl::StrCat("schedule key of ", key.size(), " bytes"));
  }
  uint64_t micros = 0;
  for (int i = 0; i < 8; ++i) micros = (micros << 8) | static_cast<uint8_t>(key[i]);
  if (micros > static_cast<uint64_t>(INT64_MAX)) {
    return absl::DataLossError("schedule time out of range");
  }
  return ScheduleEntry{absl::FromUnixMicros(static_cast<int64_t>(micros)),
                       *MessageId::FromBytes(key.substr(8))};
}

// --- The writer ---

class Spool::Writer {
 public:
  Writer(Store& store, const SpoolOptions& options, Clock& clock,
         const std::vector<ScheduleEntry>& recovered)
      : store_(store), options_(options), clock_(clock), index_(recovered) {
    if (options_.max_batch == 0) options_.max_batch = 1;
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "spool-writer");
      StopPerfCountingOnThisThread();
      if (options_.on_writer_start) options_.on_writer_start();
      Run();
    });
  }

  ~Writer() {
    {
      absl::MutexLock lock(&mutex_);
      stopping_ = true;
    }
    thread_.join();  // Run() drains the deque before it returns
  }

  // The three kinds of change are encoded here, on the caller's thread, so that the single
  // writer spends its time on I/O.
  // `expected`: this enqueue keeps a promise of ExpectEnqueue().
  void Enqueue(Envelope envelope, std::string body,
               absl::AnyInvocable<void(absl::Status) &&> done, bool expected = false) {
    if (envelope.id.IsZero()) {
      if (expected) Withdraw();
      std::move(done)(absl::InvalidArgumentError("spool: message without an id"));
      return;
    }
    Submit(Item{.kind = Kind::kEnqueue,
                .id = envelope.id,
                .due = KeyTime(envelope.next_attempt),
                .envelope = EncodeEnvelope(envelope),
                .body = std::move(body),
                .done = std::move(done)},
           expected);
  }

  void Expect() {
    absl::MutexLock lock(&mutex_);
    ++expected_;
  }
  // The writer's condition is evaluated again when the lock is released: a held commit whose
  // last promise is withdrawn goes at once.
  void Withdraw() {
    absl::MutexLock lock(&mutex_);
    --expected_;
  }

  void Update(Envelope envelope, absl::Time previous_due,
              absl::AnyInvocable<void(absl::Status) &&> done, Durability durability,
              std::vector<NewMessage> along) {
    if (envelope.id.IsZero() || !HaveIds(along)) {
      std::move(done)(absl::InvalidArgumentError("spool: update without an id"));
      return;
    }
    Submit(Item{.kind = Kind::kUpdate,
                .id = envelope.id,
                .due = KeyTime(envelope.next_attempt),
                .previous_due = KeyTime(previous_due),
                .envelope = EncodeEnvelope(envelope),
                .done = std::move(done),
                .durability = durability,
                .along = Along(std::move(along), durability)});
  }

  void Remove(const MessageId& id, absl::Time due,
              absl::AnyInvocable<void(absl::Status) &&> done, Durability durability,
              std::vector<NewMessage> along) {
    if (id.IsZero() || !HaveIds(along)) {
      std::move(done)(absl::InvalidArgumentError("spool: removal without an id"));
      return;
    }
    Submit(Item{.kind = Kind::kRemove,
                .id = id,
                .previous_due = KeyTime(due),
                .done = std::move(done),
                .durability = durability,
                .along = Along(std::move(along), durability)});
  }

  void SetCommitObserver(CommitObserver observer) {
    absl::MutexLock lock(&observer_mutex_);
    observer_ = std::move(observer);
  }

  void SetScheduleObserver(absl::AnyInvocable<void()> observer) {
    absl::MutexLock lock(&schedule_observer_mutex_);
    schedule_observer_ = std::move(observer);
  }

  DueIndex& index() { return index_; }
  const DueIndex& index() const { return index_; }

 private:
  enum class Kind : uint8_t { kEnqueue, kUpdate, kRemove };

  // One change waiting for the writer. Each becomes a few Put/Delete operations in the batch's
  // WriteBatch (Stage()), so that any mix of kinds shares one synced write.
  struct Item {
    Kind kind;
    MessageId id;
    absl::Time due = absl::InfinitePast();           // kEnqueue, kUpdate: the new schedule entry
    absl::Time previous_due = absl::InfinitePast();  // kUpdate, kRemove: as the caller saw it
    std::string envelope = {};                       // kEnqueue, kUpdate: encoded
    std::string body = {};                           // kEnqueue
    absl::AnyInvocable<void(absl::Status) &&> done;
    // Enqueues are synced, except the messages that go `along` an update or removal: theirs.
    Durability durability = Durability::kSynced;
    absl::Status refusal = absl::OkStatus();  // set by Stage() when the item cannot apply
    // kUpdate, kRemove: enqueues staged right after this item when it applies, so that they
    // are in the same WriteBatch (NewMessage). Their `done` is empty: this item's answers.
    std::vector<Item> along = {};
  };

  static bool HaveIds(const std::vector<NewMessage>& messages) {
    return std::none_of(messages.begin(), messages.end(),
                        [](const NewMessage& m) { return m.envelope.id.IsZero(); });
  }

  static std::vector<Item> Along(std::vector<NewMessage> messages, Durability durability) {
    std::vector<Item> items;
    items.reserve(messages.size());
    for (NewMessage& message : messages) {
      items.push_back(Item{.kind = Kind::kEnqueue,
                           .id = message.envelope.id,
                           .due = KeyTime(message.envelope.next_attempt),
                           .envelope = EncodeEnvelope(message.envelope),
                           .body = std::move(message.body),
                           .done = nullptr,
                           .durability = durability});
    }
    return items;
  }

  void Submit(Item item, bool expected = false) {
    absl::Status refusal;
    {
      absl::MutexLock lock(&mutex_);
      if (expected) --expected_;  // kept or refused, the promise is settled
      if (stopping_) {
        refusal = absl::UnavailableError("spool: closing");
      } else if (pending_.size() >= options_.max_pending) {
        refusal = absl::UnavailableError(
            absl::StrCat("spool: writer saturated (", pending_.size(), " changes waiting)"));
      } else {
        pending_.push_back(std::move(item));
        return;
      }
    }
    std::move(item.done)(std::move(refusal));
  }

  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return !pending_.empty() || stopping_;
  }

  // Syncs what unsynced commits left in the log (Durability::kRidesNextSync) once they are
  // max_unsynced old. Writer thread only, outside mutex_.
  void SyncOverdue(bool force) {
    if (!unsynced_since_.has_value()) return;
    // Not while the database is in error after a failed write: RocksDB asserts that nothing
    // syncs a log whose write failed (an abort). Resuming makes the changes durable, or the
    // next synced commit does; at stop there is no next one, so resume now if the disk allows.
    if (needs_resume_ && (!force || !MaybeResume(/*now_whatever_the_interval=*/true).ok() || needs_resume_)) return;
    if (!force && std::chrono::steady_clock::now() - *unsynced_since_ <
                      absl::ToChronoNanoseconds(options_.max_unsynced)) {
      return;
    }
    const rocksdb::Status synced = store_.db().SyncWAL();
    if (!synced.ok()) {
      // The changes are written; the next synced commit (or the next try) syncs them.
      Log(LogLevel::kError, "spool %s: syncing settled changes: %s", store_.path(),
          synced.ToString());
      return;
    }
    unsynced_since_.reset();
  }

  // A held commit goes when every promised enqueue has come (or been withdrawn), when the
  // batch would be full, or at stop.
  bool ExpectedArrived() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return expected_ == 0 || stopping_ || pending_.size() >= room_;
  }

  // Moves up to `room` pending changes into `batch`.
  void Take(std::vector<Item>& batch, size_t room) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    const size_t n = std::min(room, pending_.size());
    for (size_t i = 0; i < n; ++i) {
      batch.push_back(std::move(pending_.front()));
      pending_.pop_front();
    }
  }

  void Run() {
    std::vector<Item> batch;
    batch.reserve(options_.max_batch);
    for (;;) {
      bool stop = false;
      {
        absl::MutexLock lock(&mutex_);
        const absl::Condition has_work(this, &Writer::HasWorkOrStopping);
        if (unsynced_since_.has_value()) {
          mutex_.AwaitWithTimeout(has_work, options_.max_unsynced);
        } else {
          mutex_.Await(has_work);
        }
        stop = stopping_ && pending_.empty();  // stopping, and nothing left to commit
        // Everything that arrived during the previous fsync goes into this one: the batch
        // grows with the load by itself (group commit), up to max_batch.
        Take(batch, options_.max_batch);
        // Messages being signed arrive within about one signature: hold the commit for them
        // (bounded, in real time whatever the clock) rather than each paying its own fsync.
        if (!batch.empty() && expected_ > 0 && batch.size() < options_.max_batch &&
            options_.expected_wait > absl::ZeroDuration()) {
          room_ = options_.max_batch - batch.size();
          mutex_.AwaitWithTimeout(absl::Condition(this, &Writer::ExpectedArrived),
                                  options_.expected_wait);
          Take(batch, room_);
        }
      }
      if (!batch.empty()) Commit(batch);
      batch.clear();
      SyncOverdue(/*force=*/stop);  // a clean stop leaves everything synced
      if (stop) return;
    }
  }

  // After a failed commit RocksDB may have stopped writes (a background error). Resume() clears
  // it once the cause is gone, e.g. space freed on the disk, so that the spool heals itself.
  // `now`: whatever the time since the last attempt (at stop).
  absl::Status MaybeResume(bool now_whatever_the_interval = false) {
    if (!needs_resume_) return absl::OkStatus();
    const absl::Time now = clock_.Now();
    if (!now_whatever_the_interval && now - last_resume_attempt_ < kResumeInterval) {
      // Not yet: try the write anyway. If the database still refuses writes it fails at once
      // with the stored error, without touching the disk.
      return absl::OkStatus();
    }
    last_resume_attempt_ = now;
    rocksdb::DB& db = store_.db();
    uint64_t free_bytes = 0;
    uint64_t memtable_bytes = 0;
    if (db.GetEnv()->GetFreeSpace(store_.path(), &free_bytes).ok() &&
        db.GetAggregatedIntProperty(rocksdb::DB::Properties::kCurSizeAllMemTables,
                                    &memtable_bytes) &&
        free_bytes < memtable_bytes + kResumeSpareBytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "spool: disk still full (", free_bytes, " bytes free under ", store_.path(), ")"));
    }
    rocksdb::Status status = db.Resume();
    if (!status.ok()) {
      if (status.severity() >= rocksdb::Status::Severity::kFatalError) {
        Log(LogLevel::kError, "spool %s: unrecoverable write error, restart needed: %s",
            store_.path(), status.ToString());
      }
      return ToStatus(status, "spool: resuming after a write error");
    }
    Log(LogLevel::kInfo, "spool %s: writes resumed after an error", store_.path());
    needs_resume_ = false;
    return absl::OkStatus();
  }

  // Adds the operations of `item` to `out`, given the message's schedule entry on disk as the
  // batch so far leaves it (`current`: nullopt when not queued). The due index, not the
  // caller's `previous_due`, names the entry to delete: it is what is durable, and a queue
  // operation may have moved the message since the caller read it. So an update never leaves a
  // second entry behind, and an update of a message that is gone is refused (NotFound) instead
  // of bringing back an envelope without a body.
  rocksdb::Status Stage(Item& item, std::optional<absl::Time> current, rocksdb::WriteBatch& out) {
    const rocksdb::Slice key = ToSlice(item.id.Bytes());
    rocksdb::ColumnFamilyHandle* const body = store_.family(Family::kBody);
    rocksdb::ColumnFamilyHandle* const envelope = store_.family(Family::kEnvelope);
    rocksdb::ColumnFamilyHandle* const schedule = store_.family(Family::kSchedule);
    rocksdb::Status status;
    switch (item.kind) {
      case Kind::kEnqueue:  // an id queued twice replaces the message: `current` goes
        status = out.Put(body, key, item.body);
        if (status.ok()) status = out.Put(envelope, key, item.envelope);
        break;
      case Kind::kUpdate:
        if (!current.has_value()) {
          item.refusal = absl::NotFoundError(
              absl::StrCat("spool: message ", item.id.ToString(), " is no longer queued"));
          return status;
        }
        status = out.Put(envelope, key, item.envelope);
        break;
      case Kind::kRemove:
        status = out.Delete(body, key);
        if (status.ok()) status = out.Delete(envelope, key);
        // Idempotent: when the index knows nothing of the message, delete the entry the caller
        // named anyway; a tombstone costs nothing.
        if (!current.has_value()) current = item.previous_due;
        break;
    }
    const bool adds_entry = item.kind != Kind::kRemove;
    if (status.ok() && current.has_value() && !(adds_entry && *current == item.due)) {
      status = out.Delete(schedule, ScheduleKey(*current, item.id));
    }
    if (status.ok() && adds_entry) status = out.Put(schedule, ScheduleKey(item.due, item.id), "");
    return status;
  }

  void Commit(std::vector<Item>& batch) {
    const auto start = std::chrono::steady_clock::now();
    size_t bytes = 0;
    const auto item_bytes = [](const Item& item) {
      return item.body.size() + item.envelope.size() + 4 * (8 + MessageId::kBytes) + 32;
    };
    for (const Item& item : batch) {
      bytes += item_bytes(item);
      for (const Item& message : item.along) bytes += item_bytes(message);
    }
    rocksdb::WriteBatch write_batch(bytes);
    // What the batch does to the index, item after item: a batch may touch one id twice (an
    // update then a removal), and each item must see the ones before it.
    DueIndex::Changes changes;
    size_t staged = 0;
    bool needs_sync = false;  // one change staged asks for Durability::kSynced
    bool schedule_grew = false;  // an entry added or moved: the scheduler may have work sooner
    rocksdb::Status staging;
    // Stages `item` against what the batch so far left of its id; false when it does not apply.
    const auto stage = [&](Item& item) {
      auto change = changes.find(item.id);
      staging = Stage(item, change != changes.end() ? change->second : index_.DueOf(item.id),
                      write_batch);
      if (!staging.ok() || !item.refusal.ok()) return false;
      ++staged;
      needs_sync |= item.durability == Durability::kSynced;
      if (item.kind == Kind::kRemove) {
        changes.insert_or_assign(item.id, std::nullopt);
      } else {
        changes.insert_or_assign(item.id, item.due);
        schedule_grew = true;
      }
      return true;
    };
    for (Item& item : batch) {
      if (!stage(item)) {
        if (!staging.ok()) break;
        continue;
      }
      for (Item& message : item.along) {
        if (!stage(message)) break;  // an enqueue applies, or the batch fails
      }
      if (!staging.ok()) break;
    }
    absl::Status status = ToStatus(staging, "spool: building a batch");
    if (status.ok() && staged > 0) {
      status = MaybeResume();
      if (status.ok()) {
        rocksdb::WriteOptions write_options;
        // The 250 reply waits for this: one fsync for the whole batch, and for every unsynced
        // change before it in the log.
        write_options.sync = needs_sync;
        const rocksdb::Status written = store_.db().Write(write_options, &write_batch);
        if (written.ok() && needs_sync) {
          unsynced_since_.reset();
        } else if (written.ok() && !unsynced_since_.has_value()) {
          unsynced_since_ = std::chrono::steady_clock::now();
        }
        status = ToStatus(written, absl::StrCat("spool: committing ", staged, " changes"));
        if (!written.ok()) {
          Log(LogLevel::kError, "%s", status.ToString());
          if (!needs_resume_) last_resume_attempt_ = clock_.Now();
          needs_resume_ = true;
        }
      }
    }
    // Before the observers and callbacks: whoever waits for the last `done` sees this commit
    // in size() and LeaseDue(). A failed commit changes nothing, leases included.
    if (status.ok()) index_.Apply(changes);
    const absl::Duration latency = absl::FromChrono(std::chrono::steady_clock::now() - start);
    if (status.ok() && staged > 0) {
      absl::MutexLock lock(&observer_mutex_);
      if (observer_) observer_(staged, latency, needs_sync);
    }
    if (status.ok() && schedule_grew) {
      absl::MutexLock lock(&schedule_observer_mutex_);
      if (schedule_observer_) schedule_observer_();
    }
    for (Item& item : batch) std::move(item.done)(item.refusal.ok() ? status : item.refusal);
  }

  Store& store_;
  SpoolOptions options_;
  Clock& clock_;
  DueIndex index_;

  absl::Mutex mutex_;
  std::deque<Item> pending_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  size_t expected_ ABSL_GUARDED_BY(mutex_) = 0;  // outstanding ExpectEnqueue() promises
  size_t room_ ABSL_GUARDED_BY(mutex_) = 0;      // what a held batch can still take

  absl::Mutex observer_mutex_;
  CommitObserver observer_ ABSL_GUARDED_BY(observer_mutex_);
  absl::Mutex schedule_observer_mutex_;
  absl::AnyInvocable<void()> schedule_observer_ ABSL_GUARDED_BY(schedule_observer_mutex_);

  // Writer thread only.
  // When the oldest change written without a sync since the last sync was committed.
  std::optional<std::chrono::steady_clock::time_point> unsynced_since_;
  bool needs_resume_ = false;
  absl::Time last_resume_attempt_ = absl::InfinitePast();

  std::thread thread_;  // last: starts after every member above is constructed
};

absl::StatusOr<std::unique_ptr<Spool>> Spool::Open(Store& store, const SpoolOptions& options,
                                                   Clock& clock) {
  if (store.read_only()) {
    return absl::FailedPreconditionError(
        absl::StrCat("spool ", store.path(), " is open read-only: cannot enqueue"));
  }
  FACTEUR_ASSIGN_OR_RETURN(std::vector<ScheduleEntry> schedule, Recover(store));
  return std::unique_ptr<Spool>(
      new Spool(std::make_unique<Writer>(store, options, clock, schedule)));
}

Spool::Spool(std::unique_ptr<Writer> writer) : writer_(std::move(writer)) {}
Spool::~Spool() = default;

void Spool::Enqueue(Envelope envelope, std::string body,
                    absl::AnyInvocable<void(absl::Status) &&> done) {
  writer_->Enqueue(std::move(envelope), std::move(body), std::move(done));
}

void Spool::Enqueue(Envelope envelope, std::string body,
                    absl::AnyInvocable<void(absl::Status) &&> done, ExpectedEnqueue expected) {
  const bool kept = expected.writer_ == writer_.get();
  if (kept) expected.writer_ = nullptr;  // settled by the writer, under its lock
  writer_->Enqueue(std::move(envelope), std::move(body), std::move(done), kept);
}

Spool::ExpectedEnqueue Spool::ExpectEnqueue() {
  writer_->Expect();
  return ExpectedEnqueue(writer_.get());
}

Spool::ExpectedEnqueue& Spool::ExpectedEnqueue::operator=(ExpectedEnqueue&& other) noexcept {
  if (this != &other) {
    Withdraw();
    writer_ = other.writer_;
    other.writer_ = nullptr;
  }
  return *this;
}

void Spool::ExpectedEnqueue::Withdraw() {
  if (writer_ == nullptr) return;
  writer_->Withdraw();
  writer_ = nullptr;
}

void Spool::Update(Envelope envelope, absl::Time previous_due,
                   absl::AnyInvocable<void(absl::Status) &&> done, Durability durability,
                   std::vector<NewMessage> along) {
  writer_->Update(std::move(envelope), previous_due, std::move(done), durability,
                  std::move(along));
}

void Spool::Remove(const MessageId& id, absl::Time due,
                   absl::AnyInvocable<void(absl::Status) &&> done, Durability durability,
                   std::vector<NewMessage> along) {
  writer_->Remove(id, due, std::move(done), durability, std::move(along));
}

std::vector<ScheduleEntry> Spool::LeaseDue(absl::Time now, size_t max) {
  return writer_->index().LeaseDue(now, max);
}

void Spool::ReleaseLease(const MessageId& id) { writer_->index().Release(id); }

absl::Time Spool::NextDue() const { return writer_->index().NextDue(); }

void Spool::SetScheduleObserver(absl::AnyInvocable<void()> observer) {
  writer_->SetScheduleObserver(std::move(observer));
}

size_t Spool::leased() const { return writer_->index().leased(); }

void Spool::SetCommitObserver(CommitObserver observer) {
  writer_->SetCommitObserver(std::move(observer));
}

uint64_t Spool::size() const { return writer_->index().size(); }

QueueCounts Spool::Counts(absl::Time now) const { return writer_->index().Counts(now); }

// --- Reads ---

absl::StatusOr<std::optional<Envelope>> ReadEnvelope(Store& store, const MessageId& id) {
  rocksdb::PinnableSlice value;
  rocksdb::Status status = store.db().Get(rocksdb::ReadOptions(), store.family(Family::kEnvelope),
                                          ToSlice(id.Bytes()), &value);
  if (status.IsNotFound()) return std::optional<Envelope>();
  FACTEUR_RETURN_IF_ERROR(ToStatus(status, absl::StrCat("reading envelope ", id.ToString())));
  FACTEUR_ASSIGN_OR_RETURN(Envelope envelope, DecodeEnvelope(ToView(value)));
  return std::optional<Envelope>(std::move(envelope));
}

absl::StatusOr<std::optional<std::string>> ReadBody(Store& store, const MessageId& id) {
  std::string value;
  rocksdb::Status status = store.db().Get(rocksdb::ReadOptions(), store.family(Family::kBody),
                                          ToSlice(id.Bytes()), &value);
  if (status.IsNotFound()) return std::optional<std::string>();
  FACTEUR_RETURN_IF_ERROR(ToStatus(status, absl::StrCat("reading body ", id.ToString())));
  return std::optional<std::string>(std::move(value));
}

absl::StatusOr<std::vector<Envelope>> ListEnvelopes(Store& store, size_t limit,
                                                    const MessageId& after) {
  std::vector<Envelope> envelopes;
  std::unique_ptr<rocksdb::Iterator> it(
      store.db().NewIterator(rocksdb::ReadOptions(), store.family(Family::kEnvelope)));
  if (after.IsZero()) {
    it->SeekToFirst();
  } else {
    it->Seek(ToSlice(after.Bytes()));
    if (it->Valid() && ToView(it->key()) == after.Bytes()) it->Next();
  }
  for (; it->Valid() && envelopes.size() < limit; it->Next()) {
    absl::StatusOr<Envelope> envelope = DecodeEnvelope(ToView(it->value()));
    if (!envelope.ok()) {
      return absl::DataLossError(absl::StrCat("envelope ", IdText(ToView(it->key())), ": ",
                                              envelope.status().message()));
    }
    envelopes.push_back(*std::move(envelope));
  }
  FACTEUR_RETURN_IF_ERROR(ToStatus(it->status(), "listing envelopes"));
  return envelopes;
}

absl::StatusOr<std::vector<ScheduleEntry>> ListSchedule(Store& store, size_t limit) {
  std::vector<ScheduleEntry> entries;
  std::unique_ptr<rocksdb::Iterator> it(
      store.db().NewIterator(rocksdb::ReadOptions(), store.family(Family::kSchedule)));
  for (it->SeekToFirst(); it->Valid() && entries.size() < limit; it->Next()) {
    absl::StatusOr<ScheduleEntry> entry = ParseScheduleKey(ToView(it->key()));
    if (!entry.ok()) {
      return absl::DataLossError(absl::StrCat("schedule entry ", IdText(ToView(it->key())), ": ",
                                              entry.status().message()));
    }
    entries.push_back(*entry);
  }
  FACTEUR_RETURN_IF_ERROR(ToStatus(it->status(), "listing the schedule"));
  return entries;
}

absl::StatusOr<uint64_t> CountMessages(Store& store) {
  rocksdb::ReadOptions read_options;
  read_options.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(
      store.db().NewIterator(read_options, store.family(Family::kEnvelope)));
  uint64_t count = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++count;
  FACTEUR_RETURN_IF_ERROR(ToStatus(it->status(), "counting messages"));
  return count;
}

}  // namespace facteur::queue
