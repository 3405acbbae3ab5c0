// UTF-8 and Unicode helpers of the tokenizers: well-formedness, lossy repair, normalisation forms
// (ICU), character classes.
#pragma once
#include <string>
#include <string_view>

namespace outro::text {

// Decodes the well-formed UTF-8 character at s[i] and advances i; false (i unchanged) if ill-formed.
bool next_cp(std::string_view s, size_t& i, int* cp);
void append_utf8(std::string* out, int cp);
bool is_valid_utf8(std::string_view s);

// s with every ill-formed sequence replaced by U+FFFD (one per maximal ill-formed subpart, as
// Unicode recommends and Rust's from_utf8_lossy does).
std::string to_valid_utf8(std::string_view s);

// Length of the tail of s that is a proper prefix of a well-formed multi-byte character (0-3):
// the bytes a stream must hold back until the next bytes arrive.
size_t truncated_tail(std::string_view s);

enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string normalize(const std::string& s, NormalForm f);  // s: valid UTF-8
std::string lowercase(const std::string& s);
std::string strip_accents(const std::string& s);  // drops nonspacing marks

bool is_whitespace(int cp);  // the White_Space property
bool is_word_char(int cp);   // alphanumeric or '_'

}  // namespace outro::text
