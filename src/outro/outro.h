// OutRo as the authors' release computes it (../shared/docs/method.md, "OutRo"), one intervention.
//
// In the prefill of a prompt (the first forward call after reset), at every layer l of
// [start_layer, end_layer):
//   - detection (resid_pre, before the norm): the layer's sinks are the tokens whose max|h| reaches
//     tau = max(abs_thr, med_mul · lower median of |h| over the prompt); no fallback;
//   - sink value (qkv): per KV head, the mean of the sinks' value vectors;
//   - enhancement (attention mask policy), at layers l % apply_interval == 0: each sink not enhanced
//     before (apply_once) attends to every prompt key, no mask;
//   - gated rotation (z, before o_proj): every (token, head) output of a token that was never a sink
//     so far is turned toward the sink value by a cosine gate, its norm kept (rescale).
// Decode steps: nothing is detected or enhanced; with decode gating `official` the new token is
// gated as the release gates it (see DecodeGating), `on` always, `off` never.
// Everything runs on the backend: detection, the sets and the sink values stay in backend memory
// (no host round trip per layer on a GPU); the per-layer sink lists are read back once, when asked.
// A prompt in which no layer finds a sink is the plain model, bit for bit.
#pragma once
#include <algorithm>
#include <string>
#include <vector>

#include "runtime/intervention.h"

namespace outro {

struct ModelConfig;

enum class DecodeGating {
  Official,  // the release: gate at layers with a sink value, leaving out the new token's rows whose
             // index within the step (0 for one token) was a sink position of that layer in the prompt
  On,        // gate every new token at layers with a sink value
  Off        // decode steps are the plain model
};

struct OutroParams {
  std::string strategy = "outro";  // the preset the parameters started from (for --explain)
  int start_layer = 0;
  int end_layer = -1;       // exclusive; -1: L - 2
  int apply_interval = 0;   // 0: max(1, L / 7)
  bool apply_once = true;   // a position is enhanced at most once per prompt
  double abs_thr = 100.0;
  double med_mul = 1000.0;
  float gamma = 3.f;
  float temp = 0.1f;
  bool rescale = true;
  bool enhance = true;      // sink enhancement ("mask relaxation")
  bool gate = true;         // gated rotation ("ReLU-tanh"; the release's enable_relu_tanh)
  DecodeGating decode = DecodeGating::Official;
  // Research override, not the method: these prompt positions are the sinks of every layer in the
  // range instead of what Φ_LLM finds. Empty: detection.
  std::vector<int> override_sinks;
  // Where abs_thr and med_mul came from, for --explain: empty for the release's defaults, else the
  // config file (or the model folder's sink_thresholds.json) that set them.
  std::string thresholds_from;

