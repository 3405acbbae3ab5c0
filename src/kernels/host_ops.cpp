#include "kernels/host_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/threadpool.h"
#include "io/safetensors.h"

namespace outro::host {

void weight_f32(const Weight& w, float* out) {
  if (!w.src) fail("weight_f32: weight has no checkpoint tensor");
  to_f32(w.src->dtype, w.src->data, out, size_t(w.rows * w.cols));
}

void layernorm(float* y, const float* x, int n, int d, const float* w, const float* b, float eps) {
  for (int i = 0; i < n; ++i) {
    const float* xr = x + size_t(i) * d;
    float* yr = y + size_t(i) * d;
    double s = 0;
    for (int c = 0; c < d; ++c) s += xr[c];
    const float mean = float(s / d);
    double v = 0;
    for (int c = 0; c < d; ++c) {
      const double t = double(xr[c]) - mean;
      v += t * t;
    }
    const float inv = 1.f / std::sqrt(float(v / d) + eps);
    for (int c = 0; c < d; ++c) yr[c] = (xr[c] - mean) * inv * w[c] + (b ? b[c] : 0.f);
  }
}

void gelu(float* y, const float* x, size_t n, bool tanh_approx) {
  if (tanh_approx) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    for (size_t i = 0; i < n; ++i) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.f + std::tanh(k * (v + 0.044715f * v * v * v)));
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.f + std::erf(v * 0.7071067811865476f));
    }
  }
}

void rope_sections(float* x, int n, int heads, int hd, const int32_t* pos, const int* sections, int n_sections,
                   const float* inv_freq) {
  const int half = hd / 2;
  std::vector<int> sec_of(size_t(half), n_sections - 1);
  int c0 = 0;
  for (int s = 0; s < n_sections; ++s) {
    for (int c = c0; c < std::min(half, c0 + sections[s]); ++c) sec_of[size_t(c)] = s;
    c0 += sections[s];
  }
  if (c0 != half) fail("rope_sections: sections sum to ", c0, ", expected head_dim / 2 = ", half);
  for (int i = 0; i < n; ++i) {
    for (int c = 0; c < half; ++c) {
      const float ang = float(pos[size_t(sec_of[size_t(c)]) * n + i]) * inv_freq[c];
      const float cs = std::cos(ang), sn = std::sin(ang);
      for (int h = 0; h < heads; ++h) {
        float* v = x + (size_t(i) * heads + h) * hd;
        const float a = v[c], b = v[c + half];
        v[c] = a * cs - b * sn;
        v[c + half] = b * cs + a * sn;
      }
    }
  }
}

int im2col1d_rows(int kernel, int stride, int pad, const int* seg, int nseg) {
  if (kernel <= 0 || stride <= 0 || pad < 0) fail("im2col1d: bad kernel ", kernel, " / stride ", stride, " / pad ", pad);
  int rows = 0;
  for (int s = 0; s < nseg; ++s) {
    const int len = seg[s + 1] - seg[s];
    if (len < 0) fail("im2col1d: segments must ascend, found ", seg[s], " then ", seg[s + 1]);
    const int out = len + 2 * pad >= kernel ? (len + 2 * pad - kernel) / stride + 1 : 0;
    rows += out;
  }
  return rows;
}

void im2col1d(float* cols, const float* x, int C, int K, int stride, int pad, const int* seg, int nseg) {
  size_t r = 0;
  for (int s = 0; s < nseg; ++s) {
    const int b = seg[s], len = seg[s + 1] - seg[s];
    const int out = len + 2 * pad >= K ? (len + 2 * pad - K) / stride + 1 : 0;
    for (int j = 0; j < out; ++j, ++r) {
      float* row = cols + r * size_t(C) * K;
      for (int k = 0; k < K; ++k) {
        const int t = j * stride + k - pad;
        if (t < 0 || t >= len) {
          for (int c = 0; c < C; ++c) row[size_t(c) * K + k] = 0.f;
        } else {
          const float* xr = x + size_t(b + t) * C;
          for (int c = 0; c < C; ++c) row[size_t(c) * K + k] = xr[c];
        }
      }
    }
  }
}

