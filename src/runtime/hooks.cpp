#include "runtime/hooks.h"

#include <algorithm>

#include "core/error.h"

namespace outro {

const char* hook_suffix(Hook h) {
  switch (h) {
    case Hook::ResidPre: return "hook_resid_pre";
    case Hook::Q: return "attn.hook_q";
    case Hook::K: return "attn.hook_k";
    case Hook::V: return "attn.hook_v";
    case Hook::Pattern: return "attn.hook_pattern";
    case Hook::Z: return "attn.hook_z";
    case Hook::AttnOut: return "hook_attn_out";
    case Hook::ResidMid: return "hook_resid_mid";
    case Hook::MlpOut: return "hook_mlp_out";
    case Hook::ResidPost: return "hook_resid_post";
    case Hook::Router: return "mlp.hook_router";
    case Hook::Experts: return "mlp.hook_experts";
    case Hook::kCount: break;
  }
  return "?";
}

std::string hook_name(int layer, Hook h) { return "blocks." + std::to_string(layer) + "." + hook_suffix(h); }

std::vector<std::string> all_hook_names(int layers) {
  std::vector<std::string> out{kHookEmbed};
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < kEveryLayerHooks; ++h) out.push_back(hook_name(l, Hook(h)));
  out.push_back(kHookLnFinal);
  return out;
}

std::vector<std::string> all_hook_names(const ModelConfig& c) {
  std::vector<std::string> out{kHookEmbed};
  for (int l = 0; l < c.layers; ++l)
    for (int h = 0; h < kEveryLayerHooks; ++h) {
      out.push_back(hook_name(l, Hook(h)));
      if (Hook(h) == Hook::ResidMid && c.moe_layer(l))
        for (Hook m : {Hook::Router, Hook::Experts}) out.push_back(hook_name(l, m));
    }
  out.push_back(kHookLnFinal);
  return out;
}

std::vector<std::string> moe_hook_names(const std::vector<int>& sparse_layers) {
  std::vector<std::string> out;
  for (int l : sparse_layers)
    for (Hook h : {Hook::Router, Hook::Experts}) out.push_back(hook_name(l, h));
  return out;
}

bool Recorder::wants(const std::string& name) const {
  return std::find(names_.begin(), names_.end(), name) != names_.end();
}

void Recorder::on(const HookEvent& e) {
  Entry* ent = nullptr;
  for (auto& [n, en] : entries_)
    if (n == e.name) ent = &en;
  size_t count = 1;
  for (auto d : e.shape) count *= size_t(d);
  if (!ent) {
    entries_.push_back({e.name, Entry{e.shape, std::vector<float>(e.data, e.data + count)}});
    return;
  }
  const bool pattern = e.name.size() > 12 && e.name.compare(e.name.size() - 12, 12, "hook_pattern") == 0;
  if (!pattern) {  // [n, ...]: append rows
    ent->data.insert(ent->data.end(), e.data, e.data + count);
    ent->shape[0] += e.shape[0];
    return;
  }
  // [H, n, keys]: grow to [H, n_old + n_new, keys_new], padding old rows with zeros (causal).
  const int64_t H = e.shape[0], n_old = ent->shape[1], k_old = ent->shape[2];
  const int64_t n_new = e.shape[1], k_new = e.shape[2];
  std::vector<float> merged(size_t(H * (n_old + n_new) * k_new), 0.f);
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t r = 0; r < n_old; ++r)
      std::copy_n(&ent->data[size_t((h * n_old + r) * k_old)], k_old, &merged[size_t((h * (n_old + n_new) + r) * k_new)]);
    for (int64_t r = 0; r < n_new; ++r)
      std::copy_n(e.data + (h * n_new + r) * k_new, k_new, &merged[size_t((h * (n_old + n_new) + n_old + r) * k_new)]);
  }
  ent->data = std::move(merged);
  ent->shape = {H, n_old + n_new, k_new};
}

const Recorder::Entry* Recorder::get(const std::string& name) const {
  for (const auto& [n, e] : entries_)
    if (n == name) return &e;
  return nullptr;
}

}  // namespace outro
