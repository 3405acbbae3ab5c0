// A session runs one sequence through a model on a backend: prefill, then decode steps over a
// KV cache. Observers read hook points; interventions edit the forward pass.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "models/decoder.h"
#include "models/model.h"
#include "runtime/hooks.h"
#include "runtime/intervention.h"

namespace outro {

class Session {
 public:
  // max_ctx: cache capacity in tokens (<= 0: the model's max_position_embeddings).
  Session(const Model& model, Backend& be, int max_ctx = 0);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void reset();
  // Forgets the tokens from position pos on (0 <= pos <= position()); the next forward call
  // overwrites their cache rows. Scores several continuations of one prompt prefill (for
  // interventions without per-step state, e.g. head ablation).
  void rewind(int pos);
  int position() const { return pos_; }
  int capacity() const { return max_ctx_; }
  int prompt_len() const { return prompt_len_; }
  const Model& model() const { return model_; }
  Backend& backend() { return be_; }

  void add_observer(Observer* o) { observers_.push_back(o); }
  void clear_observers() { observers_.clear(); }
  void add_intervention(Intervention* i) { interventions_.push_back(i); }
  void clear_interventions() { interventions_.clear(); }
  const std::vector<Intervention*>& interventions() const { return interventions_; }

  // Feeds n tokens at the next positions. logits (when non-null) receives [n, vocab] if all_rows,
  // else [vocab] for the last token. Throws Error for ids outside the vocabulary or a full cache.
  void forward(const int32_t* ids, int n, std::vector<float>* logits, bool all_rows = false);
  void forward(const std::vector<int32_t>& ids, std::vector<float>* logits, bool all_rows = false) {
    forward(ids.data(), int(ids.size()), logits, all_rows);
  }
  // Greedy decoding: feeds n tokens like forward() and returns the index of the largest logit of
  // the last row (Backend::argmax: on a GPU only the index comes back, not the vocabulary's logits).
  int32_t forward_argmax(const int32_t* ids, int n);
  // Multimodal prefill (Qwen2.5-Omni / Qwen2.5-VL): rows i with modality[i] != 0 take embeds[i, :]
  // (host [n, hidden]) instead of their token's embedding; positions (host [3, n]: t, h, w) are
  // the 3-D rotary positions, applied per mrope_section. Later tokens continue at
  // max(positions) + 1 (the reference's rope delta). modality/positions may be null.
  void forward_embeds(const int32_t* ids, int n, const float* embeds, const uint8_t* modality,
                      const int32_t* positions, std::vector<float>* logits, bool all_rows = false);
  // DeepStack (Qwen3-VL / Qwen3-Omni): for the next forward call only (normally forward_embeds),
  // features[k] (host [rows, hidden], one row per index in rows, row indices of that call) is added to the
  // residual stream after layer k, for k < features.size() <= layers. hook_resid_post of layer k is
  // the layer's output before the addition (the reference's hidden state); layer k + 1 reads the sum.
  void set_deepstack(std::vector<std::vector<float>> features, std::vector<int32_t> rows);
  // Modality of every token fed so far (0 text, 1 image, 2 video, 3 audio: models/multimodal.h).
  const std::vector<uint8_t>& modalities() const { return modality_; }

 private:
  // The shared points of one layer's forward (decoder.h's LayerRun), bound to this session.
  class Points;
  struct Step;
  struct Cache {
    Buf k, v;
  };
  void ensure_scratch(int n);
  void run(const int32_t* ids, int n, const float* embeds, const uint8_t* modality, const int32_t* positions,
           std::vector<float>* logits, bool all_rows, int32_t* argmax = nullptr);
  bool wants(const std::string& name) const;
  void emit(const std::string& name, int layer, const Buf& b, std::vector<int64_t> shape);

  const Model& model_;
  Backend& be_;
  int max_ctx_ = 0;
  int pos_ = 0;
  int prompt_len_ = 0;
  int rope_delta_ = 0;                // multimodal: position of token p is p + rope_delta_
  std::vector<uint8_t> modality_;     // per cached token
  Weight embed_, final_norm_, lm_head_;
  std::unique_ptr<Decoder> decoder_;  // the architecture family's layer forward (models/)
  std::vector<Cache> cache_;          // per layer, [max_ctx, kv_heads, head_dim]
  std::vector<std::vector<std::string>> names_;  // per layer hook names
  int scratch_n_ = 0;
  Buf x_, xn_, q_, k_, v_, z_, attn_out_, mlp_out_, logits_buf_;
  std::vector<Observer*> observers_;
  std::vector<Intervention*> interventions_;
  std::vector<float> host_;  // staging for observers
  std::vector<std::vector<float>> deepstack_;  // pending DeepStack features, per layer
  std::vector<int32_t> deepstack_rows_;
  Buf deepstack_buf_;
};

}  // namespace outro
