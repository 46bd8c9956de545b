// File: engine/config/toml_reader.cc
#include "engine/config/toml_reader.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <exception>

namespace facteur::config {

absl::StatusOr<std::string> ReadTextFile(const std::string& path, size_t max_size) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return ErrnoStatus(absl::StrCat("open ", path), errno);
  std::string text;
  char buffer[65536];
  while (true) {
    size_t n = std::fread(buffer, 1, sizeof(buffer), file);
    text.append(buffer, n);
    if (n < sizeof(buffer)) break;
    if (text.size() > max_size) {
      std::fclose(file);
      return absl::InvalidArgumentError(
          absl::StrCat(path, " is larger than ", max_size, " bytes"));
    }
  }
  if (std::ferror(file)) {
    int error_number = errno;
    std::fclose(file);
    return ErrnoStatus(absl::StrCat("read ", path), error_number);
  }
  std::fclose(file);
  return text;
}

absl::StatusOr<toml::table> ParseToml(std::string_view text, std::string_view source_name) {
  try {
    return toml::parse(text, source_name);
  } catch (const toml::parse_error& error) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(source_name), ":",
                                                   error.source().begin.line, ":",
                                                   error.source().begin.column, ": ",
                                                   ToAbsl(error.description())));
  } catch (const std::exception& error) {
    // toml++ may also throw std::bad_alloc and the like; nothing escapes this module.
    return absl::InternalError(absl::StrCat(ToAbsl(source_name), ": ", error.what()));
  }
}

// Optimal string alignment distance (Levenshtein plus adjacent transpositions): "max_eorrs" is
// one typo away from "max_errors", as a person sees it.
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::string Dotted(std::string_view prefix, std::string_view name) {
  return prefix.empty() ? std::string(name) : absl::StrCat(ToAbsl(prefix), ".", ToAbsl(name));
}

const char* TypeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    default: return "nothing";
  }
}

absl::Status TomlReader::Error(const toml::source_region& where, std::string_view key,
                   absl::string_view reason) const {
  return absl::InvalidArgumentError(absl::StrCat(ToAbsl(source_name_), ":", where.begin.line, ":",
                                                 where.begin.column, ": key '", ToAbsl(key),
                                                 "': ", reason));
}

absl::Status TomlReader::CheckKeys(const toml::table& table, std::string_view prefix,
                       const std::vector<std::string_view>& known) const {
  for (const auto& [key, value] : table) {
    std::string_view name = key.str();
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    std::string reason = "unknown key";
    // Suggest a key only when one known key is clearly the closest (within 2 edits).
    size_t best = 3;
    std::string_view suggestion;
    bool tie = false;
    for (std::string_view candidate : known) {
      size_t distance = EditDistance(name, candidate);
      if (distance < best) {
        best = distance;
        suggestion = candidate;
        tie = false;
      } else if (distance == best) {
        tie = true;
      }
    }
    if (!suggestion.empty() && !tie) {
      reason = absl::StrCat("unknown key; did you mean '", Dotted(prefix, suggestion), "'?");
    }
    return Error(key.source(), Dotted(prefix, name), reason);
  }
  return absl::OkStatus();
}

absl::StatusOr<const toml::table*> TomlReader::SubTable(const toml::table& root, std::string_view name,
                                             const std::vector<std::string_view>& known) const {
  const toml::node* node = root.get(name);
  if (node == nullptr) return nullptr;
  const toml::table* table = node->as_table();
  if (table == nullptr) {
    return Error(node->source(), name,
                 absl::StrCat("must be a table ([", ToAbsl(name), "]), not ", TypeName(*node)));
  }
  FACTEUR_RETURN_IF_ERROR(CheckKeys(*table, name, known));
  return table;
}

absl::Status TomlReader::ReadString(const toml::table& table, std::string_view prefix, std::string_view name,
                        std::string& out) const {
  const toml::node* node = table.get(name);
  if (node == nullptr) return absl::OkStatus();
  const auto* value = node->as_string();
  if (value == nullptr) {
    return Error(node->source(), Dotted(prefix, name),
                 absl::StrCat("must be a string, not ", TypeName(*node)));
  }
  out = value->get();
  return absl::OkStatus();
}

