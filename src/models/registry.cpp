// The registry of decoder architectures: which family (models/decoder.h) runs each supported
// config. Adding an architecture adds a row here and a family file, not branches in the session.
#include "core/error.h"
#include "io/config.h"
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

}  // namespace outro
