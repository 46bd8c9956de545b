// File: engine/config/embedded_files.h
// The shipped data files, compiled into the binary (engine/config/embed_file.cmake) so that the
// defaults need no file on disk: deploy/shaping.toml and deploy/classifier.toml.
// Thread contract: immutable static data; thread-safe.
#pragma once

#include <string_view>

namespace facteur::config {

// The text of deploy/shaping.toml as built.
std::string_view EmbeddedShapingToml();
// The text of deploy/classifier.toml as built.
std::string_view EmbeddedClassifierToml();

}  // namespace facteur::config
