// libFuzzer target: one line of a benchmark JSONL file must become an item or an outro::Error.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "eval/bench.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    return 0;  // not JSON: load_bench reports the line before this point
  }
  try {
    outro::eval::Item it = outro::eval::item_from_json(j, "fuzz/bench.jsonl:1");
    (void)outro::eval::item_to_json(it);
  } catch (const outro::Error&) {
  }
  return 0;
}
