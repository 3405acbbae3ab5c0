// Reads the chosen option out of a model's free-text answer: an option letter ("B", "(B)",
// "Answer: B", "The answer is B."), the option's text ("blue"), or yes/no.
#pragma once
#include <string>

#include "eval/bench.h"

namespace outro::eval {

struct Extraction {
  int index = -1;      // chosen option, -1 when none could be read
  std::string method;  // yes_no, letter_explicit, letter_leading, letter_paren, option_text, letter_loose, unparsed
};

Extraction extract_answer(const std::string& response, const Item& item);

}  // namespace outro::eval
