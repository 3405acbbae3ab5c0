#include "models/model.h"

#include <cmath>

#include "core/error.h"
#include "models/decoder.h"

namespace outro {

std::unique_ptr<Model> Model::load(const std::string& dir) {
  auto m = std::unique_ptr<Model>(new Model());
  m->dir_ = dir;
  m->cfg_ = load_config(dir);
  // A released Qwen2.5-Omni folder also holds the talker and token2wav (speech output), which outro
  // does not run: their tensors are counted from the headers and never loaded.
  std::vector<std::string> leave_out;
  if (m->cfg_.arch == Arch::Qwen2_5OmniThinker) leave_out = {"talker.", "token2wav."};
  if (m->cfg_.arch == Arch::Qwen3OmniMoeThinker) leave_out = {"talker.", "code2wav."};
  m->store_ = WeightStore::open(dir, leave_out);
  const ModelConfig& c = m->cfg_;
  const WeightStore& s = *m->store_;

  // The decoder's weights live under a prefix that depends on the wrapper class.
  static const char* prefixes[] = {"model.", "model.language_model.", "thinker.model.", "language_model.model.",
                                   "language_model.", "thinker.model.language_model."};
  for (const char* p : prefixes)
    if (s.has(std::string(p) + "embed_tokens.weight")) {
      m->prefix_ = p;
      break;
    }
  if (m->prefix_.empty()) {
    if (c.omni_released)
      fail(s.where(), ": missing tensor thinker.model.embed_tokens.weight (config.json is a released ",
           c.arch == Arch::Qwen3OmniMoeThinker ? "Qwen3-Omni" : "Qwen2.5-Omni",
           " config with thinker_config, whose decoder is stored under thinker.model.)");
    fail(s.where(), ": missing tensor model.embed_tokens.weight (also looked for it under model.language_model., "
                    "thinker.model., language_model.model.)");
  }
  const std::string& P = m->prefix_;
  const int64_t D = c.hidden, hd = c.head_dim;
  const TensorLookup get{s};

  m->embed = get.need(P + "embed_tokens.weight", {c.vocab, D});
  m->final_norm = get.need(P + "norm.weight", {D});
  const char* head_first = P.rfind("thinker.", 0) == 0 ? "thinker.lm_head.weight" : "lm_head.weight";
  for (const char* head : {head_first, "lm_head.weight", "thinker.lm_head.weight", "language_model.lm_head.weight"})
    if (s.has(head)) {
      m->lm_head = get.need(head, {c.vocab, D});
      break;
    }
  if (!m->lm_head) {
    if (!c.tie_embeddings)
      fail(s.where(), ": missing tensor lm_head.weight (config.json says tie_word_embeddings is false)");
    m->lm_head = m->embed;
  }
  // Each layer's tensors as its architecture family names them.
  const DecoderFamily& fam = decoder_family(c);
  for (int l = 0; l < c.layers; ++l) {
    LayerTensors t;
    fam.bind(c, get, P, l, &t);
    m->layers.push_back(std::move(t));
  }
  m->inv_freq.resize(size_t(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i)
    m->inv_freq[size_t(i)] = float(1.0 / std::pow(double(c.rope_theta), double(2 * i) / double(hd)));
  return m;
}

}  // namespace outro
