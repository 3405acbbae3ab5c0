// Answer readers: the harness's own rules and the OutRo authors' AVHBench / Daily-Omni readers.
#include "eval/extract.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace outro::eval {

namespace {

bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

// The part of the answer worth reading: inside <answer>...</answer> when present, and the
// text after a closing </think>.
std::string focus(const std::string& r) {
  std::string s = r;
  if (auto e = s.rfind("</think>"); e != std::string::npos) s = s.substr(e + 8);
  const std::string ls = lower(s);
  auto a = ls.find("<answer>");
  if (a != std::string::npos) {
    auto b = ls.find("</answer>", a);
    s = s.substr(a + 8, b == std::string::npos ? std::string::npos : b - a - 8);
  }
  return trim(s);
}

// Position of `needle` in `hay` (both lower case) as a whole word at or after `from`.
size_t find_word(const std::string& hay, const std::string& needle, size_t from = 0) {
  if (needle.empty()) return std::string::npos;
  for (size_t p = hay.find(needle, from); p != std::string::npos; p = hay.find(needle, p + 1)) {
    const bool left = p == 0 || !is_word_char(hay[p - 1]) || !is_word_char(needle.front());
    const size_t e = p + needle.size();
    const bool right = e >= hay.size() || !is_word_char(hay[e]) || !is_word_char(needle.back());
    if (left && right) return p;
  }
  return std::string::npos;
}

// A letter in [A, A+n) at position p of s that stands alone (no word characters around it).
int letter_at(const std::string& s, size_t p, int n) {
  if (p >= s.size()) return -1;
  char c = char(std::toupper(static_cast<unsigned char>(s[p])));
  if (c < 'A' || c >= 'A' + n) return -1;
  if (p > 0 && is_word_char(s[p - 1])) return -1;
  if (p + 1 < s.size() && is_word_char(s[p + 1])) return -1;
  return c - 'A';
}

size_t skip(const std::string& s, size_t p, const char* chars) {
  while (p < s.size() && (std::isspace(static_cast<unsigned char>(s[p])) || std::strchr(chars, s[p]))) ++p;
  return p;
}

}  // namespace

Extraction extract_answer(const std::string& response, const Item& item) {
  const int n = int(item.options.size());
  const std::string s = focus(response);
  const std::string ls = lower(s);
  if (s.empty()) return {-1, "unparsed"};

  if (item.yes_no()) {
    const size_t y = find_word(ls, "yes"), no = find_word(ls, "no");
    if (y != std::string::npos || no != std::string::npos) return {y < no ? 0 : 1, "yes_no"};
  }

  // "answer is B", "answer: (B)", "option B", "choice B"
  for (const char* key : {"answer is", "answer:", "answer", "option", "choice"}) {
    for (size_t p = ls.find(key); p != std::string::npos; p = ls.find(key, p + 1)) {
      size_t q = skip(s, p + std::strlen(key), ":(*[\"'");
      // Only an uppercase letter counts here: "the answer is a red ..." is an article.
      if (q < s.size() && std::isupper(static_cast<unsigned char>(s[q]))) {
        int k = letter_at(s, q, n);
        if (k >= 0) return {k, "letter_explicit"};
      }
    }
  }

  // Leading letter: "B", "B.", "B)", "(B)", "B: blue", "**B**"; "A red ..." is an article unless the
  // rest starts with that option's text.
  {
    size_t q = skip(s, 0, "(*[\"'");
    int k = letter_at(s, q, n);
    if (k >= 0 && std::isupper(static_cast<unsigned char>(s[q]))) {
      const size_t after = q + 1;
      if (after >= s.size() || std::strchr(".):,*]\"'\n", s[after])) return {k, "letter_leading"};
      const std::string rest = lower(trim(s.substr(after)));
      const std::string opt = lower(trim(item.options[k]));
      if (!opt.empty() && rest.rfind(opt, 0) == 0) return {k, "letter_leading"};
    }
  }

  // "(B)" anywhere
  for (size_t p = s.find('('); p != std::string::npos; p = s.find('(', p + 1)) {
    if (p + 2 < s.size() && s[p + 2] == ')' && std::isupper(static_cast<unsigned char>(s[p + 1]))) {
      int k = letter_at(s, p + 1, n);
      if (k >= 0) return {k, "letter_paren"};
    }
  }

  // The text of an option: the earliest mention wins, the longer option on a tie ("dark red" over "red").
  {
    int best = -1;
    size_t best_pos = std::string::npos, best_len = 0;
    for (int i = 0; i < n; ++i) {
      const std::string opt = lower(trim(item.options[i]));
      size_t p = find_word(ls, opt);
      if (p == std::string::npos) continue;
      if (p < best_pos || (p == best_pos && opt.size() > best_len)) {
        best = i;
        best_pos = p;
        best_len = opt.size();
      }
    }
    if (best >= 0) return {best, "option_text"};
  }

  // Any standalone uppercase letter in range, except the words "A" and "I" before a lower-case word.
  for (size_t p = 0; p < s.size(); ++p) {
    if (!std::isupper(static_cast<unsigned char>(s[p]))) continue;
    int k = letter_at(s, p, n);
    if (k < 0) continue;
    if ((s[p] == 'A' || s[p] == 'I') && p + 2 < s.size() && s[p + 1] == ' ' &&
        std::islower(static_cast<unsigned char>(s[p + 2])))
      continue;
    return {k, "letter_loose"};
  }
  return {-1, "unparsed"};
}

