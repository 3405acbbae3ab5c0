// Two-dimensional embeddings of a point cloud for the sink-geometry figure (paper Fig. 4c):
// PCA by power iteration with deflation, and exact t-SNE (O(n²) per iteration, for n up to ~1000).
#pragma once
#include <cstdint>
#include <vector>

namespace outro::sink {

struct Embedding2D {
  std::vector<float> xy;            // [n, 2]
  double explained[2] = {0, 0};     // PCA: fraction of the variance on each axis
  double kl = 0;                    // t-SNE: final KL(P || Q)
  int iterations = 0;
};

// x is [n, d] row-major. Components are sign-normalised (largest |loading| positive) so the result
// does not depend on the start vector.
Embedding2D pca2(const std::vector<float>& x, int n, int d, int max_iter = 500, double tol = 1e-10);

struct TsneParams {
  double perplexity = 30.0;     // lowered to (n - 1) / 3 when n is small
  int iterations = 1000;
  int exaggeration_iters = 250;
  double exaggeration = 12.0;
  double learning_rate = 0;     // <= 0: max(n / exaggeration / 4, 50)
  uint64_t seed = 1;            // jitter of the PCA start
};
Embedding2D tsne2(const std::vector<float>& x, int n, int d, const TsneParams& p = {});

// The symmetric affinities t-SNE fits (exposed for tests): P[n, n], sums to 1, zero diagonal;
// each conditional row has the given perplexity within 1e-3 (when n - 1 > perplexity).
std::vector<double> tsne_affinities(const std::vector<float>& x, int n, int d, double perplexity);

}  // namespace outro::sink
