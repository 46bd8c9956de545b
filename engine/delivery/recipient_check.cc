// File: engine/delivery/recipient_check.cc
#include "engine/delivery/recipient_check.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "engine/mail/address.h"

namespace facteur::delivery {

void RecipientDomainCheck::Check(io::EventLoop& loop, std::string domain,
                                 absl::AnyInvocable<void(std::optional<mail::Reply>) &&> done) const {
  if (domain.empty() || domain.front() == '[') {
    std::move(done)(std::nullopt);
    return;
  }
  // An internationalised domain is looked up by its A-label, as delivery will (Router::Route).
  absl::StatusOr<std::string> ascii = mail::AsciiDomain(domain);
  if (!ascii.ok()) {
    std::move(done)(mail::Reply{550, "5.1.2", absl::StrCat(domain, ": bad domain name")});
    return;
  }
  // A route to another host decides for the domain: nothing to look up here.
  const Destination destination = router_.Route(*ascii);
  dns::Resolver* resolver = resolvers_.For(loop);
  if (resolver == nullptr || !destination.mx_lookup || destination.host != *ascii) {
    std::move(done)(std::nullopt);
    return;
  }
  resolver->ResolveMx(*ascii, [domain, done = std::move(done)](
                                  absl::StatusOr<dns::MxAnswer> answer) mutable {
    if (!answer.ok()) {
      if (absl::IsInvalidArgument(answer.status())) {
        std::move(done)(mail::Reply{550, "5.1.2", absl::StrCat(domain, ": bad domain name")});
      } else {
        std::move(done)(mail::Reply{
            451, "4.4.3", absl::StrCat(domain, ": temporary DNS failure, try again later")});
      }
      return;
    }
    switch (answer->kind) {
      case dns::MxKind::kNxDomain:
        std::move(done)(mail::Reply{550, "5.1.2", absl::StrCat(domain, ": Domain not found")});
        return;
      case dns::MxKind::kNoMailHost:
        std::move(done)(mail::Reply{
            550, "5.1.2", absl::StrCat(domain, ": Domain has no MX or address records")});
        return;
      case dns::MxKind::kNullMx:
        // RFC 7505 §4.2: 556 with 5.1.10.
        std::move(done)(mail::Reply{556, "5.1.10", "Domain does not accept mail (nullMX)"});
        return;
      case dns::MxKind::kHosts:
        std::move(done)(std::nullopt);
        return;
    }
  });
}

}  // namespace facteur::delivery
