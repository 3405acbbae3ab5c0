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

// Which rules read the answer.
//   harness:   extract_answer above
//   avhbench:  the OutRo authors' AVHBench reader: the first whole word "yes" or "no" anywhere in the
//              stripped response, case-insensitive; else invalid
//   dailyomni: the authors' Daily-Omni reader, on the stripped, upper-cased response: the first of
//              A, B, C, D (in that order) that the response starts with or that appears as "(X)" or
//              "[X]"; else the letter after "Answer:" (optional spaces); else invalid
//   authors:   avhbench for yes/no items, dailyomni for the others
//   omnibench: OmniBench's parser (omnibench_choice below)
enum class AnswerRule { Harness, Authors, AVHBench, DailyOmni, OmniBench };
AnswerRule parse_answer_rule(const std::string& name);  // throws naming the known rules
const char* answer_rule_name(AnswerRule r);
Extraction read_answer(AnswerRule rule, const std::string& response, const Item& item);

// OmniBench's own parser of a choice (its inference/answer_parsing.py, deterministic form), over
// the first four options: "(X)" anywhere; else "X " ; else "X."; else, for a text of more than five
// words, the options whose text it contains; several candidates: the one found last. -1: none.
// Its scorer reads the gold answers with the same parser.
int omnibench_choice(const std::string& text, const std::vector<std::string>& options);

}  // namespace outro::eval
