// File: engine/delivery/queue_manager.h
// The queue manager (DESIGN.md §1 "scheduler"): leases due messages from the spool, reads each
// once, splits its open recipients by domain into jobs for the delivery shards, and when every
// job of a message is back, settles it: delivered recipients are marked, transient failures are
// rescheduled by the retry policy, permanent failures and expired recipients bounce with an
// RFC 3464 DSN queued to the sender (never to the null sender), and a message with nothing left
// to do is removed. Every state change is one synced spool write (at-least-once: a crash before
// it delivers those recipients again, never loses them). Queue operations (flush, retry,
// bounce, delete, suspend, resume) run here too, so they never race a delivery in flight.
// Greylisted recipients (by the classifier's verdict) come back after the greylist delay, pinned
// to the source that was greylisted; jobs a site's throttle held back cost no attempt.
// Thread contract: thread-safe. The manager's own thread does the blocking work (RocksDB reads,
// DSN building); OnJobDone() and the operations only queue work for it. Tests drive RunOnce()
// themselves instead of Start().
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/clock.h"
#include "engine/delivery/job.h"
#include "engine/delivery/site_labeler.h"
#include "engine/events/event_log.h"
#include "engine/mail/dsn.h"
#include "engine/metrics/metrics.h"
#include "queue/spool.h"
#include "queue/store.h"
#include "throttle/retry_policy.h"
#include "throttle/shaping.h"
#include "throttle/site_throttle.h"

namespace facteur::delivery {

struct QueueManagerOptions {
  std::string hostname;  // Reporting-MTA and MAILER-DAEMON@hostname of DSNs
  size_t max_messages_in_flight = 10000;
  // The bodies of the messages out for delivery stay in memory until they settle: past this
  // many bytes of them no more message is leased (one message is always allowed, whatever its
  // size). Bounds memory when big messages meet slow destinations.
  uint64_t max_bytes_in_flight = uint64_t{256} << 20;
  size_t max_recipients_per_transaction = 100;
  // When greylisted recipients are tried again (from the source they were greylisted from).
  throttle::GreylistOptions greylist;
  // Outcome counters and latencies; null: none.
  metrics::DeliveryMetrics* metrics = nullptr;
  // Their `site` label (shared with the delivery shards); null: SiteLabel().
  SiteLabeler* site_labels = nullptr;
};

// What the queue operations report.
struct OperationResult {
  uint64_t messages = 0;    // messages changed
  uint64_t recipients = 0;  // recipients changed: bounced, or made due (flush, retry, resume)
  // Of `messages`, those out for delivery now: the operation applies when the attempt ends,
  // and what the attempt delivers has gone.
  uint64_t in_delivery = 0;
  std::optional<bool> was_held;  // resume: whether the domain was held
};

class QueueManager final : public ResultSink {
 public:
  // Every reference outlives the manager. `events` may be null (no events log).
  QueueManager(queue::Store& store, queue::Spool& spool, const throttle::RetryPolicy& retry,
               Clock& clock, events::EventLog* events, QueueManagerOptions options);
  ~QueueManager() override;  // Stop()

  // Where jobs go. Set before Start() / the first RunOnce().
  void SetDispatcher(JobDispatcher* dispatcher) { dispatcher_ = dispatcher; }
  // Told of each recipient bounced as unknown by its server (the suppression list); runs on
  // the manager thread. Set before Start().
  using UserUnknownHandler =
      std::function<void(const std::string& address, const mail::DeliveryOutcome& outcome)>;
  void SetUserUnknownHandler(UserUnknownHandler handler) { user_unknown_ = std::move(handler); }

  // Runs RunOnce() on the manager thread whenever there is work: a message due, a result, an
  // operation.
  void Start();
  // No job is dispatched once this returns (the shards may then go away); results that come
  // back are still settled. The first step of a shutdown.
  void StopDispatching();
  // Stops the thread. Messages still in flight keep their queued state and are tried again at
  // the next start (their leases end); results already back are settled first.
  void Stop();

  // One round: operations, settling finished messages, leasing and dispatching due ones.
  void RunOnce();

  // ResultSink: jobs are back (any thread). One lock, and at most one wake-up of the manager.
  void OnJobsDone(std::vector<JobResult> results) override;
  // One job is back (any thread).
  void OnJobDone(JobResult result);

