// File: queue/spool.h
// The durable message queue. Enqueue(), Update() and Remove() hand changes to one writer thread
// that commits batches of them, of any mix, with a single synced write (group commit): body,
// envelope and schedule entry of a message change in one WriteBatch, so a crash leaves either
// all of a change or none of it. The caller replies 250 only from `done`, i.e. after the fsync
// (DESIGN.md §2). The spool also keeps the due time of every message in memory and leases due
// messages to the delivery side. Reads go straight to the Store and may run on any non-I/O
// thread.
// Thread contract: thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "engine/base/message_id.h"
#include "queue/store.h"

namespace facteur::queue {

enum class RecipientState : uint8_t { kPending = 0, kDelivered = 1, kBounced = 2 };

struct RecipientRecord {
  std::string address;  // "local@domain" as the client gave it (Mailbox::ToString())
  RecipientState state = RecipientState::kPending;
  std::string notify;   // DSN NOTIFY= (RFC 3461), empty when absent
  std::string orcpt;    // DSN ORCPT=, empty when absent
  // Greylisting (../shared/research/providers.md §3): the source the recipient was greylisted
  // from — its retries leave from that source only — and how many times it was greylisted.
  std::string pinned_source;
  uint32_t greylisted = 0;
  // What last kept it in the queue, one line ("mx1.example.net[192.0.2.1] said: 450 4.2.0 Try
  // later", or what happened here: "451 4.4.1 connection refused"), for `queue show` and the
  // DSN if it expires or is cancelled. Empty before a first attempt and once delivered.
  std::string last_reply;
  // Not tried again before this time, when that is later than the message's next attempt: a
  // recipient greylisted for five minutes waits them out while another of the same message,
  // told to slow down, goes again as soon as its site allows. InfinitePast: whenever the
  // message is due.
  absl::Time retry_at = absl::InfinitePast();

  friend bool operator==(const RecipientRecord&, const RecipientRecord&) = default;
};

struct Envelope {
  MessageId id;
  std::string sender;                      // reverse-path; empty for the null sender <>
  std::vector<RecipientRecord> recipients;
  std::string listener;                    // name of the listener that received it
  std::string account;                     // authenticated account, empty when none
  std::string client;                      // "[192.0.2.1]:4567" or "unix"
  absl::Time received_at = absl::UnixEpoch();
  bool smtputf8 = false;
  bool eight_bit = false;                  // BODY=8BITMIME or BINARYMIME
  std::string dsn_ret;                     // RET=FULL|HDRS, empty when absent
  std::string dsn_envid;                   // ENVID=, empty when absent
  uint32_t attempts = 0;
  absl::Time next_attempt = absl::UnixEpoch();  // key of the schedule entry

