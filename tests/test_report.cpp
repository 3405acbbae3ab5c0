// Report writer (src/report): SVG charts (ticks, escaping, one mark per data point, no external
// references), the self-contained HTML page, and the sink report rendered from run_analysis' JSON.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "kernels/backend.h"
#include "models/model.h"
#include "models/random_model.h"
#include "report/html.h"
#include "report/sink_report.h"
#include "report/svg.h"
#include "sink/analysis.h"
#include "test_util.h"

namespace outro {
namespace {

using namespace outro::report;

size_t count(const std::string& s, const std::string& sub) {
  size_t n = 0;
  for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + 1)) ++n;
  return n;
}

// Every opened tag is closed (or self-closed), in order.
bool balanced(const std::string& s) {
  std::vector<std::string> st;
  std::regex tag("<(/?)([a-zA-Z][a-zA-Z0-9]*)[^>]*?(/?)>");
  for (auto it = std::sregex_iterator(s.begin(), s.end(), tag); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    const std::string name = m[2];
    if (name == "meta" || name == "br" || name == "html" || name == "head" || name == "body") continue;
    if (m[3] == "/") continue;
    if (m[1] == "/") {
      if (st.empty() || st.back() != name) return false;
      st.pop_back();
    } else {
      st.push_back(name);
    }
  }
  return st.empty();
}

// No reference that a browser would fetch: no src=, no href other than in-page anchors, no url(), and
// http only in the SVG namespace declaration.
void expect_self_contained(const std::string& s) {
  EXPECT_EQ(count(s, "src="), 0u);
  EXPECT_EQ(count(s, "url("), 0u);
  EXPECT_EQ(count(s, "<script"), 0u);
  EXPECT_EQ(count(s, "href=\"http"), 0u);
  EXPECT_EQ(count(s, "http"), count(s, "xmlns=\"http://www.w3.org/2000/svg\""));
}

TEST(ReportSvg, NiceTicksCoverTheRangeWithRoundSteps) {
  auto t = nice_ticks(0, 1, 5);
  ASSERT_EQ(t.size(), 6u);
  EXPECT_EQ(t.front(), 0.0);
  EXPECT_NEAR(t.back(), 1.0, 1e-12);
  EXPECT_NEAR(t[1], 0.2, 1e-12);
  auto u = nice_ticks(-3.7, 12.2, 5);
  EXPECT_GE(u.front(), -3.7);
  EXPECT_LE(u.back(), 12.2);
  EXPECT_NEAR(u[1] - u[0], 5.0, 1e-9);  // 16 / 5 = 3.2 -> step 5
  EXPECT_NE(std::find(u.begin(), u.end(), 0.0), u.end());
  EXPECT_EQ(nice_ticks(2, 2).size(), 1u);
  EXPECT_TRUE(nice_ticks(1, 0).empty());
  EXPECT_EQ(fmt_num(0.25), "0.25");
  EXPECT_EQ(fmt_num(1200), "1200");
  EXPECT_EQ(fmt_num(1.5e-5), "1.5e-05");
}

TEST(ReportSvg, EscapesTextAndDrawsOneMarkPerPoint) {
  EXPECT_EQ(xml_escape("a<b & \"c\">'"), "a&lt;b &amp; &quot;c&quot;&gt;&#39;");
  Axes a;
  a.title = "T <1>";
  a.xlabel = "layer & depth";
  a.ylabel = "count";
  std::string s = line_chart(a, {{"one", {0, 1, 2}, {1, 2, 3}}, {"two", {0, 1, 2, 3}, {3, 2, 1, std::nan("")}}});
  EXPECT_TRUE(balanced(s)) << s;
  EXPECT_NE(s.find("T &lt;1&gt;"), std::string::npos);
  EXPECT_NE(s.find("layer &amp; depth"), std::string::npos);
  EXPECT_EQ(count(s, "<circle"), 6u);  // the NaN point is skipped
  EXPECT_EQ(count(s, "<path"), 2u);
  EXPECT_NE(s.find(">one<"), std::string::npos);  // legend
  expect_self_contained(s);

  std::string b = bar_chart(a, {"x", "y", "z"}, {{"s1", {}, {1, -2, 3}}, {"s2", {}, {2, 2, 2}}});
  EXPECT_TRUE(balanced(b));
  EXPECT_EQ(count(b, "<rect") - 2, 6u);  // background + frame
  Points p{"pts", {0, 1, 2, 3}, {3, 1, 2, 0}, {"a", "b", "c", "d"}};
  std::string sc = scatter_chart(a, {p});
  EXPECT_TRUE(balanced(sc));
  EXPECT_EQ(count(sc, "<circle"), 4u);
  EXPECT_NE(sc.find("<title>c</title>"), std::string::npos);
  std::string h = heatmap(a, {{0, 0.5}, {1, 0.25}, {0.75, 0.1}}, {"h0", "h1"}, {"l0", "l1", "l2"}, true, 0, 1);
  EXPECT_TRUE(balanced(h));
  EXPECT_NE(h.find(">0.25<"), std::string::npos);
  EXPECT_NE(h.find("#ffffff"), std::string::npos);  // 0 -> white
  EXPECT_NE(h.find("#08306b"), std::string::npos);  // 1 -> dark blue
}

