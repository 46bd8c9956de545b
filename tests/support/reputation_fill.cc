// File: tests/support/reputation_fill.cc
// Test helper for tests/integration/reputation_cli_test.py: records replies into the reputation
// of a stopped server's spool, as the delivery side would, with explicit times, so that
// `facteur reputation` has known data to show.
//   reputation_fill SPOOL_DIR < lines
// Each line: SOURCE SITE CLASS final|transient COUNT UNIX_SECONDS (CLASS as in
// throttle/response_class.h: success, rate_limit, blocklist, ...). Exits 0 once flushed; 2 on a
// bad line; 1 when the spool does not open (a running server holds it) or the write fails.
// Thread contract: a single-threaded process.
#include <iostream>
#include <sstream>
#include <string>

#include "absl/time/time.h"
#include "queue/reputation_store.h"
#include "queue/store.h"
#include "throttle/reputation.h"
#include "throttle/response_class.h"

int main(int argc, char** argv) {
  using namespace facteur;
  if (argc != 2) {
    std::cerr << "usage: reputation_fill SPOOL_DIR < lines\n";
    return 2;
  }
  absl::StatusOr<std::unique_ptr<queue::Store>> store = queue::Store::Open(argv[1]);
  if (!store.ok()) {
    std::cerr << "reputation_fill: " << store.status() << "\n";
    return 1;
  }
  queue::ReputationStore reputation_store(**store);
  throttle::Reputation reputation;
  absl::StatusOr<queue::ReputationLoadStats> loaded = reputation_store.LoadInto(reputation);
  if (!loaded.ok()) {
    std::cerr << "reputation_fill: " << loaded.status() << "\n";
    return 1;
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream words(line);
    std::string source, site, class_name, kind;
    int count = 0;
    int64_t seconds = 0;
    if (!(words >> source >> site >> class_name >> kind >> count >> seconds) ||
        (kind != "final" && kind != "transient")) {
      std::cerr << "reputation_fill: bad line: " << line << "\n";
      return 2;
    }
    std::optional<throttle::ResponseClass> response_class =
        throttle::ParseResponseClass(class_name);
    if (!response_class.has_value()) {
      std::cerr << "reputation_fill: unknown class " << class_name << "\n";
      return 2;
    }
    for (int i = 0; i < count; ++i) {
      reputation.Record(source, site, *response_class, kind == "final",
                        absl::FromUnixSeconds(seconds));
    }
  }
  absl::Status status = reputation_store.Flush(reputation);
  if (!status.ok()) {
    std::cerr << "reputation_fill: " << status << "\n";
    return 1;
  }
  return 0;
}
