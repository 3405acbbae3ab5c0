// Builds the interventions a command line asks for.
#include <cstdlib>

#include "common.h"
#include "core/error.h"

namespace outro::cli {

const std::set<std::string> kInterventionFlags = {"ablate-heads"};

std::vector<std::unique_ptr<Intervention>> build_interventions(const Args& a, const Model& m) {
  std::vector<std::unique_ptr<Intervention>> out;
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
