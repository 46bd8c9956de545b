// File: engine/base/log.h
// A small leveled logger to stderr (Debian's abseil 20220623 has no absl/log). One line per
// call, written with a single write(2) so that lines from different threads never interleave.
// Thread contract: thread-safe.
#pragma once

#include <string_view>

#include "absl/strings/str_format.h"

namespace facteur {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Lines below this level are dropped. Default: kInfo (FACTEUR_LOG_LEVEL=debug lowers it).
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
void LogLine(LogLevel level, std::string_view message);

template <typename... Args>
void Log(LogLevel level, const absl::FormatSpec<Args...>& format, const Args&... args) {
  if (!LogEnabled(level)) return;
  std::string line = absl::StrFormat(format, args...);
  LogLine(level, line);
}

}  // namespace facteur
