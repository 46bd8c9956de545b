// File: engine/config/shaping_file.h
// The shaping file (deploy/shaping.toml, which documents every key) read into
// throttle::ShapingOptions: provider sites and their MX patterns, limits per (source IP, site),
// reactions per reply class, back-off and greylisting, per-domain overrides, warmup plans.
// Validated once (STYLE.md rule 8): unknown keys are refused with a "did you mean", and every
// error is "FILE:LINE:COL: key 'site[2].limits.max_connections': reason".
// Thread contract: stateless functions; the options they return are plain values.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "throttle/response_class.h"
#include "throttle/shaping.h"

namespace facteur::config {

// The reactions that apply when the file says nothing (../shared/DESIGN.md §5):
//   greylist             same-source retry; no pause, not a reputation hit
//   rate_limit           pause 10m, halve the rate, 1 connection — Google's published 4.7.28
//                        back-off (providers.md [1])
//   too_many_connections pause 1m, 1 connection, rate unchanged; not a reputation hit
//   blocklist            pause 4h and prefer another source of the pool
//   content, authentication  counted against the pair, no pause
//   success, user_unknown, mailbox_full, domain_not_found, other_transient, other_permanent
//                        nothing for the pair (the message's own retry or bounce handles them)
std::array<throttle::ClassAction, throttle::kResponseClassCount> BuiltinClassActions();

// `text`, a shaping file, parsed and validated; `source_name` names it in errors.
absl::StatusOr<throttle::ShapingOptions> ParseShapingFile(std::string_view text,
                                                          std::string_view source_name);

// The file at `path` (at most 16 MiB), parsed.
absl::StatusOr<throttle::ShapingOptions> LoadShapingFile(const std::string& path);

// The shipped deploy/shaping.toml (compiled in: EmbeddedShapingToml()), parsed. The text is
// ours, so a failure is a bug: it aborts with the error (shaping_file_test guards it).
throttle::ShapingOptions DefaultShaping();

}  // namespace facteur::config
