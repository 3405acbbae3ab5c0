// Builds the interventions a command line asks for.
#include <cstdlib>

#include "common.h"
#include "core/error.h"
#include "outro/outro.h"

namespace outro::cli {

const std::set<std::string> kInterventionFlags = {"ablate-heads", "strategy", "outro-config"};

namespace {

// --strategy NAME picks a preset (baseline, outro, outro-align-only, outro-sinkout-only);
// --outro-config FILE sets any parameter on top of it (a 'strategy' key in the file is the preset
// when --strategy is not given). Nothing is attached for baseline unless the file switches an
// edit on, so the baseline is the plain model.
std::unique_ptr<Intervention> build_outro(const Args& a, const Model& m) {
  if (!a.has("strategy") && !a.has("outro-config")) return nullptr;
  const bool explicit_strategy = a.has("strategy");
  if (explicit_strategy && a.str("strategy").empty()) fail("--strategy: expected a strategy name, found ''");
  OutroParams p = outro_preset(explicit_strategy ? a.str("strategy") : "outro");
  std::string where = "--strategy " + p.strategy;
  if (a.has("outro-config")) {
    where = a.str("outro-config");
    p = load_outro_config(where, p, explicit_strategy);
  }
  apply_model_thresholds(p, read_model_thresholds(m.dir()));
  validate_outro(p, m.config(), where);
  if (p.strategy == "baseline" && !outro_active(p)) return nullptr;
  return std::make_unique<OutRo>(std::move(p));
}

}  // namespace

std::vector<std::unique_ptr<Intervention>> build_interventions(const Args& a, const Model& m) {
  std::vector<std::unique_ptr<Intervention>> out;
  if (auto o = build_outro(a, m)) out.push_back(std::move(o));
  if (a.has("ablate-heads")) {
    std::vector<HeadAblation::Target> t;
    for (const auto& item : split(a.str("ablate-heads"), ',')) {
      auto parts = split(item, ':');
      char* e1 = nullptr;
      char* e2 = nullptr;
      if (parts.size() != 2) fail("--ablate-heads: expected LAYER:HEAD[,LAYER:HEAD...], found '", item, "'");
      long l = std::strtol(parts[0].c_str(), &e1, 10), h = std::strtol(parts[1].c_str(), &e2, 10);
      if (*e1 || *e2 || parts[0].empty() || parts[1].empty() || l < 0 || l >= m.config().layers || h < 0 ||
          h >= m.config().heads)
        fail("--ablate-heads: '", item, "' is not a layer in [0, ", m.config().layers, ") and head in [0, ",
             m.config().heads, ")");
      t.push_back({int(l), int(h)});
    }
    out.push_back(std::make_unique<HeadAblation>(t));
  }
  return out;
}

}  // namespace outro::cli
