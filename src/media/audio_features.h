// Whisper log-mel features (the feature extractor of Qwen2.5-Omni's audio tower): 16 kHz mono,
// 25 ms Hann window (n_fft 400), hop 160, slaney mel filters, log10, dynamic range 8, (x + 4) / 4,
// over the clip zero-padded to a length: 30 s for Qwen2.5-Omni (longer clips cut there, as its
// processor does), the longest clip of the prompt for Qwen3-Omni (padding=True, truncation=False).
#pragma once
#include <complex>
#include <cstddef>
#include <vector>

namespace outro::media {

struct MelFeatures {
  int n_mels = 0;
  int n_frames = 0;          // valid frames: ceil(samples / hop), at most padded length / hop
  std::vector<float> data;   // [n_mels, n_frames]
};

struct MelParams {
  int n_mels = 128;
  int n_fft = 400;
  int hop = 160;
  int rate = 16000;
  // The padded length L (longer clips are cut to it): 30 s; 0: the clip's own length. A padded
  // length that is not a multiple of hop gives L / hop frames (the STFT's last frame is dropped),
  // one fewer than ceil(L / hop), as the reference's attention mask is trimmed to them.
  size_t max_samples = 480000;
};

MelFeatures whisper_log_mel(const float* samples, size_t n, const MelParams& p = {});

// Slaney-normalised mel filter bank [n_fft / 2 + 1, n_mels] (row-major), 0 .. rate / 2 Hz.
std::vector<double> mel_filters(int n_mels, int n_fft, int rate);

// In-place FFT of any length (mixed radix, recursive); exposed for tests.
void fft(std::vector<std::complex<double>>& x);

// Tokens the audio tower makes of n mel frames: ((n - 1) / 2 + 1 - 2) / 2 + 1.
int audio_tokens(int n_frames);

}  // namespace outro::media
