// libFuzzer target: config.json parsing must turn any input into a config or an outro::Error.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    outro::parse_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
  } catch (const outro::Error&) {
  }
  return 0;
}
