// Fuzz target: arbitrary bytes from a client into an SMTP session (commands, AUTH exchanges,
// DATA and BDAT framing), delivered whole and then in small pieces. Invariants: no crash, every
// reply line is well formed, and nothing is queued unless a 250 said so.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/strings/match.h"
#include "engine/smtp/server/session.h"
#include "tests/support/fake_stream.h"

namespace {

using facteur::smtp::AuthenticatedAccount;

class Host final : public facteur::smtp::SessionHost {
 public:
  void Authenticate(std::string account, std::string password,
                    absl::AnyInvocable<void(absl::StatusOr<AuthenticatedAccount>) &&> done)
      override {
    if (account == "a" && password == "b") {
      std::move(done)(AuthenticatedAccount{"a", {"@x.example"}});
    } else {
      std::move(done)(absl::UnauthenticatedError("no"));
    }
  }
  void Enqueue(facteur::queue::Envelope, std::string message,
               absl::AnyInvocable<void(absl::Status) &&> done) override {
    ++queued;
    if (message.rfind("Received: ", 0) != 0) std::abort();
    std::move(done)(absl::OkStatus());
  }
  facteur::Clock& clock() override { return clock_; }
  int queued = 0;
  facteur::SimulatedClock clock_;
};

// Each reply line: three digits, then ' ' or '-', ending in CRLF.
void CheckReplies(std::string_view output, int* queued_replies) {
  while (!output.empty()) {
    size_t end = output.find("\r\n");
    if (end == std::string_view::npos || end < 3) std::abort();
    std::string_view line = output.substr(0, end);
    for (int i = 0; i < 3; ++i) {
      if (line[i] < '0' || line[i] > '9') std::abort();
    }
    if (line.size() > 3 && line[3] != ' ' && line[3] != '-') std::abort();
    if (line.substr(0, 24) == "250 2.0.0 Ok: queued as ") ++*queued_replies;
    output.remove_prefix(end + 2);
  }
}

void RunOnce(std::string_view input, size_t piece, bool tls) {
  facteur::smtp::ListenerPolicy policy;
  policy.listener_name = "fuzz";
  policy.hostname = "fuzz.example";
  policy.tls_mode = facteur::config::TlsMode::kStartTls;
  policy.limits.max_message_size = 4096;
  policy.limits.max_recipients = 5;
  policy.trusted_networks = {*facteur::config::Cidr::Parse("127.0.0.0/8")};
  facteur::testing::FakeStream stream;
  stream.peer_info = facteur::testing::Ipv4Peer(127, 0, 0, 1);
  Host host;
  facteur::smtp::Session session(stream, policy, host);
  facteur::io::TlsInfo info{"TLSv1.3", "x", 256};
  session.OnStart(tls ? &info : nullptr);
  int queued_replies = 0;
  for (size_t at = 0; at < input.size() && !stream.closed; at += piece) {
    session.OnData(input.substr(at, piece));
    if (stream.tls_requested && !stream.tls) {
      stream.tls = true;
      session.OnTlsStarted(info);
    }
    CheckReplies(stream.TakeOutput(), &queued_replies);
  }
  session.OnIdleTimeout();
  CheckReplies(stream.TakeOutput(), &queued_replies);
  if (queued_replies != host.queued) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  RunOnce(input, input.size() + 1, /*tls=*/false);
  RunOnce(input, 7, /*tls=*/true);
  return 0;
}
