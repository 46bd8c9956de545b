// File: engine/tls/tls_error.h
// The one adapter from OpenSSL's thread-local error queue to absl::Status (STYLE.md rule 1).
// Every OpenSSL failure in engine/tls goes through OpenSslStatus(), which drains the queue so
// that a stale error never leaks into the next call on the same thread.
// Thread contract: stateless (OpenSSL's error queue is per thread).
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace facteur::tls {

// Drains ERR_get_error() and returns `code`-kind status "<operation>: <lib errors>; ...".
// An empty queue yields "<operation>: unknown OpenSSL error".
absl::Status OpenSslStatus(std::string_view operation,
                           absl::StatusCode code = absl::StatusCode::kInternal);

// Discards whatever is left in this thread's error queue.
void ClearOpenSslErrors();

}  // namespace facteur::tls