void gather_rows(float* y, const float* x, int dim, const int32_t* idx, int n) {
  for (int i = 0; i < n; ++i) std::memcpy(y + size_t(i) * dim, x + size_t(idx[i]) * dim, size_t(dim) * 4);
}

void avgpool_rows(float* y, const float* x, int n, int dim, int k) {
  const int m = n / k;
  for (int i = 0; i < m; ++i) {
    float* yr = y + size_t(i) * dim;
    for (int c = 0; c < dim; ++c) {
      float s = 0.f;
      for (int j = 0; j < k; ++j) s += x[(size_t(i) * k + j) * dim + c];
      yr[c] = s / float(k);
    }
  }
}

}  // namespace outro::host

namespace outro {

// Portable defaults of Backend's encoder ops: through host memory.
namespace {
std::vector<float> down(Backend& be, const Buf& b, size_t n) {
  std::vector<float> h(n);
  be.download(b, 0, h.data(), n);
  return h;
}
}  // namespace

void Backend::layernorm(Buf y, const Buf& x, int n, const Weight& w, const Weight* bias, float eps) {
  const int d = int(w.cols);
  auto hx = down(*this, x, size_t(n) * d);
  std::vector<float> g(static_cast<size_t>(d)), b;
  host::weight_f32(w, g.data());
  if (bias && *bias) {
    b.resize(size_t(d));
    host::weight_f32(*bias, b.data());
  }
  std::vector<float> hy(hx.size());
  host::layernorm(hy.data(), hx.data(), n, d, g.data(), b.empty() ? nullptr : b.data(), eps);
  upload(y, 0, hy.data(), hy.size());
}

void Backend::gelu(Buf y, const Buf& x, size_t n, bool tanh_approx) {
  auto h = down(*this, x, n);
  host::gelu(h.data(), h.data(), n, tanh_approx);
  upload(y, 0, h.data(), n);
}

void Backend::rope_sections(Buf x, int n, int heads, int hd, const int32_t* pos, const int* sections, int n_sections,
                            const float* inv_freq) {
  auto h = down(*this, x, size_t(n) * heads * hd);
  host::rope_sections(h.data(), n, heads, hd, pos, sections, n_sections, inv_freq);
  upload(x, 0, h.data(), h.size());
}

void Backend::im2col1d(Buf cols, const Buf& x, int C, int K, int stride, int pad, const int* seg, int nseg) {
  const int rows = host::im2col1d_rows(K, stride, pad, seg, nseg);
  auto h = down(*this, x, size_t(seg[nseg]) * C);
  std::vector<float> o(size_t(rows) * C * K);
  host::im2col1d(o.data(), h.data(), C, K, stride, pad, seg, nseg);
  upload(cols, 0, o.data(), o.size());
}

void Backend::gather_rows(Buf y, const Buf& x, int dim, const int32_t* idx, int n) {
  auto h = down(*this, x, x.n);
  std::vector<float> o(size_t(n) * dim);
  host::gather_rows(o.data(), h.data(), dim, idx, n);
  upload(y, 0, o.data(), o.size());
}

int32_t Backend::argmax(const Buf& x, size_t off, int n) {
  if (n <= 0) fail("argmax: expected at least one value, found ", n);
  std::vector<float> h(static_cast<size_t>(n));
  download(x, off, h.data(), h.size());
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (h[size_t(i)] > h[size_t(best)]) best = i;
  return best;
}

void Backend::avgpool_rows(Buf y, const Buf& x, int n, int dim, int k) {
  auto h = down(*this, x, size_t(n) * dim);
  std::vector<float> o(size_t(n / k) * dim);
  host::avgpool_rows(o.data(), h.data(), n, dim, k);
  upload(y, 0, o.data(), o.size());
}

}  // namespace outro