  // Resolved for a model of `layers` layers.
  int end(int layers) const { return end_layer >= 0 ? end_layer : layers - 2; }
  int interval(int layers) const { return apply_interval > 0 ? apply_interval : std::max(1, layers / 7); }
};

// Named presets: baseline (nothing), outro (enhancement + gated rotation, the release's defaults),
// outro-sinkout-only (enhancement alone), outro-align-only (gated rotation alone). Throws Error
// naming the presets for an unknown name.
OutroParams outro_preset(const std::string& name);
const std::vector<std::string>& outro_preset_names();
// True when the parameters can change the forward pass (enhancement or gating on).
bool outro_active(const OutroParams& p);
const char* decode_gating_name(DecodeGating d);

// Applies a config file on top of `base`. JSON when the file starts with '{' (or ends in .json),
// else the TOML subset: `key = value` lines, "strings", numbers, true/false, arrays of integers,
// # comments. Keys: strategy (alias preset), start_layer, end_layer, apply_interval, apply_once,
// abs_thr, med_mul, gamma, temp, rescale, enhance, gate (alias enable_relu_tanh), decode_gating
// ("official" | "on" | "off"), override_sinks ([positions], research only). A "strategy" key
// restarts from that preset unless `keep_strategy` (an explicit --strategy wins); every other key
// then overrides. Unknown keys and bad values throw Error naming the file and the key.
OutroParams load_outro_config(const std::string& path, const OutroParams& base, bool keep_strategy);
// Same, from text (`source` names it in messages; `json` picks the syntax).
OutroParams parse_outro_config(const std::string& text, const std::string& source, bool json,
                               const OutroParams& base, bool keep_strategy);

// Sink thresholds a model folder carries, `<dir>/sink_thresholds.json` = {"abs_thr": x, "med_mul": y,
// "note": "why"}: for a model whose massive activations fall short of the release's 100 and
// 1000 x median (a small demo model), calibrated on it and documented beside it. OutRo and
// analyze's Φ_LLM use them unless the user sets thresholds. No file: present is false. A file with
// an unknown key, a missing or bad value, or not JSON: Error naming the file and the key.
struct ModelSinkThresholds {
  bool present = false;
  double abs_thr = 100.0, med_mul = 1000.0;
  std::string file, note;
};
ModelSinkThresholds read_model_thresholds(const std::string& model_dir);
// Takes the model's thresholds into p when nothing else set them (p.thresholds_from empty).
void apply_model_thresholds(OutroParams& p, const ModelSinkThresholds& t);

// Checks the parameters against a model (layer range, interval, temp); throws Error naming `where`.
void validate_outro(const OutroParams& p, const ModelConfig& c, const std::string& where);

// Φ_LLM on host rows h[n, dim]: i is a sink when max_c |h[i,c]| >= max(tau_abs, tau_rel · m), m the
// lower median of |h| over every (row, channel). The same rule as the backends' phi_detect.
struct PhiLLM {
  std::vector<int> sinks;
  float median = 0.f;            // m
  float tau = 0.f;               // max(tau_abs, tau_rel · m)
  std::vector<float> row_max;    // max_c |h[i,c]| per row
};
PhiLLM phi_llm(const float* h, int n, int dim, double tau_abs, double tau_rel);

// What one layer did in the prefill (read back from the backend once, when asked).
struct OutroLayer {
  bool detected = false;       // the layer is in [start_layer, end_layer)
  bool enhancement_layer = false;
  std::vector<int> sinks;      // positions Φ_LLM found (or the override's)
  std::vector<int> enhanced;   // the sinks enhanced here
  float tau = 0.f, median = 0.f, top = 0.f;  // threshold, lower median, largest max|h|
  long rotated = 0;            // (token, head) outputs turned toward the sink value in the prefill
  long rotated_decode = 0;     // and in decode steps
};

// Keeps its per-prompt state in the memory of the backend it last ran on: destroy it, or call
// release_buffers(), before that backend goes away. One object serves many prompts one after the
// other; everything is reset at every prefill.
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
  void z(ForwardCtx& ctx, int layer, Buf z) override;
  std::string explain() const override;

  const OutroParams& params() const { return p_; }
  void release_buffers();
  // Per layer, what the last prefill found and did (empty before a prefill).
  const std::vector<OutroLayer>& layers() const;
  // Per layer, the sink positions of the last prefill (empty where none).
  std::vector<std::vector<int>> layer_sinks() const;
  // True when some layer of the last prefill had a sink.
  bool any_sink() const;

 private:
  bool detect_layer(int l) const { return l >= lo_ && l < hi_; }
  bool enhance_layer(int l) const { return p_.enhance && detect_layer(l) && l % interval_ == 0; }
  Buf view(const Buf& b, size_t off, size_t n) const;
  Buf rec(int l) const { return view(rec_, size_t(l) * (size_t(prompt_len_) + 4), size_t(prompt_len_) + 4); }
  Buf vbar(int l) const { return view(vbar_, size_t(l) * vstride_, vstride_); }
  void alloc(ForwardCtx& ctx);

  OutroParams p_;
  int layers_ = 0, lo_ = 0, hi_ = 0, interval_ = 1;
  bool prefilled_ = false, prefill_ = false;
  int prompt_len_ = 0, decode_steps_ = 0;
  size_t vstride_ = 0;  // KV·hd + 3: mean, sink count, rotated in the prefill, rotated in decode steps
  // Backend memory: rec_ [L, P + 4] (phi_detect records), vbar_ [L, vstride_], enh_/done_/cum_ [P].
  Backend* be_ = nullptr;
  Buf rec_, vbar_, enh_, done_, cum_;
  Buf resid_, v_;  // the layer's resid_pre rows and values, read at its attention_policy hook
  Buf gate_vbar_;    // the layer's sink value, for gate_
  AttnGate gate_;    // the prefill's gated rotation, handed to the layer's attention call
  size_t cap_p_ = 0, cap_l_ = 0, cap_v_ = 0;
  // The host copy of what the backend holds, read once when asked.
  mutable bool read_ = false;
  mutable std::vector<OutroLayer> host_layers_;
};

}  // namespace outro
