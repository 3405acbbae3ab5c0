#include "tokenizer/text.h"

#include <unicode/bytestream.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include "core/error.h"

namespace outro::text {

namespace {

// For a lead byte: the number of continuation bytes and the allowed range of the first one.
bool lead_info(unsigned char c, int* need, unsigned char* lo, unsigned char* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    *need = 1;
  } else if (c == 0xE0) {
    *need = 2;
    *lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    *need = 2;
  } else if (c == 0xED) {
    *need = 2;
    *hi = 0x9F;
  } else if (c == 0xF0) {
    *need = 3;
    *lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    *need = 3;
  } else if (c == 0xF4) {
    *need = 3;
    *hi = 0x8F;
  } else {
    return false;
  }
  return true;
}

// How many bytes of a character starting at s[i] are well-formed (k continuation bytes matched).
// Returns the count of bytes consumed by the maximal well-formed prefix (>= 1) and sets *complete.
size_t scan(std::string_view s, size_t i, bool* complete) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    *complete = true;
    return 1;
  }
  int need;
  unsigned char lo, hi;
  if (!lead_info(c, &need, &lo, &hi)) {
    *complete = false;
    return 1;
  }
  size_t j = i + 1;
  for (int k = 0; k < need; ++k, ++j) {
    if (j >= s.size()) {
      *complete = false;
      return j - i;
    }
    unsigned char d = static_cast<unsigned char>(s[j]);
    if (k == 0 ? (d < lo || d > hi) : (d & 0xC0) != 0x80) {
      *complete = false;
      return j - i;
    }
  }
  *complete = true;
  return j - i;
}

}  // namespace

bool next_cp(std::string_view s, size_t& i, int* cp) {
  if (i >= s.size()) return false;
  bool ok;
  size_t n = scan(s, i, &ok);
  if (!ok) return false;
  unsigned char c = static_cast<unsigned char>(s[i]);
  int v = n == 1 ? c : c & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) v = (v << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *cp = v;
  i += n;
  return true;
}

void append_utf8(std::string* out, int cp) {
  if (cp < 0x80) {
    out->push_back(char(cp));
  } else if (cp < 0x800) {
    out->push_back(char(0xC0 | (cp >> 6)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(char(0xE0 | (cp >> 12)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(char(0xF0 | (cp >> 18)));
    out->push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(char(0x80 | (cp & 0x3F)));
  }
}

bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    bool ok;
    i += scan(s, i, &ok);
    if (!ok) return false;
  }
  return true;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0, run = 0;  // s[run, i) is well-formed and not yet copied
  while (i < s.size()) {
    bool ok;
    size_t n = scan(s, i, &ok);
    if (ok) {
      i += n;
      continue;
    }
    out.append(s.substr(run, i - run));
    out += "\xEF\xBF\xBD";
    i += n;
    run = i;
  }
  out.append(s.substr(run));
  return out;
}

size_t truncated_tail(std::string_view s) {
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    size_t i = s.size() - back;
    unsigned char c = static_cast<unsigned char>(s[i]);
    if ((c & 0xC0) == 0x80) continue;
    int need;
    unsigned char lo, hi;
    if (!lead_info(c, &need, &lo, &hi)) return 0;
    bool ok;
    size_t n = scan(s, i, &ok);
    return !ok && i + n == s.size() ? back : 0;
  }
  return 0;
}

namespace {

bool all_ascii(const std::string& s) {
  for (char c : s)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

}  // namespace

std::string normalize(const std::string& s, NormalForm f) {
  if (all_ascii(s)) return s;  // every normal form of ASCII is itself
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = f == NormalForm::NFC    ? icu::Normalizer2::getNFCInstance(err)
                              : f == NormalForm::NFD  ? icu::Normalizer2::getNFDInstance(err)
                              : f == NormalForm::NFKC ? icu::Normalizer2::getNFKCInstance(err)
                                                      : icu::Normalizer2::getNFKDInstance(err);
  if (U_FAILURE(err)) fail("ICU: no Unicode normalizer (", u_errorName(err), ")");
  std::string out;
  icu::StringByteSink<std::string> sink(&out, int32_t(s.size()));
  n->normalizeUTF8(0, icu::StringPiece(s.data(), int32_t(s.size())), sink, nullptr, err);
  if (U_FAILURE(err)) fail("ICU: Unicode normalisation failed (", u_errorName(err), ")");
  return out;
}

std::string lowercase(const std::string& s) {
  std::string out;
  if (all_ascii(s)) {
    out = s;
    for (char& c : out)
      if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
    return out;
  }
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), int32_t(s.size())));
  u.toLower(icu::Locale::getRoot());
  u.toUTF8String(out);
  return out;
}

std::string strip_accents(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    int cp;
    if (!next_cp(s, i, &cp)) {
      ++i;
      continue;
    }
    if (u_charType(UChar32(cp)) != U_NON_SPACING_MARK) append_utf8(&out, cp);
  }
  return out;
}

bool is_whitespace(int cp) { return u_isUWhiteSpace(UChar32(cp)); }

bool is_word_char(int cp) { return cp == '_' || u_isalnum(UChar32(cp)); }

}  // namespace outro::text
