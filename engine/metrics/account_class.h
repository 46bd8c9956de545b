// File: engine/metrics/account_class.h
// The account_class label of facteur_messages_received_total (issue #6), apart from the
// Prometheus declarations so that the SMTP session can name it without depending on them.
// Thread contract: a value type and a pure function.
#pragma once

namespace facteur::metrics {

// How the client of an accepted message was let in: an SMTP AUTH account (RFC 4954), a trusted
// network of a relay listener, or the local Unix socket (and the sendmail command through it).
enum class AccountClass { kAuthenticated, kTrusted, kLocal };

// "authenticated", "trusted", "local".
const char* AccountClassName(AccountClass account_class);

}  // namespace facteur::metrics
