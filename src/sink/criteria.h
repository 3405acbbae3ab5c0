// Sink criteria (docs/method.md, "Definitions") on host float32 activations, and the sink score
// of a head. Everything here is a pure function of arrays, so the criteria can be tested on
// hand-built activations and reused on the hook tensors of a forward pass.
//
//   Φ_LLM   token i is a sink when max_c |h[i,c]| >= tau_abs and >= tau_rel · median_{j,c} |h[j,c]|
//   D_sink  the channels c where the first token's residual stream is massive:
//           max over layers of |h_0^l[c]| / rms(h_0^l) >= dim_tau (fallback: the top `fallback_top`)
//   Φ_VLM   phi(h_i) = max_{c in D_sink} |h_i[c]| / rms(h_i); token i is a sink when phi >= tau
//   attn    alpha_j = mean_{i >= j} A[i,j]; key j is a sink of the head when alpha_j > eps
//   score   the mean over query rows of the attention mass on the sink set
#pragma once
#include <string>
#include <vector>

namespace outro::sink {

struct LlmCriterion {
  double tau_abs = 100.0;
  double tau_rel = 1000.0;
  std::string from;  // where the thresholds came from, for the report: empty for the defaults or flags
};

struct VlmCriterion {
  double tau = 20.0;          // phi threshold
  double dim_tau = 20.0;      // a channel of the first token is massive when |h[c]| / rms(h) >= dim_tau
  int fallback_top = 1;       // when no channel passes: the top channels by that ratio (0: none)
};

struct AttentionCriterion {
  double eps = 0.3;
};

// Φ_LLM on rows h[n, dim]. row_max[i] = max_c |h[i,c]|; median over all n·dim magnitudes (the lower
// middle element for an even count).
struct LlmResult {
  std::vector<int> sinks;
  std::vector<float> row_max;
  float median = 0.f;
};
LlmResult phi_llm(const float* h, int n, int dim, const LlmCriterion& p);

// The sink dimensions of a model from the first token's residual stream at every layer:
// first_rows[l] points at h_0^l [dim].
struct DSink {
  std::vector<int> dims;         // sorted
  std::string rule;              // "threshold", "fallback-top" or "none"
  std::vector<float> ratio;      // [dim] max over layers of |h_0^l[c]| / rms(h_0^l)
  std::vector<int> ratio_layer;  // [dim] the layer where that maximum is reached
};
DSink find_dsink(const std::vector<const float*>& first_rows, int dim, const VlmCriterion& p);

// phi per row of h[n, dim] for the channels dims (0 for every row when dims is empty).
std::vector<float> phi_vlm_values(const float* h, int n, int dim, const std::vector<int>& dims);
std::vector<int> phi_vlm(const float* h, int n, int dim, const std::vector<int>& dims, const VlmCriterion& p);

// Incoming attention alpha_j = mean_{i >= j} A[i, j] of one head's pattern A[n, cols] (rows are the
// queries at positions past .. past+n-1, cols = past + n keys); keys seen by no row get 0.
std::vector<float> incoming_attention(const float* A, int n, int cols, int past = 0);
std::vector<int> attention_sinks(const std::vector<float>& alpha, const AttentionCriterion& p);

// Mean over query rows of sum_{s in sinks} A[i, s]. exclude_sink_rows leaves out the rows of the sink
// tokens themselves (the first token's row puts all its mass on itself). Returns 0 when no row is left.
double sink_score(const float* A, int n, int cols, const std::vector<int>& sinks, bool exclude_sink_rows,
                  int past = 0);

// How focused one head's pattern A[n, cols] (past = 0, causal) is, over the query rows i >= 1 (row 0
// sees only itself): entropy_ratio = mean_i H(A[i, 0..i]) / ln(i + 1), 1 for rows that spread evenly
// over every key they may see and 0 for rows on one key; first = mean_i A[i, 0], the attention on the
// first token (even_first_share(n) is what an even spread puts there). A model whose heads are all
// near 1 attends nowhere in particular and has no head that a sink could serve.
struct Focus {
  double entropy_ratio = 0, first = 0;
};
Focus head_focus(const float* A, int n, int cols);

// mean over the query rows i = 1..n-1 of 1 / (i + 1): the attention an even spread puts on the first token.
double even_first_share(int n);

}  // namespace outro::sink