  // Operations (any thread but the manager's; they block until done). A domain is matched
  // against the recipients' domains, case-insensitively.
  // Makes the matching messages due now.
  absl::StatusOr<OperationResult> Flush(std::optional<std::string> domain);
  absl::StatusOr<OperationResult> Retry(const MessageId& id);
  // Bounces the open recipients (of `domain`, or all), with a DSN to the sender.
  absl::StatusOr<OperationResult> Bounce(const MessageId& id);
  absl::StatusOr<OperationResult> BounceDomain(const std::string& domain);
  // Removes the message without a DSN.
  absl::StatusOr<OperationResult> Delete(const MessageId& id);
  // Suspended domains get no delivery attempt until resumed (then they are flushed). Both
  // write to the store's `suspension` family (synced) before they answer, so that a hold
  // outlives a restart (queue/suspension_store.h); an error there leaves the hold as it was.
  absl::StatusOr<OperationResult> Suspend(const std::string& domain);
  absl::StatusOr<OperationResult> Resume(const std::string& domain);
  std::vector<std::string> SuspendedDomains() const;
  // Reads the holds the store keeps (those of before a restart) into the suspended domains and
  // returns them, sorted. Call before Start() / the first RunOnce(): mail to a held domain
  // must not go out in the moment before the holds are back.
  absl::StatusOr<std::vector<std::string>> RestoreSuspendedDomains();
  // Makes due now the messages `site` (a site key, or a shipped site's name, which also covers
  // its domain overrides "name/domain") handed back unattempted — what a paused site held back —
  // once an operator resumes it. Retries scheduled after a real reply (greylisting, backoff)
  // keep their time.
  absl::StatusOr<OperationResult> FlushSite(const std::string& site);
  // Messages scheduled for later, by the site key of the jobs that left recipients open when
  // they last settled (a message open at several sites counts for each). Messages not settled
  // since this process started are not counted (their sites are not known yet).
  std::map<std::string, uint64_t> ScheduledBySite() const;
  // How many messages ScheduledBySite() knows a site of (each counted once).
  size_t ScheduledWithKnownSite() const;
  // Of ScheduledBySite(), the messages each site handed back unattempted (paused or
  // throttled) and that wait in the spool now for the time it named: what FlushSite() sends.
  std::map<std::string, uint64_t> HeldBackBySite() const;
  // Recipients whose queue lifetime runs out are counted in facteur_messages_expired_total by
  // the site and source of their last attempt, as remembered here; those never attempted since
  // the start have site="unattempted", source="none".

  size_t in_flight() const;

 private:
  struct InFlight;
  enum class OperationKind {
    kFlush, kRetry, kBounce, kBounceDomain, kDelete, kSuspend, kResume, kFlushSite };
  struct Operation;
  // A site a scheduled message still owes recipients to, as its last settling left it.
  struct OwedSite {
    std::string site;    // site key; "" when the attempt failed before the site was known
    std::string source;  // [[source]] name of the last attempt there; "" when none was made
    std::vector<uint32_t> recipients;  // the open recipients that went there (indexes)
    // The site handed the job back unattempted (paused or throttled): FlushSite() makes it due
    // when an operator resumes the site; retries after a real reply keep their schedule.
    bool held_back = false;
  };