TEST(ReportSvg, PointsLandInsideThePlotArea) {
  Axes a;
  a.width = 400;
  a.height = 300;
  std::string s = scatter_chart(a, {{"p", {-5, 5, 0}, {100, -100, 0}}});
  std::regex circ("cx=\"([-0-9.]+)\" cy=\"([-0-9.]+)\"");
  int k = 0;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), circ); it != std::sregex_iterator(); ++it, ++k) {
    const double x = std::stod((*it)[1]), y = std::stod((*it)[2]);
    EXPECT_GT(x, 60);
    EXPECT_LT(x, 400);
    EXPECT_GT(y, 30);
    EXPECT_LT(y, 260);
  }
  EXPECT_EQ(k, 3);
}

TEST(ReportHtml, PageIsSelfContainedWithTableOfContents) {
  HtmlPage p("Title & more");
  p.heading(2, "First", "first");
  p.paragraph("x < y");
  p.figure(line_chart(Axes{}, {{"s", {0, 1}, {0, 1}}}), "cap");
  p.table({"a", "b"}, {{"1", "2"}});
  std::string h = p.render();
  EXPECT_EQ(h.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(h.find("<a href=\"#first\">First</a>"), std::string::npos);
  EXPECT_NE(h.find("<p>x &lt; y</p>"), std::string::npos);
  EXPECT_NE(h.find("<figcaption>cap</figcaption>"), std::string::npos);
  expect_self_contained(h);
}

TEST(ReportSink, HtmlShowsEveryFigureFromTheJson) {
  const std::string dir = test::tmp_dir("report_model");
  RandomModelSpec s;
  s.layers = 2;
  s.heads = 4;
  s.kv_heads = 2;
  s.hidden = 32;
  s.intermediate = 64;
  s.vocab = 50;
  s.seed = 3;
  write_random_model(dir, s);
  auto m = Model::load(dir);
  auto be = make_cpu_backend();
  std::vector<sink::TaskItem> items(2);
  items[0].id = "a";
  items[0].prompt = {1, 5, 9, 13, 2, 7, 30, 31, 4, 8};
  items[0].answer = {3, 4};
  items[1].id = "b";
  items[1].prompt = {1, 6, 6, 12, 40, 41, 42};
  sink::AnalysisParams p;
  p.sinks.llm = {1.0, 2.0};  // low thresholds: a random model has no massive activations
  p.tsne_params.iterations = 200;
  p.seeds = {4, 5};
  nlohmann::json j = sink::run_analysis(*m, *be, items, p);
  const int n_layers = 2;
  ASSERT_EQ(j["fig1a"]["phi_llm"].size(), size_t(n_layers));
  ASSERT_EQ(j["per_prompt"].size(), 2u);
  // Fig. 1a counts are the means of the per-prompt sets.
  for (int l = 0; l < n_layers; ++l) {
    const double mean = (j["per_prompt"][0]["layers"][l]["phi_llm"].size() + j["per_prompt"][1]["layers"][l]["phi_llm"].size()) / 2.0;
    EXPECT_DOUBLE_EQ(j["fig1a"]["phi_llm"][l].get<double>(), mean);
  }
  std::string html = sink_report_html(j);
  EXPECT_TRUE(balanced(html));
  expect_self_contained(html);
  for (const char* h : {"Fig. 1a", "Sink score of every head", "Fig. 2", "Fig. 3", "Fig. 4", "Fig. 5", "t-SNE", "PCA"})
    EXPECT_NE(html.find(h), std::string::npos) << h;
  EXPECT_GE(count(html, "<svg"), 9u);
  // The heatmap shows every head's score as printed in the JSON.
  char buf[32];
  std::snprintf(buf, sizeof buf, ">%.2f<", j["sink_scores"]["scores"][1][3].get<double>());
  EXPECT_NE(html.find(buf), std::string::npos) << buf;
  // The pruning figure has one marker per step for the sink-score order.
  EXPECT_EQ(j["pruning"]["by_sink_score"]["value"].size(), j["pruning"]["steps"].size());

  const std::string out = dir + "/out";
  write_sink_report(out, j);
  std::ifstream jf(out + "/report.json");
  EXPECT_EQ(nlohmann::json::parse(jf), j);
  EXPECT_TRUE(std::filesystem::exists(out + "/report.html"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace outro
