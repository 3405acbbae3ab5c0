// Host (float32) implementations of Backend ops: the encoder ops (layernorm, gelu, sectioned
// rotary, im2col for 1-D convolutions, row gather and row average pooling) and OutRo's ops. The CPU backend calls them directly; other backends fall back to them
// (download, compute, upload) until they have their own kernels.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"

namespace outro::host {

void layernorm(float* y, const float* x, int n, int d, const float* w, const float* b, float eps);
void gelu(float* y, const float* x, size_t n, bool tanh_approx);
void rope_sections(float* x, int n, int heads, int head_dim, const int32_t* pos, const int* sections, int n_sections,
                   const float* inv_freq);
// Output rows of im2col1d (checks the segments); throws Error on a bad segment list.
int im2col1d_rows(int kernel, int stride, int pad, const int* segments, int n_segments);
void im2col1d(float* cols, const float* x, int channels, int kernel, int stride, int pad, const int* segments,
              int n_segments);
void gather_rows(float* y, const float* x, int dim, const int32_t* idx, int n);
void scatter_add_rows(float* y, const float* x, int dim, const int32_t* idx, const float* scale, int n);
// Backend::moe_route's contract on host arrays: route[n, 2k] from logits[n, experts].
void moe_route(float* route, const float* logits, int n, int experts, int k, bool norm);
void avgpool_rows(float* y, const float* x, int n, int dim, int k);
// Φ_LLM's statistics of h[n, dim]: row_max[i] = max_c |h[i,c]|, and the ((n·dim − 1) / 2)-th
// smallest |h| (the lower median), found exactly by counting, returned.
float phi_stats(const float* h, int n, int dim, float* row_max);
// The same, given a bracket [lo, hi] of |h| bit patterns (a non-negative float's bits order like its
// value) thought to hold the median: exact whatever the bracket; a wrong one only costs the radix
// select over all of h. phi_stats takes its bracket from a sample. (Exposed for the tests.)
float phi_stats_bracket(const float* h, int n, int dim, float* row_max, uint32_t lo, uint32_t hi);
// OutRo's ops, with the contracts of Backend::phi_detect, outro_sets, masked_mean, gate_heads.
// phi_detect also writes the row maxima to row_max[n] when it is not null.
void phi_detect(float* rec, const float* h, int n, int dim, float abs_thr, float med_mul, float* row_max = nullptr);
void outro_sets(float* enh, float* done, float* cum, const float* rec, int n, bool enhance, bool once);
void masked_mean(float* out, const float* x, int n, int dim, const float* flags);
void gate_heads(float* z, int n, int heads, int kv_heads, int hd, const float* vbar, const float* excl, int excl_n,
                float gamma, float temp, bool rescale, float* counter);
// A weight as float32 on the host (from the checkpoint bytes it came from).
void weight_f32(const Weight& w, float* out);

}  // namespace outro::host
