// File: engine/base/status.h
// Status helpers shared by every module: early-return macros (absl 20220623 has none) and
// small constructors. Errors are values (STYLE.md rule 1); nothing here throws.
// Thread contract: stateless.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define FACTEUR_RETURN_IF_ERROR(expr)            \
  do {                                           \
    ::absl::Status facteur_status_ = (expr);     \
    if (!facteur_status_.ok()) return facteur_status_; \
  } while (0)

#define FACTEUR_STATUS_CONCAT_INNER(a, b) a##b
#define FACTEUR_STATUS_CONCAT(a, b) FACTEUR_STATUS_CONCAT_INNER(a, b)

// `FACTEUR_ASSIGN_OR_RETURN(auto value, MakeValue());` — assigns the StatusOr's value or returns
// its status from the enclosing function.
#define FACTEUR_ASSIGN_OR_RETURN(lhs, expr)                                        \
  FACTEUR_ASSIGN_OR_RETURN_IMPL(FACTEUR_STATUS_CONCAT(facteur_statusor_, __LINE__), \
                                lhs, expr)
#define FACTEUR_ASSIGN_OR_RETURN_IMPL(statusor, lhs, expr) \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

namespace facteur {

// Debian's abseil has its own absl::string_view (not std::string_view): convert explicitly.
inline absl::string_view ToAbsl(std::string_view s) { return {s.data(), s.size()}; }
inline std::string_view ToStd(absl::string_view s) { return {s.data(), s.size()}; }

// An error from a system call: the message names the operation and the errno text.
absl::Status ErrnoStatus(std::string_view operation, int error_number);

// `status` with "what: " before its message (OK stays OK): which key or file an error is about.
absl::Status WithContext(std::string_view what, const absl::Status& status);

}  // namespace facteur
