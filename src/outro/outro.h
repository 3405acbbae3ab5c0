// OutRo: sink-out attention at an early layer and alignment with the sink (docs/method.md, "OutRo").
//
// One intervention value object with named presets and a config file:
//   - the sink set is chosen once per sequence, at the input (hook_resid_pre) of layer l_out during
//     the prefill (the first forward call after reset): Φ_LLM, falling back to position 0, or
//     explicit prompt positions;
//   - sink-out: at layer l_out the rows of the sinks see keys [0, sinkout_end) (default: the prompt
//     length) through AttnParams' mask policy — inside the normal attention kernel;
//   - alignment: on the align layers, every non-sink row (of the residual stream, or of the value
//     vectors per KV head) is rotated toward the mean sink row, norm preserved. The sink targets
//     are kept per layer in backend buffers after the prefill, so a decode step is one align_rows
//     per align layer and nothing else (no host round trip, no extra pass).
// Every part can be switched off; with sink-out off and lambda 0 the forward pass is bit-identical
// to the plain model.
#pragma once
#include <string>
#include <vector>

#include "runtime/intervention.h"

namespace outro {

struct ModelConfig;

enum class AlignTarget { Hidden, Value };

struct OutroParams {
  std::string strategy = "outro";  // preset the parameters started from (for --explain)
  int l_out = 2;
  // Sink set: Φ_LLM at the input of l_out (fallback: position 0) unless explicit positions are given.
  bool auto_sinks = true;
  std::vector<int> sinks;  // explicit prompt positions (auto_sinks == false)
  double tau_abs = 100.0;
  double tau_rel = 1000.0;
  // Sink-out attention at l_out; sinkout_end <= 0 means the prompt length.
  bool sinkout = true;
  int sinkout_end = 0;
  // Alignment with the sink on layers [align_begin, align_end] (inclusive); -1: l_out+1 .. L-1.
  bool align = true;
  AlignTarget target = AlignTarget::Hidden;
  float lambda = 0.1f;
  int align_begin = -1, align_end = -1;

  // The align range for a model of `layers` layers (begin > end: empty).
  int first_align_layer() const { return align_begin >= 0 ? align_begin : l_out + 1; }
  int last_align_layer(int layers) const { return align_end >= 0 ? align_end : layers - 1; }
};

// Named presets: baseline (nothing on), outro (sink-out + hidden alignment), outro-align-only,
// outro-sinkout-only. Throws Error naming the presets for an unknown name.
OutroParams outro_preset(const std::string& name);
const std::vector<std::string>& outro_preset_names();
// True when the parameters change the forward pass at all (sink-out on, or alignment with lambda != 0).
bool outro_active(const OutroParams& p);

// Applies a config file on top of `base`. JSON when the file starts with '{' (or ends in .json),
// else the TOML subset: `key = value` lines, "strings", numbers, true/false, arrays of integers,
// # comments. Keys: strategy (alias preset), l_out, sinks ("auto" | [positions]), tau_abs,
// tau_rel, sinkout, sinkout_end, align, align_target ("hidden" | "value"), lambda,
// align_layers ([start, end] inclusive | "auto"). A "strategy" key restarts from that preset
// unless `keep_strategy` (an explicit --strategy wins); every other key then overrides.
// Unknown keys and bad values throw Error naming the file and the key.
OutroParams load_outro_config(const std::string& path, const OutroParams& base, bool keep_strategy);
// Same, from text (`source` names it in messages; `json` picks the syntax).
OutroParams parse_outro_config(const std::string& text, const std::string& source, bool json,
                               const OutroParams& base, bool keep_strategy);

// Checks the parameters against a model (layer indices, lambda, positions); throws Error.
void validate_outro(const OutroParams& p, const ModelConfig& c, const std::string& where);

// Φ_LLM on host rows h[n, dim]: i is a sink when max_c |h[i,c]| >= tau_abs and
// >= tau_rel · median_{j,c} |h[j,c]| (the lower middle element for an even count).
struct PhiLLM {
  std::vector<int> sinks;
  float median = 0.f;            // median |h| over every (row, channel)
  std::vector<float> row_max;    // max_c |h[i,c]| per row
};
PhiLLM phi_llm(const float* h, int n, int dim, double tau_abs, double tau_rel);

// Keeps its per-layer sink targets in the memory of the backend it last ran on: destroy it, or call
// release_buffers(), before that backend goes away. One object can serve many sequences (and
// sessions) one after the other; the sink set is chosen again at every prefill.
class OutRo : public Intervention {
 public:
  explicit OutRo(OutroParams p);
  ~OutRo() override;
  OutRo(const OutRo&) = delete;
  OutRo& operator=(const OutRo&) = delete;

  std::string name() const override { return "outro"; }
  void begin(ForwardCtx& ctx) override;
  void resid_pre(ForwardCtx& ctx, int layer, Buf h) override;
  void qkv(ForwardCtx& ctx, int layer, Buf q, Buf k, Buf v) override;
  void attention_policy(ForwardCtx& ctx, int layer, AttnParams& p) override;
  std::string explain() const override;

  const OutroParams& params() const { return p_; }
  // Frees the per-layer sink targets (they are made again at the next prefill).
  void release_buffers();
  // The sink positions of the current sequence (empty before its prefill reached l_out).
  const std::vector<int>& sinks() const { return sinks_; }
  // How the sinks were chosen: "explicit", "phi_llm" or "fallback" (Φ_LLM found none).
  const std::string& sink_rule() const { return rule_; }

 private:
  bool in_align(int layer) const { return layer >= align_lo_ && layer <= align_hi_; }
  void choose_sinks_phi(ForwardCtx& ctx, const Buf& h);
  void set_sinks(std::vector<int> s, const char* rule, int n);
  Buf& target(ForwardCtx& ctx, int layer, size_t len);        // made or reused in the prefill
  const Buf& kept_target(ForwardCtx& ctx, int layer) const;  // the prefill's, in a decode step

  OutroParams p_;
  bool edits_hidden_ = false, edits_value_ = false;
  int align_lo_ = 0, align_hi_ = -1;  // resolved at the first prefill
  // State of the current sequence.
  bool chosen_ = false;        // sinks known
  bool prefill_ = false;       // the call in progress is the prompt (past == 0)
  std::vector<int> sinks_;     // sorted absolute positions
  std::vector<int> batch_rows_;  // sinks as rows of the prefill batch
  std::vector<uint8_t> skip_;    // [n] 1 for sink rows of the prefill batch
  std::string rule_;
  float phi_median_ = 0.f, phi_max_ = 0.f;
  int prompt_len_ = 0, sinkout_end_ = 0, decode_steps_ = 0, aligned_rows_ = 0;
  std::vector<int> layers_edited_;
  std::vector<float> host_;  // the prefill's resid_pre at l_out, for Φ_LLM
  // Per-layer sink targets (hidden [D] or value [KV*hd]) in backend memory, kept from the prefill.
  Backend* be_ = nullptr;
  std::vector<Buf> targets_;
  std::vector<size_t> target_len_;
};

}  // namespace outro
