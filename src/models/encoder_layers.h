// The pre-LayerNorm transformer layers of the audio towers (Whisper's, which Qwen2.5-Omni's audio
// tower is, and Qwen3-Omni's): LayerNorm, attention within segments with projection biases,
// LayerNorm, GELU MLP, each added to the residual stream, on the Backend's ops.
#pragma once
#include <string>
#include <vector>

#include "io/safetensors.h"

#include "kernels/backend.h"

namespace outro {

struct EncoderLayer {
  Weight ln1, ln1b, q, qb, k, kb, v, vb, o, ob, ln2, ln2b, fc1, fc1b, fc2, fc2b;  // kb empty: no k bias
};

// Layer l's tensors under `prefix` ("audio_tower.layers.{l}." names, Whisper's), of width D and MLP
// width F; the k projection's bias only when the checkpoint has one (`k_bias`).
EncoderLayer bind_encoder_layer(Backend& be, const WeightStore& s, const std::string& prefix, int l, int64_t D,
                                int64_t F, bool k_bias);

// x [n, D] in place through every layer; row r attends within its segment of `segments`
// (boundaries 0 = s0 < s1 < ... = n); F the MLP's width; buffers from S.
void run_encoder_layers(Backend& be, const std::vector<EncoderLayer>& layers, Buf x, int n, int D, int F, int heads,
                        const std::vector<int>& segments, bool tanh_gelu, ScopedBufs& S);

}  // namespace outro