namespace {

// A byte of a word in the sense of Python's \b on str: ASCII letters, digits, '_', and (as an
// approximation of Unicode letters) every byte of a multi-byte UTF-8 character.
bool py_word_byte(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

Extraction avhbench_reader(const std::string& response, const Item& item) {
  const std::string s = lower(trim(response));
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && py_word_byte(static_cast<unsigned char>(s[i - 1]))) continue;
    for (const char* w : {"yes", "no"}) {
      const size_t n = std::strlen(w);
      if (s.compare(i, n, w) == 0 && (i + n == s.size() || !py_word_byte(static_cast<unsigned char>(s[i + n])))) {
        // yes/no items hold "yes" and "no" as options 0 and 1; another item has no such option
        const bool yes = n == 3;
        int idx = -1;
        for (int k = 0; k < int(item.options.size()); ++k)
          if (lower(trim(item.options[k])) == (yes ? "yes" : "no")) idx = k;
        return {idx, idx >= 0 ? "avhbench_yes_no" : "unparsed"};
      }
    }
  }
  return {-1, "unparsed"};
}

Extraction dailyomni_reader(const std::string& response, const Item& item) {
  std::string s = trim(response);
  for (auto& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
  for (char c = 'A'; c <= 'D'; ++c) {
    const bool starts = !s.empty() && s[0] == c;
    const bool paren = s.find(std::string("(") + c + ")") != std::string::npos;
    const bool bracket = s.find(std::string("[") + c + "]") != std::string::npos;
    if (starts || paren || bracket) return {c - 'A', starts ? "dailyomni_leading" : "dailyomni_bracketed"};
  }
  // "ANSWER:" then optional whitespace then a letter A-D
  for (size_t p = s.find("ANSWER:"); p != std::string::npos; p = s.find("ANSWER:", p + 1)) {
    size_t q = p + 7;
    while (q < s.size() && std::isspace(static_cast<unsigned char>(s[q]))) ++q;
    if (q < s.size() && s[q] >= 'A' && s[q] <= 'D') return {s[q] - 'A', "dailyomni_answer_colon"};
  }
  (void)item;
  return {-1, "unparsed"};
}

}  // namespace

int omnibench_choice(const std::string& text, const std::vector<std::string>& options) {
  const int n = std::min<int>(4, int(options.size()));
  const std::string r = " " + text + " ";
  std::vector<int> cand;
  bool bracketed = false, by_letter = true;
  auto has = [&](const std::string& needle) { return r.find(needle) != std::string::npos; };
  for (int i = 0; i < n; ++i)
    if (has(std::string("(") + char('A' + i) + ")")) cand.push_back(i), bracketed = true;
  if (cand.empty())
    for (int i = 0; i < n; ++i)
      if (has(std::string(1, char('A' + i)) + " ")) cand.push_back(i);
  if (cand.empty())
    for (int i = 0; i < n; ++i)
      if (has(std::string(1, char('A' + i)) + ".")) cand.push_back(i);
  const std::string lr = lower(r);
  if (cand.empty()) {
    size_t words = 0;
    for (size_t i = 0; i < r.size(); ++i)
      words += !std::isspace(static_cast<unsigned char>(r[i])) && (i == 0 || std::isspace(static_cast<unsigned char>(r[i - 1])));
    if (words > 5)
      for (int i = 0; i < n; ++i)
        if (lr.find(lower(options[i])) != std::string::npos) cand.push_back(i), by_letter = false;
  }
  if (cand.empty()) return -1;
  if (cand.size() == 1) return cand[0];
  // several: the one whose mark starts last (the first of equals)
  long best = -2;
  int pick = cand[0];
  for (int c : cand) {
    const std::string mark = by_letter ? (bracketed ? std::string("(") + char('A' + c) + ")" : std::string(" ") + char('A' + c) + " ")
                                       : lower(options[c]);
    const size_t at = (by_letter ? r : lr).rfind(mark);
    const long pos = at == std::string::npos ? -1 : long(at);
    if (pos > best) best = pos, pick = c;
  }
  return pick;
}

AnswerRule parse_answer_rule(const std::string& name) {
  if (name == "harness") return AnswerRule::Harness;
  if (name == "authors") return AnswerRule::Authors;
  if (name == "avhbench") return AnswerRule::AVHBench;
  if (name == "dailyomni") return AnswerRule::DailyOmni;
  if (name == "omnibench") return AnswerRule::OmniBench;
  fail("--answer-rule: unknown rule '", name, "' (known: harness, authors, avhbench, dailyomni, omnibench)");
}

const char* answer_rule_name(AnswerRule r) {
  switch (r) {
    case AnswerRule::Harness: return "harness";
    case AnswerRule::Authors: return "authors";
    case AnswerRule::AVHBench: return "avhbench";
    case AnswerRule::DailyOmni: return "dailyomni";
    case AnswerRule::OmniBench: return "omnibench";
  }
  return "?";
}

Extraction read_answer(AnswerRule rule, const std::string& response, const Item& item) {
  switch (rule) {
    case AnswerRule::Harness: return extract_answer(response, item);
    case AnswerRule::AVHBench: return avhbench_reader(response, item);
    case AnswerRule::DailyOmni: return dailyomni_reader(response, item);
    case AnswerRule::Authors:
      return item.yes_no() ? avhbench_reader(response, item) : dailyomni_reader(response, item);
    case AnswerRule::OmniBench: {
      const int k = omnibench_choice(response, item.options);
      return {k, k >= 0 ? "omnibench" : "unparsed"};
    }
  }
  return {-1, "unparsed"};
}

}  // namespace outro::eval
