// The paper's sink analyses as library functions (docs/method.md; figures of arXiv 2603.14337):
//   record()          one forward pass with the hook points the analyses read
//   prompt_sinks()    per layer, the sink set under Φ_LLM, Φ_VLM and the attention criterion (Fig. 1a)
//   head_scores()     the sink score of every head
//   geometry()        key/value norms, per-dimension profile of sink keys, cosine of queries with sink
//                     and other keys, and the points of the 2-D embedding (Fig. 4)
//   dim_zeroing()     attention to the sinks per layer with the top-1 dimension of the sink keys zeroed (Fig. 5)
//   prune_curve()     the task metric as heads are ablated cumulatively in a given order (Fig. 2)
//   single_head_effects()  the metric with each head ablated alone (Fig. 3)
// run_analysis() runs them all on a prompts file and returns the report's JSON (src/report renders it).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/intervention.h"
#include "sink/criteria.h"
#include "sink/embed2d.h"
#include "sink/tasks.h"

namespace outro {
class Model;
class Backend;
struct ModelConfig;
}  // namespace outro

namespace outro::sink {

// The hook tensors of one forward pass over a prompt (past = 0), per layer, host float32.
struct Recorded {
  std::vector<int32_t> ids;
  int n = 0;
  std::shared_ptr<const MultimodalPrefill> prefill;  // the media rows' embeddings and positions, if any
  std::vector<uint8_t> modality;                     // [n] 0 text, 1 image, 2 video, 3 audio
  std::vector<std::vector<float>> resid;    // [L][n * D]       hook_resid_pre
  std::vector<std::vector<float>> q;        // [L][n * H * hd]  attn.hook_q (after RoPE)
  std::vector<std::vector<float>> k, v;     // [L][n * KV * hd] attn.hook_k / hook_v
  std::vector<std::vector<float>> pattern;  // [L][H * n * n]   attn.hook_pattern
};
// qkv: also record q/k/v (the geometry needs them; the criteria do not).
Recorded record(const Model& m, Backend& be, const std::vector<int32_t>& ids, bool qkv = true,
                const std::vector<Intervention*>& ivs = {});
// The same for a prompts-file item (its multimodal prefill when it has one).
Recorded record(const Model& m, Backend& be, const TaskItem& item, bool qkv = true,
                const std::vector<Intervention*>& ivs = {});

// Which set the sink score, the geometry and dimension zeroing use, per layer.
enum class ScoreSinks { PhiLLM, PhiVLM, Attention, First };
ScoreSinks parse_score_sinks(const std::string& s);  // phi_llm | phi_vlm | attention | first
const char* score_sinks_name(ScoreSinks s);

struct SinkParams {
  LlmCriterion llm;
  VlmCriterion vlm;
  AttentionCriterion attn;
  ScoreSinks score_sinks = ScoreSinks::PhiLLM;
  bool fallback_first = true;     // an empty score set becomes {0}
  bool exclude_sink_rows = true;  // sink scores leave out the rows of the sinks themselves
};

struct LayerSinks {
  std::vector<int> llm, vlm, attn;               // attn: union over the layer's heads
  std::vector<std::vector<int>> attn_heads;      // [H]
  std::vector<int> score;                        // the set the score/geometry/zeroing use
  bool fallback = false;                         // score set is the {0} fallback
  float first_max = 0, other_max = 0, median = 0;  // Φ_LLM statistics: max|h| of token 0, of the rest
  float first_phi = 0, other_phi_max = 0;          // Φ_VLM values: token 0, max over the rest
  std::vector<float> alpha_max_heads;              // [H] max_j alpha_j (attention criterion)
};
std::vector<LayerSinks> prompt_sinks(const Recorded& r, const ModelConfig& c, const DSink& dsink, const SinkParams& p);
// D_sink from the first token of one recorded forward (its resid_pre at every layer).
DSink model_dsink(const Recorded& r, const ModelConfig& c, const VlmCriterion& p);

// [L][H] sink score of every head (mean attention mass of the queries on the layer's score set).
std::vector<std::vector<double>> head_scores(const Recorded& r, const ModelConfig& c, const std::vector<LayerSinks>& s,
                                             bool exclude_sink_rows);

struct GeometryLayer {
  double key_norm_sink = 0, key_norm_other = 0, value_norm_sink = 0, value_norm_other = 0;
  double cos_sink = 0, cos_other = 0;      // mean cos(q_i, k_j) over causal pairs, j a sink / not
  double logit_sink = 0, logit_other = 0;  // mean q_i·k_j / sqrt(hd) over the same pairs
  double top1_share_sink = 0, top1_share_other = 0;  // mean k[c*]² / |k|², c* = argmax |k[c]|
  int n_sink_keys = 0, n_other_keys = 0;
};
struct Geometry {
  std::vector<GeometryLayer> layers;
  int layer = 0, head = 0, kv_head = 0;        // the layer/head of the profile and the embedding
  std::vector<double> profile_sink, profile_other;  // [hd] mean |k[c]| of sink keys / other keys
  // Points of the embedding: queries of `head`, keys of `kv_head` (sink or other), pooled over prompts.
  std::vector<float> points;  // [n_points, hd]
  std::vector<int> kind;      // 0 query, 1 sink key, 2 other key
  std::vector<int> prompt_of, pos_of;
};
// max_points caps the pooled embedding points (queries, other keys subsampled evenly; sink keys kept).
Geometry geometry(const std::vector<Recorded>& recs, const std::vector<std::vector<LayerSinks>>& sinks,
                  const ModelConfig& c, int layer, int head, int max_points);

struct DimZeroing {
  std::vector<double> baseline;    // [L] mean attention mass on the sinks
  std::vector<double> zeroed_all;  // [L] with the top-1 dimension zeroed at every layer
  std::vector<double> zeroed_own;  // [L] with it zeroed at that layer only
  std::vector<std::vector<int>> positions;  // per prompt: the sink positions zeroed (union over layers)
};
DimZeroing dim_zeroing(const Model& m, Backend& be, const std::vector<Recorded>& recs,
                       const std::vector<std::vector<LayerSinks>>& sinks, bool exclude_sink_rows,
                       const std::function<void()>& tick = {});

// Heads (layer, head) sorted by score, highest first (ties: lower layer, then lower head).
std::vector<HeadAblation::Target> order_by_score(const std::vector<std::vector<double>>& scores);
std::vector<HeadAblation::Target> random_order(int layers, int heads, uint64_t seed);

struct PruneCurve {
  std::vector<int> steps;             // number of heads ablated
  std::vector<MetricValue> values;
};
PruneCurve prune_curve(const Model& m, Backend& be, const std::vector<TaskItem>& items,
                       const std::vector<HeadAblation::Target>& order, const std::vector<int>& steps,
                       const std::function<void()>& tick = {});

// [L][H] the metric with each head ablated alone.
std::vector<std::vector<MetricValue>> single_head_effects(const Model& m, Backend& be, const std::vector<TaskItem>& items,
                                                          const std::function<void()>& tick = {});

struct AnalysisParams {
  SinkParams sinks;
  std::string metric = "auto";
  int geometry_layer = -1, geometry_head = -1;  // -1: the head of highest sink score (layers >= 1 first)
  int max_points = 600;
  bool tsne = true;
  TsneParams tsne_params;
  bool pruning = true, single_head = true, zeroing = true;
  int prune_step = 0;          // 0: about 12 steps up to prune_max_frac of the heads
  double prune_max_frac = 0.5;
  std::vector<uint64_t> seeds = {1, 2, 3};
};

// Progress: called with a stage name and the number of units it will tick, then tick() per unit.
struct ProgressSink {
  std::function<void(const std::string&, size_t)> stage;
  std::function<void()> tick;
  std::function<void()> done;
};

nlohmann::json run_analysis(const Model& m, Backend& be, const std::vector<TaskItem>& items, const AnalysisParams& p,
                            const ProgressSink& progress = {});

}  // namespace outro::sink
