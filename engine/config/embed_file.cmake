# Writes OUTPUT, a C++ source defining `std::string_view facteur::config::SYMBOL()` that returns
# the bytes of INPUT: the shipped shaping and classifier files are compiled into the binary, so
# `facteur serve` runs with no file beside it. Run at build time (cmake -P), so an edit of INPUT
# rebuilds the binary.
file(READ "${INPUT}" content)
string(FIND "${content}" ")facteur_embed\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw-string delimiter )facteur_embed\"")
endif()
file(WRITE "${OUTPUT}.tmp"
"// Generated from ${INPUT} by engine/config/embed_file.cmake; do not edit.
#include \"engine/config/embedded_files.h\"

namespace facteur::config {

std::string_view ${SYMBOL}() {
  static constexpr char kText[] = R\"facteur_embed(${content})facteur_embed\";
  return {kText, sizeof(kText) - 1};
}

}  // namespace facteur::config
")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
