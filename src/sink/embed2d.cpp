#include "sink/embed2d.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"

namespace outro::sink {

namespace {

// y = Xc^T (Xc v) / n for the centred data Xc.
void cov_times(const std::vector<double>& xc, int n, int d, const std::vector<double>& v, std::vector<double>& y) {
  std::vector<double> t(size_t(n), 0.0);
  for (int i = 0; i < n; ++i) {
    const double* r = xc.data() + size_t(i) * d;
    double s = 0;
    for (int c = 0; c < d; ++c) s += r[c] * v[size_t(c)];
    t[size_t(i)] = s;
  }
  y.assign(size_t(d), 0.0);
  for (int i = 0; i < n; ++i) {
    const double* r = xc.data() + size_t(i) * d;
    for (int c = 0; c < d; ++c) y[size_t(c)] += r[c] * t[size_t(i)];
  }
  for (auto& e : y) e /= std::max(n, 1);
}

double norm(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e * e;
  return std::sqrt(s);
}

}  // namespace

Embedding2D pca2(const std::vector<float>& x, int n, int d, int max_iter, double tol) {
  if (n < 0 || d <= 0 || x.size() != size_t(n) * size_t(d)) fail("pca2: expected ", n, " x ", d, " values, found ", x.size());
  Embedding2D e;
  e.xy.assign(size_t(n) * 2, 0.f);
  if (n == 0) return e;
  std::vector<double> mean(size_t(d), 0.0), xc(x.begin(), x.end());
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < d; ++c) mean[size_t(c)] += xc[size_t(i) * d + c];
  for (auto& m : mean) m /= n;
  double total = 0;
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < d; ++c) {
      double& v = xc[size_t(i) * d + c];
      v -= mean[size_t(c)];
      total += v * v;
    }
  total /= n;
  std::vector<std::vector<double>> comps;
  std::vector<double> y;
  for (int k = 0; k < 2 && k < d; ++k) {
    std::vector<double> v(static_cast<size_t>(d));
    for (int c = 0; c < d; ++c) v[size_t(c)] = 1.0 + 0.01 * ((c * 7919 + k * 104729) % 101);  // fixed start
    double lambda = 0;
    for (int it = 0; it < max_iter; ++it) {
      for (const auto& u : comps) {  // deflation: stay orthogonal to earlier components
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += v[size_t(c)] * u[size_t(c)];
        for (int c = 0; c < d; ++c) v[size_t(c)] -= dot * u[size_t(c)];
      }
      const double nv = norm(v);
      if (!(nv > 0)) break;
      for (auto& e2 : v) e2 /= nv;
      cov_times(xc, n, d, v, y);
      for (const auto& u : comps) {
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += y[size_t(c)] * u[size_t(c)];
        for (int c = 0; c < d; ++c) y[size_t(c)] -= dot * u[size_t(c)];
      }
      const double ny = norm(y);
      e.iterations = std::max(e.iterations, it + 1);
      if (!(ny > 0)) {
        lambda = 0;
        break;
      }
      double diff = 0;
      for (int c = 0; c < d; ++c) diff += std::fabs(y[size_t(c)] / ny - v[size_t(c)]);
      v = y;
      for (auto& e2 : v) e2 /= ny;
      lambda = ny;
      if (diff < tol * d) break;
    }
    // sign: largest |loading| positive
    int arg = 0;
    for (int c = 1; c < d; ++c)
      if (std::fabs(v[size_t(c)]) > std::fabs(v[size_t(arg)])) arg = c;
    if (v[size_t(arg)] < 0)
      for (auto& e2 : v) e2 = -e2;
    e.explained[k] = total > 0 ? lambda / total : 0;
    comps.push_back(v);
  }
  for (int i = 0; i < n; ++i)
    for (size_t k = 0; k < comps.size(); ++k) {
      double s = 0;
      for (int c = 0; c < d; ++c) s += xc[size_t(i) * d + c] * comps[k][size_t(c)];
      e.xy[size_t(i) * 2 + k] = float(s);
    }
  return e;
}

std::vector<double> tsne_affinities(const std::vector<float>& x, int n, int d, double perplexity) {
  std::vector<double> D(size_t(n) * n, 0.0);
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j) {
      double s = 0;
      for (int c = 0; c < d; ++c) {
        const double t = double(x[size_t(i) * d + c]) - double(x[size_t(j) * d + c]);
        s += t * t;
      }
      D[size_t(i) * n + j] = D[size_t(j) * n + i] = s;
    }
  const double target = std::log(perplexity);  // entropy in nats
  std::vector<double> P(size_t(n) * n, 0.0), row(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    double beta = 1.0, lo = 0, hi = INFINITY;
    // scale beta to the distances so the search starts near the answer
    double dmin = INFINITY;
    for (int j = 0; j < n; ++j)
      if (j != i) dmin = std::min(dmin, D[size_t(i) * n + j]);
    double mean_d = 0;
    for (int j = 0; j < n; ++j) mean_d += D[size_t(i) * n + j];
    mean_d /= std::max(n - 1, 1);
    if (mean_d > 0) beta = 1.0 / mean_d;
    for (int it = 0; it < 200; ++it) {
      double sum = 0, hsum = 0;
      for (int j = 0; j < n; ++j) {
        if (j == i) {
          row[size_t(j)] = 0;
          continue;
        }
        const double dd = D[size_t(i) * n + j] - dmin;  // shift for stability; cancels in the ratio
        row[size_t(j)] = std::exp(-beta * dd);
        sum += row[size_t(j)];
        hsum += row[size_t(j)] * dd;
      }
      if (!(sum > 0)) sum = 1e-300;
      const double H = std::log(sum) + beta * hsum / sum;
      for (int j = 0; j < n; ++j) row[size_t(j)] /= sum;
      const double diff = H - target;
      if (std::fabs(diff) < 1e-5) break;
      if (diff > 0) {  // entropy too high: sharpen
        lo = beta;
        beta = std::isinf(hi) ? beta * 2 : (beta + hi) / 2;
      } else {
        hi = beta;
        beta = (beta + lo) / 2;
      }
    }
    for (int j = 0; j < n; ++j) P[size_t(i) * n + j] = row[size_t(j)];
  }
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j) {
      const double s = (P[size_t(i) * n + j] + P[size_t(j) * n + i]) / (2.0 * n);
      P[size_t(i) * n + j] = P[size_t(j) * n + i] = s;
    }
  return P;
}

