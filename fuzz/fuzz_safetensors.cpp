// libFuzzer target: the safetensors parser must reject any malformed image with outro::Error,
// never crash or read out of bounds; accepted tensors must lie inside the buffer.
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto ts = outro::parse_safetensors(data, size, "fuzz.safetensors");
    for (const auto& t : ts) {
      if (t.nbytes && (t.data < data || t.data + t.nbytes > data + size)) std::abort();
      volatile uint8_t sink = 0;
      if (t.nbytes) sink = t.data[t.nbytes - 1];
      (void)sink;
    }
  } catch (const outro::Error&) {
  }
  return 0;
}
