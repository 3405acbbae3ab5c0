#include "runtime/intervention.h"

#include <algorithm>

#include "io/config.h"

namespace outro {

void HeadAblation::z(ForwardCtx& ctx, int layer, Buf zb) {
  const int H = ctx.cfg->heads, hd = ctx.cfg->head_dim;
  for (const auto& t : targets_)
    if (t.layer == layer) ctx.be->zero_cols(zb, ctx.n, H * hd, t.head * hd, hd);
}

void SinkDimZeroing::cached_keys(ForwardCtx& ctx, int layer, Buf kcache) {
  if (!layers_.empty() && std::find(layers_.begin(), layers_.end(), layer) == layers_.end()) return;
  for (int s : sinks_)
    if (s >= ctx.past && s < ctx.past + ctx.n)  // only when the sink's key is first written
      ctx.be->zero_top_dim(kcache, s, ctx.cfg->kv_heads, ctx.cfg->head_dim);
}

}  // namespace outro