  friend bool operator==(const Envelope&, const Envelope&) = default;
};

// A message queued by the same write as the Update() or Remove() it comes with, so that both
// are committed or neither: a DSN and the outcome it reports. Apart, a failed DSN write after
// a committed bounce loses the report, and a committed DSN after a failed bounce sends it
// twice (the recipient is tried, and bounced, again).
struct NewMessage {
  Envelope envelope;  // its id set by the caller
  std::string body;
};

// Versioned binary encoding of an Envelope (the `envelope` column family's values).
// Version 2 adds each recipient's pinned_source and greylisted; version 1 is still read.
// Layout (version 1): version byte, 16 id bytes, then varints (times as zigzag int64 Unix
// microseconds: sub-microsecond parts are dropped) and varint-length strings; see spool.cc. DecodeEnvelope returns DataLoss on
// anything malformed: truncation, unknown version or flags, a length past the end, trailing bytes.
std::string EncodeEnvelope(const Envelope& envelope);
absl::StatusOr<Envelope> DecodeEnvelope(std::string_view bytes);

// Key of a `schedule` entry: 8-byte big-endian Unix microseconds of `due` (times before the epoch
// count as the epoch: due at once) followed by the 16 id bytes, so that keys sort by due time.
std::string ScheduleKey(absl::Time due, const MessageId& id);
struct ScheduleEntry {
  absl::Time due;
  MessageId id;
};
// The inverse of ScheduleKey(); DataLoss unless `key` is 24 bytes.
absl::StatusOr<ScheduleEntry> ParseScheduleKey(std::string_view key);

struct SpoolOptions {
  // Most messages committed by one synced write. Default: 256.
  size_t max_batch = 256;
  // Most messages waiting for the writer; past it Enqueue() fails at once with Unavailable
  // (the session answers 451 4.3.0) instead of memory growing. Default: 65536.
  size_t max_pending = 65536;
  // Longest a commit is held open for enqueues announced by ExpectEnqueue() (messages being
  // DKIM-signed) so that they share its fsync rather than each paying its own; 0 never holds.
  // A few RSA-2048 signatures: the announced ones are usually being signed already. 3 ms rather
  // than 1: in the 2 KB RSA-2048 relay bench (20 sessions, 2 signing threads) commits went from
  // 1,300-1,600 to 1,000 per 8,000 messages and the relay's CPU per message down about 5%, for
  // at most 2 ms more before a signed message's 250. Default: 3 ms.
  absl::Duration expected_wait = absl::Milliseconds(3);
  // Longest a change made with Durability::kRidesNextSync stays written but not synced when no
  // synced commit comes after it: the writer then syncs the log by itself. Default: 1 s.
  absl::Duration max_unsynced = absl::Seconds(1);
  // Runs first on the writer thread, which allocates RocksDB's memtables: engine/main binds it
  // to an allocator arena backed by huge pages (engine/main/huge_page_arena.h). Optional.
  std::function<void()> on_writer_start;
};

// What a change waits for before its `done` runs.
enum class Durability : uint8_t {
  // The change is on disk (fsync) before `done`: what an acknowledgement needs.
  kSynced,
  // The change is written (it survives the process dying) but rides the next synced commit, or
  // the writer's own sync within SpoolOptions::max_unsynced: a power cut in between may undo
  // it. For delivery outcomes: undone, a message is delivered again, never lost (DESIGN.md §3,
  // at-least-once), so they need not pay an fsync each.
  kRidesNextSync,
};

// The messages of the queue by state (Spool::Counts).
struct QueueCounts {
  uint64_t ready = 0;      // due at or before `now`, not leased
  uint64_t scheduled = 0;  // due after `now`
  uint64_t leased = 0;     // leased to the delivery side (in flight)
};

// Called on the writer thread after each commit: the changes in the batch (enqueues, updates,
// removals), the commit latency, and whether it was synced (one fsync for all, and for the
// unsynced commits before it) or only written (every change Durability::kRidesNextSync).
// Metrics hook; must be cheap.
using CommitObserver =
    absl::AnyInvocable<void(size_t batch_size, absl::Duration latency, bool synced)>;

class Spool {
  class Writer;  // spool.cc: the pending deque and the writer thread

 public:
  // Starts the writer thread on `store` (opened read-write), after recovery: counts what the
  // queue holds and removes half-written or corrupt entries (logged, not fatal).
  static absl::StatusOr<std::unique_ptr<Spool>> Open(Store& store, const SpoolOptions& options,
                                                     Clock& clock);
  ~Spool();  // commits what is pending, then stops the writer

  // Queues `envelope` (its id set by the caller) and `body` for the next synced commit. `done`
  // runs exactly once: on the writer thread with OK once the message is durable,
  // ResourceExhausted on a full disk, Unavailable when the database is in error; or at once, on
  // the caller's thread, with Unavailable when `max_pending` messages already wait (or the spool
  // is closing) and InvalidArgument for a zero id. It is never called with a lock held.
  void Enqueue(Envelope envelope, std::string body, absl::AnyInvocable<void(absl::Status) &&> done);

  // The promise of an Enqueue() to come, taken before slow work on the way to it (DKIM
  // signing). While promises are outstanding, the writer holds a commit open for up to
  // SpoolOptions::expected_wait so that the promised messages join its fsync: without it a
  // signing pool hands over messages one by one and each pays an fsync of its own. Kept by the
  // Enqueue() it is passed to, or withdrawn when destroyed unused (signing failed, the message
  // was refused). Must not outlive the spool. Movable, any thread.
  class ExpectedEnqueue {
   public:
    ExpectedEnqueue() = default;
    ExpectedEnqueue(ExpectedEnqueue&& other) noexcept : writer_(other.writer_) {
      other.writer_ = nullptr;
    }
    ExpectedEnqueue& operator=(ExpectedEnqueue&& other) noexcept;
    ~ExpectedEnqueue() { Withdraw(); }
    // Gives the promise up now (what the destructor does).
    void Withdraw();

