#include "media/audio_features.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace outro::media {

namespace {

double hz_to_mel(double f) {
  const double min_log_hz = 1000.0, min_log_mel = 15.0, logstep = 27.0 / std::log(6.4);
  if (f >= min_log_hz) return min_log_mel + std::log(f / min_log_hz) * logstep;
  return 3.0 * f / 200.0;
}
double mel_to_hz(double m) {
  const double min_log_hz = 1000.0, min_log_mel = 15.0, logstep = std::log(6.4) / 27.0;
  if (m >= min_log_mel) return min_log_hz * std::exp(logstep * (m - min_log_mel));
  return 200.0 * m / 3.0;
}

void fft_rec(std::complex<double>* x, size_t n, size_t stride, std::complex<double>* out,
             std::vector<std::complex<double>>& scratch) {
  if (n == 1) {
    out[0] = x[0];
    return;
  }
  size_t p = 2;
  while (p * p <= n && n % p) ++p;
  if (n % p) p = n;  // prime length: direct DFT
  const size_t m = n / p;
  if (m == 1) {
    for (size_t k = 0; k < n; ++k) {
      std::complex<double> s = 0;
      for (size_t j = 0; j < n; ++j) s += x[j * stride] * std::polar(1.0, -2.0 * M_PI * double(j * k % n) / double(n));
      out[k] = s;
    }
    return;
  }
  // p sub-transforms of length m over the decimated inputs
  std::vector<std::complex<double>> sub(n);
  for (size_t r = 0; r < p; ++r) fft_rec(x + r * stride, m, stride * p, sub.data() + r * m, scratch);
  for (size_t k = 0; k < m; ++k)
    for (size_t q = 0; q < p; ++q) {
      const size_t kk = k + q * m;
      std::complex<double> s = 0;
      for (size_t r = 0; r < p; ++r) s += sub[r * m + k] * std::polar(1.0, -2.0 * M_PI * double(r * kk % n) / double(n));
      out[kk] = s;
    }
}

}  // namespace

void fft(std::vector<std::complex<double>>& x) {
  if (x.size() <= 1) return;
  std::vector<std::complex<double>> out(x.size()), scratch;
  fft_rec(x.data(), x.size(), 1, out.data(), scratch);
  x.swap(out);
}

std::vector<double> mel_filters(int n_mels, int n_fft, int rate) {
  const int nf = n_fft / 2 + 1;
  std::vector<double> fft_f(static_cast<size_t>(nf)), pts(static_cast<size_t>(n_mels + 2));
  for (int i = 0; i < nf; ++i) fft_f[size_t(i)] = double(rate) / 2 * i / (nf - 1);
  const double mmin = hz_to_mel(0), mmax = hz_to_mel(rate / 2.0);
  for (int i = 0; i < n_mels + 2; ++i) pts[size_t(i)] = mel_to_hz(mmin + (mmax - mmin) * i / (n_mels + 1));
  std::vector<double> fb(size_t(nf) * n_mels, 0.0);
  for (int i = 0; i < nf; ++i)
    for (int m = 0; m < n_mels; ++m) {
      const double lo = pts[size_t(m)], c = pts[size_t(m + 1)], hi = pts[size_t(m + 2)];
      const double down = (fft_f[size_t(i)] - lo) / (c - lo);
      const double up = (hi - fft_f[size_t(i)]) / (hi - c);
      double v = std::max(0.0, std::min(down, up));
      v *= 2.0 / (hi - lo);  // slaney area normalisation
      fb[size_t(i) * n_mels + m] = v;
    }
  return fb;
}

int audio_tokens(int n_frames) {
  const int after_cnn = (n_frames - 1) / 2 + 1;
  return (after_cnn - 2) / 2 + 1;
}

MelFeatures whisper_log_mel(const float* samples, size_t n, const MelParams& p) {
  if (n == 0) fail("audio: zero-length clip (no samples)");
  const size_t L = p.max_samples > 0 ? p.max_samples : n;  // the padded signal: samples, then zeros, up to L
  n = std::min(n, L);
  const int nf = p.n_fft / 2 + 1, half = p.n_fft / 2;
  // The STFT's centred frames reflect the signal at both ends, which needs more than n_fft / 2 samples.
  if (L <= size_t(half))
    fail("audio: a clip of ", n, " samples (", 1000.0 * double(n) / p.rate, " ms) is too short for Whisper's features: "
         "expected more than ", half, " samples (", 1000.0 * half / p.rate, " ms at ", p.rate, " Hz)");
  const int total_frames = int(L / size_t(p.hop));  // 1 + L / hop frames, the last dropped
  const int valid = std::min(total_frames, int((n + size_t(p.hop) - 1) / size_t(p.hop)));
  // Frames past `reach` see only zeros (mel 0 -> log10(1e-10) = -10).
  const int reach = std::min<int>(total_frames, int((n + size_t(half)) / size_t(p.hop)) + 2);
  auto sample = [&](long long t) -> double {  // the padded signal with reflect padding at both ends
    if (t < 0) t = -t;
    if (t >= (long long)L) t = 2 * ((long long)L - 1) - t;
    return t < (long long)n ? double(samples[t]) : 0.0;
  };
  std::vector<double> window(size_t(p.n_fft));
  for (int i = 0; i < p.n_fft; ++i) window[size_t(i)] = 0.5 - 0.5 * std::cos(2.0 * M_PI * i / p.n_fft);  // periodic Hann
  const std::vector<double> fb = mel_filters(p.n_mels, p.n_fft, p.rate);
  std::vector<float> logmel(size_t(p.n_mels) * size_t(reach));
  std::vector<std::complex<double>> buf(size_t(p.n_fft));
  std::vector<double> power(static_cast<size_t>(nf));
  double mx = -1e30;
  for (int f = 0; f < reach; ++f) {
    const long long c = (long long)f * p.hop - half;
    for (int i = 0; i < p.n_fft; ++i) buf[size_t(i)] = sample(c + i) * window[size_t(i)];
    fft(buf);
    for (int k = 0; k < nf; ++k) power[size_t(k)] = std::norm(buf[size_t(k)]);
    for (int m = 0; m < p.n_mels; ++m) {
      double s = 0;
      for (int k = 0; k < nf; ++k) s += fb[size_t(k) * p.n_mels + m] * power[size_t(k)];
      const double lg = std::log10(std::max(s, 1e-10));
      logmel[size_t(m) * reach + f] = float(lg);
      mx = std::max(mx, lg);
    }
  }
  if (reach < total_frames) mx = std::max(mx, -10.0);
  const float floor_v = float(mx - 8.0);
  MelFeatures out;
  out.n_mels = p.n_mels;
  out.n_frames = valid;
  out.data.resize(size_t(p.n_mels) * valid);
  for (int m = 0; m < p.n_mels; ++m)
    for (int f = 0; f < valid; ++f)
      out.data[size_t(m) * valid + f] = (std::max(logmel[size_t(m) * reach + f], floor_v) + 4.f) / 4.f;
  return out;
}

}  // namespace outro::media