Embedding2D tsne2(const std::vector<float>& x, int n, int d, const TsneParams& p) {
  if (n < 0 || d <= 0 || x.size() != size_t(n) * size_t(d)) fail("tsne2: expected ", n, " x ", d, " values, found ", x.size());
  Embedding2D e;
  e.xy.assign(size_t(n) * 2, 0.f);
  if (n < 3) return e;
  const double perp = std::max(1.0, std::min(p.perplexity, (n - 1) / 3.0));
  std::vector<double> P = tsne_affinities(x, n, d, perp);
  for (auto& v : P) v = std::max(v, 1e-12);
  // Start: the PCA layout scaled to a standard deviation of 1e-4, with a little seeded jitter.
  Embedding2D start = pca2(x, n, d);
  double sd = 0;
  for (int i = 0; i < n; ++i) sd += double(start.xy[size_t(i) * 2]) * start.xy[size_t(i) * 2];
  sd = std::sqrt(sd / n);
  std::mt19937_64 rng(p.seed);
  std::normal_distribution<double> nd(0.0, 1e-6);
  std::vector<double> Y(size_t(n) * 2), G(size_t(n) * 2), U(size_t(n) * 2, 0.0), gains(size_t(n) * 2, 1.0);
  for (size_t i = 0; i < Y.size(); ++i) Y[i] = (sd > 0 ? start.xy[i] / sd * 1e-4 : 0.0) + nd(rng);
  const double lr = p.learning_rate > 0 ? p.learning_rate : std::max(n / p.exaggeration / 4.0, 50.0);
  std::vector<double> Q(size_t(n) * n);
  double kl = 0;
  for (int it = 0; it < p.iterations; ++it) {
    const double ex = it < p.exaggeration_iters ? p.exaggeration : 1.0;
    const double mom = it < p.exaggeration_iters ? 0.5 : 0.8;
    double qsum = 0;
    for (int i = 0; i < n; ++i) {
      Q[size_t(i) * n + i] = 0;
      for (int j = i + 1; j < n; ++j) {
        const double dx = Y[size_t(i) * 2] - Y[size_t(j) * 2], dy = Y[size_t(i) * 2 + 1] - Y[size_t(j) * 2 + 1];
        const double w = 1.0 / (1.0 + dx * dx + dy * dy);
        Q[size_t(i) * n + j] = Q[size_t(j) * n + i] = w;
        qsum += 2 * w;
      }
    }
    std::fill(G.begin(), G.end(), 0.0);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        if (i == j) continue;
        const double w = Q[size_t(i) * n + j];
        const double m = (ex * P[size_t(i) * n + j] - w / qsum) * w;
        G[size_t(i) * 2] += 4 * m * (Y[size_t(i) * 2] - Y[size_t(j) * 2]);
        G[size_t(i) * 2 + 1] += 4 * m * (Y[size_t(i) * 2 + 1] - Y[size_t(j) * 2 + 1]);
      }
    for (size_t k = 0; k < Y.size(); ++k) {
      gains[k] = (G[k] > 0) != (U[k] > 0) ? gains[k] + 0.2 : std::max(gains[k] * 0.8, 0.01);
      U[k] = mom * U[k] - lr * gains[k] * G[k];
      Y[k] += U[k];
    }
    // recentre
    double mx = 0, my = 0;
    for (int i = 0; i < n; ++i) {
      mx += Y[size_t(i) * 2];
      my += Y[size_t(i) * 2 + 1];
    }
    mx /= n;
    my /= n;
    for (int i = 0; i < n; ++i) {
      Y[size_t(i) * 2] -= mx;
      Y[size_t(i) * 2 + 1] -= my;
    }
    if (it == p.iterations - 1) {
      kl = 0;
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j)
          if (i != j) kl += P[size_t(i) * n + j] * std::log(P[size_t(i) * n + j] / std::max(Q[size_t(i) * n + j] / qsum, 1e-300));
    }
    e.iterations = it + 1;
  }
  for (size_t k = 0; k < Y.size(); ++k) e.xy[k] = float(Y[k]);
  e.kl = kl;
  return e;
}

}  // namespace outro::sink