   private:
    friend class Spool;
    explicit ExpectedEnqueue(Writer* writer) : writer_(writer) {}
    Writer* writer_ = nullptr;  // null once kept or withdrawn
  };
  ExpectedEnqueue ExpectEnqueue();
  // Enqueue() keeping `expected` (taken from this spool).
  void Enqueue(Envelope envelope, std::string body, absl::AnyInvocable<void(absl::Status) &&> done,
               ExpectedEnqueue expected);

  // Rewrites the envelope of a queued message (same id) and moves its schedule entry from
  // `previous_due` to `envelope.next_attempt`, in one batch of the next commit. `done` as for
  // Enqueue(), once the change is as durable as `durability` asks. Recipient state changes of
  // many deliveries share one fsync this way (DESIGN.md §3). NotFound (through `done`) when the message is no longer queued. The entry
  // moved is the one the spool's index holds, so a `previous_due` made stale by a queue
  // operation in between does no harm.
  // `along`: messages queued by the same write (NewMessage), with the same durability; not
  // queued when the update is refused.
  void Update(Envelope envelope, absl::Time previous_due,
              absl::AnyInvocable<void(absl::Status) &&> done,
              Durability durability = Durability::kSynced, std::vector<NewMessage> along = {});
  // Removes a message: its body, its envelope and its schedule entry at `due`, in one batch of
  // the next commit (the index's entry when the spool knows the message, else the one at
  // `due`). Removing a message that is gone is OK (idempotent). `durability` and `along` as for
  // Update().
  void Remove(const MessageId& id, absl::Time due, absl::AnyInvocable<void(absl::Status) &&> done,
              Durability durability = Durability::kSynced, std::vector<NewMessage> along = {});

  // --- Due messages: the scheduler's index over the `schedule` family. ---
  // The spool keeps the due time of every queued message in memory (loaded at Open() from the
  // schedule family, kept current by each commit) and *leases* due messages to the delivery
  // side, so that one message is never handed out twice at once.

  // Up to `max` messages due at or before `now`, earliest first, that are not leased; leases
  // them. A lease ends when an Update() or Remove() of that message commits (just before its
  // `done` runs; a failed one keeps it), or ReleaseLease(). Leases are not stored: after a
  // restart every message is free again.
  std::vector<ScheduleEntry> LeaseDue(absl::Time now, size_t max);
  // Ends a lease without a change (shutdown, a delivery given up before it started): the message
  // is due again at its recorded time.
  void ReleaseLease(const MessageId& id);
  // The earliest due time among messages not leased; InfiniteFuture when there are none.
  absl::Time NextDue() const;
  // Called on the writer thread after each commit that added or moved a schedule entry (new
  // messages, updates), so that a waiting scheduler wakes up. Must be cheap and not call back
  // into the spool.
  void SetScheduleObserver(absl::AnyInvocable<void()> observer);
  // Messages leased now.
  size_t leased() const;

  void SetCommitObserver(CommitObserver observer);

  // Number of messages in the queue (as counted at recovery, plus what was enqueued and minus
  // what was removed since).
  uint64_t size() const;
  // The queue by state, read at once (facteur_queue_messages), exact. Cheap under the index's
  // lock: a running count is kept, and a call walks only what fell due since the last call.
  QueueCounts Counts(absl::Time now) const;

 private:
  explicit Spool(std::unique_ptr<Writer> writer);
  std::unique_ptr<Writer> writer_;
};

// Read access for the CLI and the admin API, on a read-write or read-only Store.
// Blocking: not for I/O threads.
absl::StatusOr<std::optional<Envelope>> ReadEnvelope(Store& store, const MessageId& id);
absl::StatusOr<std::optional<std::string>> ReadBody(Store& store, const MessageId& id);
// Envelopes in id (= arrival) order, starting after `after` (zero id: from the start).
absl::StatusOr<std::vector<Envelope>> ListEnvelopes(Store& store, size_t limit,
                                                    const MessageId& after = MessageId());
// Up to `limit` schedule entries, earliest due first (the raw `schedule` family, leases aside);
// DataLoss on a malformed key.
absl::StatusOr<std::vector<ScheduleEntry>> ListSchedule(Store& store, size_t limit);
absl::StatusOr<uint64_t> CountMessages(Store& store);

}  // namespace facteur::queue