absl::Status TomlReader::ReadDuration(const toml::table& table, std::string_view prefix,
                          std::string_view name, absl::Duration& out) const {
  const toml::node* node = table.get(name);
  if (node == nullptr) return absl::OkStatus();
  const std::string key = Dotted(prefix, name);
  absl::Duration duration;
  if (const auto* integer = node->as_integer()) {
    // Bounded so that absl::Seconds cannot saturate to infinity.
    if (integer->get() <= 0 || integer->get() > 365 * 86400) {
      return Error(node->source(), key,
                   absl::StrCat("must be a positive number of seconds, got ", integer->get()));
    }
    duration = absl::Seconds(integer->get());
  } else if (const auto* text = node->as_string()) {
    if (!absl::ParseDuration(ToAbsl(text->get()), &duration)) {
      return Error(node->source(), key,
                   absl::StrCat("'", ToAbsl(text->get()),
                                "' is not a duration (examples: \"300s\", \"5m\", \"1h30m\")"));
    }
    if (duration <= absl::ZeroDuration() || duration == absl::InfiniteDuration()) {
      return Error(node->source(), key,
                   absl::StrCat("must be positive and finite, got '", ToAbsl(text->get()), "'"));
    }
  } else {
    return Error(node->source(), key,
                 absl::StrCat("must be a duration string such as \"300s\" or an integer "
                              "(seconds), not ",
                              TypeName(*node)));
  }
  out = duration;
  return absl::OkStatus();
}

absl::Status TomlReader::ReadBool(const toml::table& table, std::string_view prefix, std::string_view name,
                      bool& out) const {
  const toml::node* node = table.get(name);
  if (node == nullptr) return absl::OkStatus();
  const auto* value = node->as_boolean();
  if (value == nullptr) {
    return Error(node->source(), Dotted(prefix, name),
                 absl::StrCat("must be true or false, not ", TypeName(*node)));
  }
  out = value->get();
  return absl::OkStatus();
}

absl::Status TomlReader::ReadNumber(const toml::table& table, std::string_view prefix, std::string_view name,
                        double min, double max, double& out) const {
  const toml::node* node = table.get(name);
  if (node == nullptr) return absl::OkStatus();
  const std::string key = Dotted(prefix, name);
  double number = 0;
  if (const auto* floating = node->as_floating_point()) {
    number = floating->get();
  } else if (const auto* integer = node->as_integer()) {
    number = static_cast<double>(integer->get());
  } else {
    return Error(node->source(), key, absl::StrCat("must be a number, not ", TypeName(*node)));
  }
  if (!std::isfinite(number) || number < min || number > max) {
    std::string range = std::isinf(max) ? absl::StrCat("at least ", min)
                                        : absl::StrCat("between ", min, " and ", max);
    return Error(node->source(), key, absl::StrCat("must be ", range, ", got ", number));
  }
  out = number;
  return absl::OkStatus();
}

absl::Status TomlReader::ReadRequiredString(const toml::table& table, std::string_view prefix,
                                std::string_view name, std::string_view what,
                                std::string& out) const {
  const toml::node* node = table.get(name);
  if (node == nullptr) {
    return Error(table.source(), Dotted(prefix, name),
                 absl::StrCat("required (", ToAbsl(what), ")"));
  }
  FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, name, out));
  if (out.empty()) {
    return Error(node->source(), Dotted(prefix, name),
                 absl::StrCat("must not be empty (", ToAbsl(what), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<const toml::table*>> TomlReader::ArrayOfTables(const toml::table& parent,
                                                              std::string_view name,
                                                              std::string_view key) const {
  std::vector<const toml::table*> tables;
  const toml::node* node = parent.get(name);
  if (node == nullptr) return tables;
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    return Error(node->source(), key,
                 absl::StrCat("must be an array of tables ([[", ToAbsl(key), "]]), not ",
                              TypeName(*node)));
  }
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    if (!element.is_table()) {
      return Error(element.source(), absl::StrCat(ToAbsl(key), "[", i, "]"),
                   absl::StrCat("must be a table ([[", ToAbsl(key), "]]), not ",
                                TypeName(element)));
    }
    tables.push_back(element.as_table());
  }
  return tables;
}

}  // namespace facteur::config
