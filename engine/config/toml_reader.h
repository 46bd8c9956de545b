// File: engine/config/toml_reader.h
// Reading a TOML document into Options, for every file facteur reads (the config, the shaping
// and classifier files): typed reads of optional keys, unknown keys refused with a "did you mean"
// suggestion, and every error as "FILE:LINE:COL: key 'dotted.key': reason" (STYLE.md rule 8).
// toml++ throws; ParseToml catches, so no exception leaves this module (STYLE.md rule 1).
// Thread contract: a TomlReader is immutable once built; use one per document.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/base/status.h"
#include "toml++/toml.h"

namespace facteur::config {

// The whole of a text file of at most `max_size` bytes; errors name the path.
absl::StatusOr<std::string> ReadTextFile(const std::string& path, size_t max_size);

// `text` parsed as TOML; a syntax error is "SOURCE:LINE:COL: reason".
absl::StatusOr<toml::table> ParseToml(std::string_view text, std::string_view source_name);

template <typename E>
struct EnumName {
  std::string_view name;
  E value;
};

template <typename E, size_t N>
std::string_view NameOf(const EnumName<E> (&names)[N], E value) {
  for (const EnumName<E>& entry : names) {
    if (entry.value == value) return entry.name;
  }
  return "?";
}

// Optimal string alignment distance (Levenshtein plus adjacent transpositions): "max_eorrs" is
// one typo away from "max_errors", as a person sees it.
size_t EditDistance(std::string_view a, std::string_view b);

std::string Dotted(std::string_view prefix, std::string_view name);

const char* TypeName(const toml::node& node);

class TomlReader {
 public:
  // `source_name` (a path, or "<default config>") must outlive the reader.
  explicit TomlReader(std::string_view source_name) : source_name_(source_name) {}

  absl::Status Error(const toml::source_region& where, std::string_view key,
                     absl::string_view reason) const;

  absl::Status CheckKeys(const toml::table& table, std::string_view prefix,
                         const std::vector<std::string_view>& known) const;

  // The table at `name` (checked for unknown keys), or nullptr when absent.
  absl::StatusOr<const toml::table*> SubTable(const toml::table& root, std::string_view name,
                                               const std::vector<std::string_view>& known) const;

  absl::Status ReadString(const toml::table& table, std::string_view prefix, std::string_view name,
                          std::string& out) const;

  // A positive, finite duration: a string for absl::ParseDuration ("300s", "5m", "1h30m") or an
  // integer number of seconds.
  absl::Status ReadDuration(const toml::table& table, std::string_view prefix,
                            std::string_view name, absl::Duration& out) const;

  absl::Status ReadBool(const toml::table& table, std::string_view prefix, std::string_view name,
                        bool& out) const;

  // A finite number in [min, max]; an integer is taken as a number too ("retry_backoff = 2").
  absl::Status ReadNumber(const toml::table& table, std::string_view prefix, std::string_view name,
                          double min, double max, double& out) const;

  // A string key that must be present and not empty; `what` says what it holds.
  absl::Status ReadRequiredString(const toml::table& table, std::string_view prefix,
                                  std::string_view name, std::string_view what,
                                  std::string& out) const;

  // The tables of the array of tables `name` ([[name]]) in `parent`; none when it is absent.
  // `key` is its dotted name in messages ("dkim.key"); elements are "dkim.key[0]".
  absl::StatusOr<std::vector<const toml::table*>> ArrayOfTables(const toml::table& parent,
                                                                std::string_view name,
                                                                std::string_view key) const;

  template <typename T>
  absl::Status ReadInteger(const toml::table& table, std::string_view prefix, std::string_view name,
                           uint64_t min, uint64_t max, T& out) const {
    const toml::node* node = table.get(name);
    if (node == nullptr) return absl::OkStatus();
    const auto* value = node->as_integer();
    std::string key = Dotted(prefix, name);
    if (value == nullptr) {
      return Error(node->source(), key, absl::StrCat("must be an integer, not ", TypeName(*node)));
    }
    int64_t number = value->get();
    if (number < 0 || static_cast<uint64_t>(number) < min || static_cast<uint64_t>(number) > max) {
      // "positive" says it all for a 32-bit or wider count; a port gets its range spelled out.
      if (min == 1 && max == std::numeric_limits<T>::max() &&
          max >= std::numeric_limits<uint32_t>::max()) {
        return Error(node->source(), key, absl::StrCat("must be a positive integer, got ", number));
      }
      return Error(node->source(), key,
                   absl::StrCat("must be between ", min, " and ", max, ", got ", number));
    }
    out = static_cast<T>(number);
    return absl::OkStatus();
  }

  // One of the spellings in `names`; `what` names the kind in the error ("a TLS policy").
  template <typename E, size_t N>
  absl::Status ReadEnum(const toml::table& table, std::string_view prefix, std::string_view name,
                        std::string_view what, const EnumName<E> (&names)[N], E& out) const {
    const toml::node* node = table.get(name);
    if (node == nullptr) return absl::OkStatus();
    std::string text;
    FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, name, text));
    std::string choices;
    for (size_t i = 0; i < N; ++i) {
      if (names[i].name == text) {
        out = names[i].value;
        return absl::OkStatus();
      }
      absl::StrAppend(&choices, i == 0 ? "" : (i + 1 == N ? " or " : ", "), "\"",
                      ToAbsl(names[i].name), "\"");
    }
    return Error(node->source(), Dotted(prefix, name),
                 absl::StrCat("'", text, "' is not ", ToAbsl(what), " (", choices, ")"));
  }

  std::string_view source_name() const { return source_name_; }

 private:
  std::string_view source_name_;
};

}  // namespace facteur::config
