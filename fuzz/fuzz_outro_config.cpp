// libFuzzer target: an OutRo config file (JSON or the TOML subset) must become parameters or an
// outro::Error; never a crash. The first byte picks the syntax.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "outro/outro.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool json = data[0] & 1;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    outro::parse_outro_config(text, "fuzz/outro.cfg", json, outro::outro_preset("outro"), false);
  } catch (const outro::Error&) {
  }
  return 0;
}
