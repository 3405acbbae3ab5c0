// The registry of decoder architectures: which family (models/decoder.h) runs each supported
// config. Adding an architecture adds a row here and a family file, not branches in the session.
#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "models/decoder.h"

namespace outro {

namespace {

struct Row {
  Arch arch;
  const DecoderFamily* family;
};

const Row kRows[] = {
    {Arch::Qwen2, &kQwen2Family},
    {Arch::Llama, &kQwen2Family},
    {Arch::Qwen2_5OmniThinker, &kQwen2Family},
    {Arch::Qwen2_5_VL, &kQwen2Family},
    {Arch::Qwen3OmniMoeThinker, &kQwen3MoeFamily},
};

}  // namespace

const DecoderFamily& decoder_family(const ModelConfig& c) {
  for (const Row& r : kRows)
    if (r.arch == c.arch) return *r.family;
  fail(c.source, ": no decoder family is registered for ", arch_name(c.arch));
}

Weight weight_slice(const Weight& w, int64_t off, int64_t rows, int64_t cols) {
  if (off < 0 || rows <= 0 || cols <= 0 || off + rows * cols > w.rows * w.cols)
    fail("weight_slice: [", rows, ", ", cols, "] at element ", off, " is outside ",
         w.src ? w.src->name : std::string("a weight"), " of ", w.rows * w.cols, " elements");
  Weight s = w;
  s.rows = rows;
  s.cols = cols;
  s.data = static_cast<const uint8_t*>(w.data) + size_t(off) * dtype_size(w.dtype);
  return s;
}

}  // namespace outro
