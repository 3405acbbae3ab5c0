#include "report/sink_report.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "core/error.h"
#include "report/html.h"
#include "report/svg.h"

namespace outro::report {

using nlohmann::json;

namespace {

std::vector<double> dv(const json& j) {
  std::vector<double> v;
  if (!j.is_array()) return v;
  for (const auto& e : j) v.push_back(e.is_number() ? e.get<double>() : std::nan(""));
  return v;
}

std::vector<double> iota_d(size_t n) {
  std::vector<double> v(n);
  std::iota(v.begin(), v.end(), 0.0);
  return v;
}

std::string set_str(const json& s) {
  if (!s.is_array() || s.empty()) return "-";
  std::string o;
  size_t k = 0;
  for (const auto& e : s) {
    if (k++) o += ",";
    if (k > 12) {
      o += "... (" + std::to_string(s.size()) + ")";
      break;
    }
    o += std::to_string(e.get<int>());
  }
  return o;
}

std::string num(const json& j) { return j.is_number() ? fmt_num(j.get<double>()) : "n/a"; }

const char* metric_label(const std::string& m) {
  return m == "accuracy" ? "accuracy (multiple choice)" : "mean log-likelihood per answer token (nats)";
}

}  // namespace

std::string sink_report_html(const json& r) {
  const json& model = r.at("model");
  const int L = model.at("layers").get<int>(), H = model.at("heads").get<int>();
  HtmlPage page("Attention-sink analysis: " + model.value("dir", std::string("model")));

  // ---- summary
  page.heading(2, "Summary", "summary");
  {
    const json& f = r.at("fig1a");
    const json& ds = r.at("d_sink");
    std::vector<std::vector<std::string>> rows;
    rows.push_back({"model", model.value("architecture", "") + ", " + std::to_string(L) + " layers, " + std::to_string(H) +
                                 " heads (" + std::to_string(model.value("kv_heads", 0)) + " KV), head size " +
                                 std::to_string(model.value("head_dim", 0)) + ", hidden " +
                                 std::to_string(model.value("hidden_size", 0))});
    rows.push_back({"prompts", std::to_string(r.at("prompts").value("count", 0)) + " (mean " + num(f.at("mean_tokens")) + " tokens)"});
    rows.push_back({"Φ_LLM sinks (all layers, all prompts)", std::to_string(f.value("phi_llm_total", 0)) + ", of which token 0: " +
                                                          std::to_string(f.value("phi_llm_total_first_token", 0))});
    rows.push_back({"D_sink (Φ_VLM sink dimensions)", set_str(ds.at("dims")) + " (" + ds.value("rule", "") + ")"});
    if (f.contains("tokens_by_modality")) {  // media prompts: where the tokens and the sinks are
      const json& t = f.at("tokens_by_modality");
      if (t.value("image", 0) + t.value("video", 0) + t.value("audio", 0) > 0) {
        auto by = [](const json& m) {
          std::string s;
          for (const char* k : {"text", "image", "video", "audio"})
            if (m.value(k, 0) > 0) s += std::string(s.empty() ? "" : ", ") + k + " " + std::to_string(m.value(k, 0));
          return s.empty() ? std::string("none") : s;
        };
        rows.push_back({"tokens by modality (all prompts)", by(t)});
        rows.push_back({"Φ_LLM / Φ_VLM sinks by modality", by(f.value("phi_llm_by_modality", json::object())) + " / " +
                                                              by(f.value("phi_vlm_by_modality", json::object()))});
      }
    }
    if (r.contains("head_focus")) {
      const json& hf = r.at("head_focus");
      double first = 0;
      int cnt = 0;
      for (const auto& row : hf.at("first_token"))
        for (const auto& v : row) first += v.get<double>(), ++cnt;
      rows.push_back({"heads near uniform (row entropy ≥ " + num(hf.at("near_uniform_threshold")) + " of an even spread's)",
                      std::to_string(hf.value("near_uniform_heads", 0)) + " of " + std::to_string(L * H)});
      rows.push_back({"attention on token 0 (mean over heads and rows ≥ 1)",
                      fmt_num(cnt ? first / cnt : 0.0) + " (an even spread: " + num(hf.at("first_token_uniform")) + ")"});
    }
    rows.push_back({"sink set of the scores", r.at("sink_scores").value("sink_set", "") + " (layers that fell back to token 0: " +
                                                  std::to_string(r.at("sink_scores").value("fallback_layers", 0)) + ")"});
    if (r.at("prompts").contains("baseline_metric"))
      rows.push_back({"task metric (no head ablated)", std::string(metric_label(r.at("prompts").value("metric", ""))) + ": " +
                                                          num(r.at("prompts").at("baseline_metric").at(
                                                              r.at("prompts").value("metric", "loglik")))});
    page.table({"", ""}, rows);
    for (const auto& w : r.value("warnings", json::array())) page.raw("<p class=\"warn\">⚠ " + xml_escape(w.get<std::string>()) + "</p>");
    const json& p = r.at("params");
    page.paragraph("Criteria: Φ_LLM (max|h| ≥ " + num(p["phi_llm"]["tau_abs"]) + " and ≥ " + num(p["phi_llm"]["tau_rel"]) +
                   " × median|h|, on hook_resid_pre of each layer; thresholds from " +
                   p["phi_llm"].value("from", std::string("the command")) + "); Φ_VLM (max over D_sink of |h[c]|/rms(h) ≥ " +
                   num(p["phi_vlm"]["tau"]) + "; D_sink = channels where token 0 has |h[c]|/rms ≥ " +
                   num(p["phi_vlm"]["dim_tau"]) + " at some layer); attention criterion (mean incoming attention > " +
                   num(p["attention"]["eps"]) + " in some head of the layer).");
  }

  // ---- Fig. 1a
  page.heading(2, "Sink tokens per layer (Fig. 1a)", "fig1a");
  {
    const json& f = r.at("fig1a");
    Axes a;
    a.title = "Sink tokens per layer";
    a.xlabel = "layer (input of the layer: hook_resid_pre)";
    a.ylabel = "sink tokens (mean over prompts)";
    a.integer_x = true;
    auto x = iota_d(size_t(L));
    std::vector<Series> s = {{"Φ_VLM", x, dv(f["phi_vlm"])}, {"Φ_LLM", x, dv(f["phi_llm"])},
                             {"attention (any head)", x, dv(f["attention"])}};
    s[2].dashed = true;
    page.figure(line_chart(a, s), "Number of tokens each criterion marks as a sink at each layer, averaged over the prompts. "
                                  "The paper finds Φ_VLM marking many tokens in deep layers while Φ_LLM stays sparse.");
    Axes b;
    b.title = "Largest activation per layer";
    b.xlabel = "layer";
    b.ylabel = "|h| (mean over prompts)";
    b.integer_x = true;
    page.figure(line_chart(b, {{"max |h| of token 0", x, dv(f["first_max_abs"])},
                               {"max |h| of the other tokens", x, dv(f["other_max_abs"])},
                               {"median |h|", x, dv(f["median_abs"])}}),
                "Massive activations (the quantity behind Φ_LLM): the largest |h[c]| of the first token, of every other "
                "token, and the median over all tokens and channels.");
    // Sets of the first prompt.
    const json& p0 = r.at("per_prompt").at(0);
    std::vector<std::vector<std::string>> rows;
    for (int l = 0; l < L; ++l) {
      const json& ly = p0["layers"][size_t(l)];
      rows.push_back({std::to_string(l), set_str(ly["phi_llm"]), set_str(ly["phi_vlm"]), set_str(ly["attention"]),
                      num(ly["first_max_abs"]), num(ly["other_max_abs"]), num(ly["median_abs"])});
    }
    page.paragraph("Sink positions per layer in the first prompt (" + p0.value("id", "") + ", " +
                   std::to_string(p0.value("n_tokens", 0)) + " tokens):");
    page.table({"layer", "Φ_LLM", "Φ_VLM", "attention", "max|h| token 0", "max|h| others", "median|h|"}, rows);
  }

  // A [layer][head] matrix of values in [0, 1] as a heatmap.
  auto layer_head_map = [&](const json& matrix, const std::string& title, const std::string& caption) {
    std::vector<std::vector<double>> m;
    for (const auto& row : matrix) m.push_back(dv(row));
    std::vector<std::string> cols, rows;
    for (int h = 0; h < H; ++h) cols.push_back(std::to_string(h));
    for (int l = 0; l < L; ++l) rows.push_back(std::to_string(l));
    Axes a;
    a.title = title;
    a.xlabel = "head";
    a.ylabel = "layer";
    a.width = std::clamp(120 + 40 * H, 360, 900);
    a.height = std::clamp(90 + 28 * L, 220, 700);
    page.figure(heatmap(a, m, cols, rows, true, 0.0, 1.0), caption);
  };

  // ---- sink scores
  page.heading(2, "Sink score of every head", "scores");
  layer_head_map(r.at("sink_scores").at("scores"), "Sink score (attention mass on the sink set)",
                 "Mean over prompts and non-sink query rows of the attention each head puts on its layer's sink set (" +
                     r.at("sink_scores").value("sink_set", "") + ").");

  // ---- focus of every head
  if (r.contains("head_focus")) {
    page.heading(2, "How focused every head is", "focus");
    const json& hf = r.at("head_focus");
    layer_head_map(hf.at("entropy_ratio"), "Row entropy / even spread's",
        "Mean over prompts and query rows i ≥ 1 of the entropy of a head's attention row divided by ln(i + 1), the "
        "entropy of an even spread over the keys it may see: 1 = attends everywhere alike, 0 = one key. Trained "
        "models' sink heads are focused (low); a model whose heads are all near 1 has no use for a sink.");
    layer_head_map(hf.at("first_token"), "Attention on token 0",
        "Mean over prompts and query rows i ≥ 1 of the attention each head puts on the first token (an even spread "
        "puts " + num(hf.at("first_token_uniform")) + " there).");
  }

  // ---- Fig. 2
  if (r.contains("pruning")) {
    page.heading(2, "Head pruning: sink-score order vs random (Fig. 2)", "fig2");
    const json& p = r.at("pruning");
    auto x = dv(p["steps"]);
    std::vector<Series> s;
    for (const auto& rr : p["random"]) {
      Series e{"random (seed " + std::to_string(rr["seed"].get<uint64_t>()) + ")", x, dv(rr["value"])};
      e.color = "#999999";
      e.width = 1;
      e.opacity = 0.7;
      e.markers = false;
      e.legend = false;
      s.push_back(e);
    }
    Series mean{"random (mean of " + std::to_string(p["random"].size()) + " seeds)", x,
                dv(p["random_mean"])};
    mean.color = "#555555";
    mean.dashed = true;
    s.push_back(mean);
    Series by{"by sink score (highest first)", x, dv(p["by_sink_score"]["value"])};
    by.color = palette(1);
    s.push_back(by);
    Axes a;
    a.title = "Task metric as heads are pruned";
    a.xlabel = "heads ablated";
    a.ylabel = p.value("metric", "") == "accuracy" ? "accuracy" : "log-likelihood / token";
    a.integer_x = true;
    a.width = 860;
    page.figure(line_chart(a, s), std::string("Heads are ablated cumulatively (output zeroed before o_proj) in order of sink "
                                              "score (red) or in random orders (grey: one line per seed, dashed: their mean); metric: ") +
                                      metric_label(p.value("metric", "")) + ".");
  }

  // ---- Fig. 3
  if (r.contains("single_head")) {
    page.heading(2, "Removing one head at a time (Fig. 3)", "fig3");
    const json& sh = r.at("single_head");
    Points imp{"removal improves", {}, {}, {}, palette(2), 4};
    Points hurt{"removal hurts", {}, {}, {}, palette(1), 4};
    Points same{"no change", {}, {}, {}, "#999999", 4};
    for (const auto& h : sh["heads"]) {
      const double d = h["delta"].get<double>();
      Points& t = d > 0 ? imp : d < 0 ? hurt : same;
      t.x.push_back(h["sink_score"].get<double>());
      t.y.push_back(d);
      t.labels.push_back("L" + std::to_string(h["layer"].get<int>()) + "H" + std::to_string(h["head"].get<int>()) +
                         ": score " + fmt_num(h["sink_score"].get<double>()) + ", Δ " + fmt_num(d));
    }
    std::vector<Points> sets;
    for (auto* p : {&imp, &hurt, &same})
      if (!p->x.empty()) sets.push_back(*p);
    Axes a;
    a.title = "Effect of removing a single head vs its sink score";
    a.xlabel = "sink score of the head";
    a.ylabel = "Δ metric when removed";
    a.hlines = {0.0};
    a.width = 720;
    page.figure(scatter_chart(a, sets), "Each point is one head: its sink score and the change of the task metric (" +
                                            std::string(metric_label(sh.value("metric", ""))) +
                                            ") when it alone is ablated. Baseline " + num(sh["baseline"]) + ".");
    if (sh.value("metric", "") == "accuracy") {  // accuracy moves in steps; the log-likelihood of the answer shows more
      Points up{"log-likelihood up", {}, {}, {}, palette(2), 4}, down{"log-likelihood down", {}, {}, {}, palette(1), 4};
      for (const auto& h : sh["heads"]) {
        const double d = h.value("delta_loglik", 0.0);
        Points& t = d >= 0 ? up : down;
        t.x.push_back(h["sink_score"].get<double>());
        t.y.push_back(d);
        t.labels.push_back("L" + std::to_string(h["layer"].get<int>()) + "H" + std::to_string(h["head"].get<int>()) + ": Δ " + fmt_num(d));
      }
      Axes b = a;
      b.title = "Same heads: change of the correct option's log-likelihood";
      b.ylabel = "Δ log-likelihood / token";
      page.figure(scatter_chart(b, {up, down}), "The change of the mean log-probability per token of the correct option when "
                                                "each head alone is ablated.");
    }
    auto top = [&](const json& list) {
      std::vector<std::vector<std::string>> rows;
      for (size_t i = 0; i < list.size() && i < 8; ++i)
        rows.push_back({std::to_string(list[i]["layer"].get<int>()) + "." + std::to_string(list[i]["head"].get<int>()),
                        num(list[i]["sink_score"]), num(list[i]["delta"])});
      return rows;
    };
    page.paragraph(std::to_string(sh["improves"].size()) + " heads improve the metric when removed, " +
                   std::to_string(sh["hurts"].size()) + " hurt it. Largest of each:");
    page.raw("<div class=\"grid\">");
    page.table({"improves: layer.head", "sink score", "Δ"}, top(sh["improves"]));
    page.table({"hurts: layer.head", "sink score", "Δ"}, top(sh["hurts"]));
    page.raw("</div>");
  }

  // ---- Fig. 4
  {
    page.heading(2, "Geometry of sink keys (Fig. 4)", "fig4");
    const json& g = r.at("geometry");
    const json& pl = g.at("per_layer");
    std::vector<std::string> cats;
    for (int l = 0; l < L; ++l) cats.push_back(std::to_string(l));
    Axes a;
    a.title = "(a) Key and value norms";
    a.xlabel = "layer";
    a.ylabel = "mean L2 norm per KV head";
    a.width = 860;
    page.figure(bar_chart(a, cats,
                          {{"key, sinks", {}, dv(pl["key_norm_sink"]), palette(1)},
                           {"key, other tokens", {}, dv(pl["key_norm_other"]), palette(0)},
                           {"value, sinks", {}, dv(pl["value_norm_sink"]), "#f4a3a3"},
                           {"value, other tokens", {}, dv(pl["value_norm_other"]), "#9ec5e8"}}),
                "Norms of the keys and values (hook_k, hook_v, after RoPE for keys) of the sink tokens vs the other tokens.");
    const int hd = model.value("head_dim", 0);
    Axes b;
    b.title = "(b) Per-dimension |k| at layer " + std::to_string(g["layer"].get<int>()) + ", KV head " +
              std::to_string(g["kv_head"].get<int>());
    b.xlabel = "key dimension";
    b.ylabel = "mean |k[c]|";
    b.width = 860;
    std::vector<std::string> dims;
    for (int d = 0; d < hd; ++d) dims.push_back(std::to_string(d));
    page.figure(bar_chart(b, dims, {{"sink keys", {}, dv(g["profile_sink"]), palette(1)},
                                    {"other keys", {}, dv(g["profile_other"]), palette(0)}}),
                "Activation profile of the sink keys over the head's dimensions (mean |k[c]|) against the other keys; the "
                "largest sink-key dimension is " +
                    std::to_string(g.value("profile_top_dim", 0)) + ". Head chosen by " + g.value("chosen_by", "") + ".");
    const json& e = g.at("embedding");
    auto kinds = e["kind"];
    auto scatter_of = [&](const json& xy, const std::string& title, const std::string& xl, const std::string& yl) {
      Points q{"queries (head " + std::to_string(g["head"].get<int>()) + ")", {}, {}, {}, palette(0), 2.5, 0.6};
      Points s{"sink keys", {}, {}, {}, palette(1), 5, 0.95};
      Points o{"other keys", {}, {}, {}, "#7f7f7f", 2.5, 0.6};
      for (size_t i = 0; i < kinds.size(); ++i) {
        Points& t = kinds[i] == 0 ? q : kinds[i] == 1 ? s : o;
        t.x.push_back(xy[2 * i].get<double>());
        t.y.push_back(xy[2 * i + 1].get<double>());
        t.labels.push_back("prompt " + std::to_string(e["prompt"][i].get<int>()) + ", position " +
                           std::to_string(e["pos"][i].get<int>()));
      }
      Axes c;
      c.title = title;
      c.xlabel = xl;
      c.ylabel = yl;
      c.width = 620;
      c.height = 420;
      return scatter_chart(c, {o, q, s});
    };
    const json& pca = e["pca"];
    page.figure(scatter_of(pca["xy"], "(c) PCA of queries and keys", "PC 1 (" + fmt_num(100 * pca["explained"][0].get<double>()) + "% var.)",
                           "PC 2 (" + fmt_num(100 * pca["explained"][1].get<double>()) + "% var.)"),
                "Queries of the chosen head and the keys of its KV head at layer " + std::to_string(g["layer"].get<int>()) +
                    ", projected on their first two principal components (" + std::to_string(e["n"].get<int>()) + " points).");
    if (e.contains("tsne"))
      page.figure(scatter_of(e["tsne"]["xy"], "(c) t-SNE of queries and keys", "t-SNE 1", "t-SNE 2"),
                  "Exact t-SNE of the same points (perplexity " + num(e["tsne"]["perplexity"]) + ", final KL " +
                      num(e["tsne"]["kl"]) + ").");
    Axes d;
    d.title = "(d) Cosine similarity of queries with keys";
    d.xlabel = "layer";
    d.ylabel = "mean cos(q, k)";
    d.width = 860;
    d.hlines = {0.0};
    page.figure(bar_chart(d, cats, {{"sink keys", {}, dv(pl["cos_sink"]), palette(1)},
                                    {"other keys", {}, dv(pl["cos_other"]), palette(0)}}),
                "Mean cosine similarity between each non-sink query and the keys it can see (all heads), sink keys vs "
                "other keys. Mean scaled scores q·k/√d: sinks " +
                    [&] {
                      std::string s;
                      for (size_t l = 0; l < pl["logit_sink"].size(); ++l) s += (l ? ", " : "") + num(pl["logit_sink"][l]);
                      return s;
                    }() +
                    "; others " + [&] {
                      std::string s;
                      for (size_t l = 0; l < pl["logit_other"].size(); ++l) s += (l ? ", " : "") + num(pl["logit_other"][l]);
                      return s;
                    }() + " (by layer).");
  }

  // ---- Fig. 5
  if (r.contains("dim_zeroing")) {
    page.heading(2, "Zeroing the dominant dimension of sink keys (Fig. 5)", "fig5");
    const json& z = r.at("dim_zeroing");
    auto x = iota_d(size_t(L));
    Axes a;
    a.title = "Attention to the sinks per layer";
    a.xlabel = "layer";
    a.ylabel = "attention mass on the sinks";
    a.integer_x = true;
    a.ymin = 0;
    a.ymax = 1;
    a.width = 860;
    Series own{"zeroed at this layer only", x, dv(z["zeroed_this_layer"])};
    own.dashed = true;
    page.figure(line_chart(a, {{"unchanged", x, dv(z["baseline"])}, {"zeroed at every layer", x, dv(z["zeroed_all_layers"])}, own}),
                "Mean over heads and non-sink queries of the attention on the sink positions, before and after setting the top-1 (largest-magnitude) "
                "channel of each sink key (per KV head) to zero, at every layer or at the plotted layer only.");
  }

  // ---- parameters and timing
  page.heading(2, "Parameters and timing", "params");
  page.raw("<pre>" + xml_escape(r.at("params").dump(1)) + "\n" + xml_escape(r.value("timing", json::object()).dump(1)) +
           "</pre>");
  page.paragraph("Every number on this page is in report.json next to this file.");
  return page.render();
}

void write_sink_report(const std::string& dir, const json& report) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, ": cannot create the output folder (", ec.message(), ")");
  const std::string jp = (fs::path(dir) / "report.json").string(), hp = (fs::path(dir) / "report.html").string();
  const std::string html = sink_report_html(report);
  {
    std::ofstream f(jp, std::ios::binary);
    if (!f) fail(jp, ": cannot write");
    f << report.dump(1) << "\n";
    if (!f) fail(jp, ": write failed");
  }
  std::ofstream f(hp, std::ios::binary);
  if (!f) fail(hp, ": cannot write");
  f << html;
  if (!f) fail(hp, ": write failed");
}

}  // namespace outro::report