  void Wake();
  void ThreadMain();
  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Queues an operation for the manager thread and waits for its result.
  absl::StatusOr<OperationResult> Operate(OperationKind kind, std::optional<std::string> domain,
                                          const MessageId& id);
  void ExecuteOperation(Operation& operation);
  void LeaseAndDispatch();
  // No more message may be leased: max_messages_in_flight or max_bytes_in_flight reached.
  bool InFlightFull() const;
  void StartMessage(const queue::ScheduleEntry& entry);
  // Takes the message's entry of scheduled_sites_ out (leased: it is no longer waiting), and
  // sets it (a settling, or a lease handed back unsettled); an empty `sites` erases it.
  std::vector<OwedSite> TakeOwedSites(const MessageId& id);
  void RestoreOwedSites(const MessageId& id, std::vector<OwedSite> sites);
  // The changes of scheduled_sites_, which keep owed_by_site_, held_back_by_site_
  // and known_site_count_ current.
  void EraseOwedLocked(const MessageId& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(owed_mutex_);
  void CountOwedLocked(const std::vector<OwedSite>& sites, int sign)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(owed_mutex_);
  // Counts `indexes` as expired, by the site and source `owed` remembers for each.
  void CountExpired(const std::vector<uint32_t>& indexes, const std::vector<OwedSite>& owed);
  void Settle(InFlight& flight, std::vector<JobResult> results);
  // A deletion event for each recipient of `envelope` still pending: the audit trail of
  // `queue delete`.
  void RecordDeletions(const queue::Envelope& envelope, absl::Time now);
  // The metrics of one recipient's outcome.
  void CountOutcome(events::EventType type, const JobResult& result,
                    const RecipientVerdict& verdict, absl::Time received_at, absl::Time now);
  // Bounces `indexes` of `envelope` and writes their events; adds to `reports` the DSN to the
  // sender when asked, for Persist() to write with the bounce. `attempted` holds the events of
  // recipients a remote server refused (with the attempt's site, source IP, MX), written as
  // they are.
  void BounceRecipients(queue::Envelope& envelope, const std::string* body,
                        const std::vector<std::pair<uint32_t, mail::DeliveryOutcome>>& bounced,
                        events::EventType type, std::vector<queue::NewMessage>& reports,
                        const absl::flat_hash_map<uint32_t, events::Event>* attempted = nullptr);
  // A "relayed" DSN (RFC 3464 §2.3.3) for recipients delivered with NOTIFY=SUCCESS to a server
  // without DSN (RFC 3461 §5.2.2): it will send none. Added to `reports`, as above.
  void ReportRelayed(const queue::Envelope& envelope, const std::string* body,
                     const std::vector<std::pair<uint32_t, mail::DeliveryOutcome>>& relayed,
                     std::vector<queue::NewMessage>& reports);
  // Adds `report` about `envelope`, as a DSN to its sender, to `reports`; none for the null
  // sender.
  void QueueReport(const queue::Envelope& envelope, const std::string* body,
                   mail::DsnReport report, absl::Time now,
                   std::vector<queue::NewMessage>& reports);
  // Writes the settled envelope (Update), or removes the message when no recipient is open,
  // with `reports` (the DSNs of this change) in the same write: a DSN is queued exactly when
  // the outcome it reports is recorded (queue::NewMessage).
  // Delivery outcomes ride the next synced commit (kRidesNextSync: a power cut may deliver a
  // message again, never lose it); queue operations an operator waits for are synced.
  void Persist(queue::Envelope envelope, absl::Time previous_due, queue::Durability durability,
               std::vector<queue::NewMessage> reports = {});
  void RemoveMessage(const MessageId& id, absl::Time due, queue::Durability durability);
  // Waits until every Persist() has committed; false after `timeout`.
  bool WaitForWrites(absl::Duration timeout);
  bool IsSuspended(std::string_view domain) const;

  queue::Store& store_;
  queue::Spool& spool_;
  const throttle::RetryPolicy& retry_;
  Clock& clock_;
  events::EventLog* events_;
  const QueueManagerOptions options_;
  JobDispatcher* dispatcher_ = nullptr;
  UserUnknownHandler user_unknown_;

  mutable absl::Mutex mutex_;
  std::vector<JobResult> results_ ABSL_GUARDED_BY(mutex_);
  std::deque<Operation*> operations_ ABSL_GUARDED_BY(mutex_);  // owned by their callers
  bool wake_ ABSL_GUARDED_BY(mutex_) = false;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  absl::flat_hash_set<std::string> suspended_ ABSL_GUARDED_BY(mutex_);
  size_t in_flight_count_ ABSL_GUARDED_BY(mutex_) = 0;
  // What each message scheduled for later owes (see ScheduledBySite; the labels of
  // facteur_messages_expired_total). A message's entry moves into its InFlight while it is
  // leased, and leaves when it settles with nothing owed or is removed: the map holds at most
  // the messages waiting in the spool. Its own lock, not mutex_: the loops take mutex_ for
  // every result (OnJobDone) and must never wait behind a walk of this map (FlushSite).
  mutable absl::Mutex owed_mutex_;
  absl::flat_hash_map<MessageId, std::vector<OwedSite>> scheduled_sites_
      ABSL_GUARDED_BY(owed_mutex_);
  // Kept with each change of scheduled_sites_, so that a metrics scrape costs O(sites), not
  // O(messages): messages owed by site key, and messages with any known site.
  absl::flat_hash_map<std::string, uint64_t> owed_by_site_ ABSL_GUARDED_BY(owed_mutex_);
  absl::flat_hash_map<std::string, uint64_t> held_back_by_site_ ABSL_GUARDED_BY(owed_mutex_);
  size_t known_site_count_ ABSL_GUARDED_BY(owed_mutex_) = 0;

  // Persist() calls not yet committed. Shared with their spool callbacks, which may run after
  // the manager is gone (the last one frees it).
  struct PendingWrites {
    absl::Mutex mutex;
    size_t count ABSL_GUARDED_BY(mutex) = 0;
  };
  std::shared_ptr<PendingWrites> writes_ = std::make_shared<PendingWrites>();

  // Held while jobs are dispatched, so that StopDispatching() waits for a round in progress.
  absl::Mutex dispatch_mutex_;
  bool dispatching_stopped_ ABSL_GUARDED_BY(dispatch_mutex_) = false;

  // Manager thread only.
  absl::flat_hash_map<MessageId, std::unique_ptr<InFlight>> in_flight_;
  uint64_t bytes_in_flight_ = 0;  // the bodies of in_flight_
  absl::BitGen random_;
  std::thread thread_;
};

}  // namespace facteur::delivery
