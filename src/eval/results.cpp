#include "eval/results.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "eval/runner.h"
#include "eval/stats.h"

namespace outro::eval {

namespace fs = std::filesystem;
using nlohmann::json;

json record_to_json(const Record& r, const Item& item) {
  json j;
  j["id"] = r.id;
  j["strategy"] = r.strategy;
  j["seed"] = r.seed;
  j["response"] = r.response;
  j["pred"] = r.pred >= 0 ? json(std::string(1, option_letter(r.pred))) : json(nullptr);
  j["answer"] = std::string(1, option_letter(item.answer));
  j["correct"] = r.correct;
  j["method"] = r.method;
  if (!item.task.empty()) j["task"] = item.task;
  if (!item.category.empty()) j["category"] = item.category;
  if (item.index >= 0) j["index"] = item.index;  // the record's index in the source question file
  j["prompt_tokens"] = r.prompt_tokens;
  j["new_tokens"] = r.new_tokens;
  j["seconds"] = r.seconds;
  j["rank"] = r.rank;
  return j;
}

Record record_from_json(const json& j) {
  Record r;
  r.id = j.at("id").get<std::string>();
  r.strategy = j.at("strategy").get<std::string>();
  r.seed = j.at("seed").get<int>();
  r.response = j.value("response", "");
  if (j.contains("pred") && j["pred"].is_string() && j["pred"].get<std::string>().size() == 1)
    r.pred = j["pred"].get<std::string>()[0] - 'A';
  r.correct = j.at("correct").get<bool>();
  r.method = j.value("method", "");
  r.prompt_tokens = j.value("prompt_tokens", 0);
  r.new_tokens = j.value("new_tokens", 0);
  r.seconds = j.value("seconds", 0.0);
  r.rank = j.value("rank", 0);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Files

static void cut_torn_tail(const fs::path& p) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  if (ec || size == 0) return;
  std::ifstream f(p, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (!data.empty() && data.back() == '\n') return;
  const size_t keep = data.rfind('\n') == std::string::npos ? 0 : data.rfind('\n') + 1;
  f.close();
  fs::resize_file(p, keep, ec);
  if (ec) fail(p.string(), ": cannot cut the unfinished last line (", ec.message(), ")");
  std::fprintf(stderr, "eval: %s: dropped an unfinished last line (%zu bytes) left by an interrupted run\n",
               p.string().c_str(), data.size() - keep);
}

std::map<RecordKey, Record> read_all_records(const std::string& dir) {
  std::map<RecordKey, Record> out;
  const fs::path rd = fs::path(dir) / "results";
  std::error_code ec;
  if (!fs::is_directory(rd, ec)) return out;
  std::vector<fs::path> files;
  for (auto& e : fs::directory_iterator(rd))
    if (e.is_regular_file() && e.path().extension() == ".jsonl") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (auto& p : files) {
    std::ifstream f(p);
    std::string line;
    while (std::getline(f, line)) {
      if (line.empty()) continue;
      try {
        Record r = record_from_json(json::parse(line));
        out.emplace(RecordKey{r.strategy, r.seed, r.id}, std::move(r));
      } catch (const std::exception&) {
        // A torn line of a writer that is still running (or was killed): not a record yet.
      }
    }
  }
  return out;
}

ResultStore::ResultStore(std::string out_dir, int rank) : dir_(std::move(out_dir)), rank_(rank) {
  fs::create_directories(fs::path(dir_) / "results");
  fs::create_directories(fs::path(dir_) / "ranks");
  const std::string suffix = ".rank" + std::to_string(rank_) + ".jsonl";
  for (auto& e : fs::directory_iterator(fs::path(dir_) / "results")) {
    const std::string name = e.path().filename().string();
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      cut_torn_tail(e.path());
  }
  for (auto& [k, r] : read_all_records(dir_)) done_.insert(k);
}

bool ResultStore::done(const std::string& strategy, int seed, const std::string& id) const {
  return done_.count(RecordKey{strategy, seed, id}) > 0;
}

void ResultStore::append(const Record& r, const Item& item) {
  const fs::path p = fs::path(dir_) / "results" / (r.strategy + ".rank" + std::to_string(rank_) + ".jsonl");
  const std::string line = record_to_json(r, item).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) fail(p.string(), ": cannot open for appending");
  size_t off = 0;
  while (off < line.size()) {
    ssize_t k = ::write(fd, line.data() + off, line.size() - off);
    if (k < 0) {
      ::close(fd);
      fail(p.string(), ": write failed");
    }
    off += size_t(k);
  }
  ::fdatasync(fd);
  ::close(fd);
  done_.insert(RecordKey{r.strategy, r.seed, r.id});
}

// ---------------------------------------------------------------------------------------------
// Summary

static const Record& need(const std::map<RecordKey, Record>& recs, const std::string& s, int seed,
                          const std::string& id) {
  return recs.at(RecordKey{s, seed, id});
}

json summarize(const std::vector<Item>& items, const std::map<RecordKey, Record>& recs, const SummaryConfig& cfg) {
  // Completeness first: a summary of a partial run would be silently wrong.
  size_t missing = 0;
  std::string first;
  for (auto& s : cfg.strategies)
    for (int seed : cfg.seeds)
      for (auto& it : items)
        if (!recs.count(RecordKey{s, seed, it.id})) {
          if (missing++ < 3) first += (first.empty() ? "" : ", ") + s + "/seed " + std::to_string(seed) + "/" + it.id;
        }
  if (missing) fail("results are incomplete: ", missing, " (strategy, seed, item) records missing (", first, ")");

  const size_t n = items.size();
  std::string ref = cfg.strategies.front();
  for (auto& s : cfg.strategies)
    if (s == "baseline") ref = s;

  json out;
  out["meta"] = cfg.meta;
  out["n_items"] = n;
  out["strategies"] = cfg.strategies;
  out["seeds"] = cfg.seeds;
  out["reference"] = ref;

  // score[s][i] = mean over seeds of correct(s, i)
  std::map<std::string, std::vector<double>> score;
  json acc = json::object();
  for (auto& s : cfg.strategies) {
    std::vector<double> per_seed;
    json ps = json::object();
    size_t unparsed = 0;
    std::vector<double> sc(n, 0.0);
    for (int seed : cfg.seeds) {
      size_t c = 0;
      for (size_t i = 0; i < n; ++i) {
        const Record& r = need(recs, s, seed, items[i].id);
        c += r.correct;
        unparsed += r.pred < 0;
        sc[i] += r.correct ? 1.0 / double(cfg.seeds.size()) : 0.0;
      }
      const double a = double(c) / double(n);
      per_seed.push_back(a);
      ps[std::to_string(seed)] = a;
    }
    score[s] = sc;
    MeanStd m = mean_std(per_seed);
    json js;
    js["mean"] = m.mean;
    js["std"] = m.std;
    js["per_seed"] = ps;
    js["unparsed_rate"] = double(unparsed) / double(n * cfg.seeds.size());
    js["invalid"] = unparsed;  // responses no answer could be read from (counted wrong), over all seeds
    // per task / category: accuracy per seed, then mean and std across seeds
    for (const char* field : {"task", "category"}) {
      std::map<std::string, std::vector<size_t>> groups;
      for (size_t i = 0; i < n; ++i) {
        const std::string& g = std::string(field) == "task" ? items[i].task : items[i].category;
        if (!g.empty()) groups[g].push_back(i);
      }
      if (groups.empty()) continue;
      json jg = json::object();
      for (auto& [g, idx] : groups) {
        std::vector<double> accs;
        for (int seed : cfg.seeds) {
          size_t c = 0;
          for (size_t i : idx) c += need(recs, s, seed, items[i].id).correct;
          accs.push_back(double(c) / double(idx.size()));
        }
        MeanStd mg = mean_std(accs);
        jg[g] = {{"n", idx.size()}, {"mean", mg.mean}, {"std", mg.std}};
      }
      js[std::string("per_") + field] = jg;
    }
    acc[s] = js;
  }
  out["accuracy"] = acc;

  json cmp = json::object();
  for (auto& s : cfg.strategies) {
    if (s == ref) continue;
    json jc;
    jc["vs"] = ref;
    json per = json::array();
    std::vector<double> diffs;
    double pmax = 0;
    int significant = 0;
    uint64_t k = 0;
    for (int seed : cfg.seeds) {
      int64_t b = 0, c = 0;
      std::vector<double> x(n), y(n);
      for (size_t i = 0; i < n; ++i) {
        const bool cs = need(recs, s, seed, items[i].id).correct, cr = need(recs, ref, seed, items[i].id).correct;
        x[i] = cs;
        y[i] = cr;
        b += cs && !cr;
        c += !cs && cr;
      }
      const double p = mcnemar_exact(b, c);
      BootstrapCI ci = paired_bootstrap(x, y, cfg.bootstrap_resamples, cfg.bootstrap_seed + k++);
      per.push_back({{"seed", seed}, {"b", b}, {"c", c}, {"p_mcnemar", p}, {"diff", ci.diff}, {"ci_low", ci.low},
                     {"ci_high", ci.high}});
      diffs.push_back(ci.diff);
      pmax = std::max(pmax, p);
      significant += p < 0.05;
    }
    MeanStd md = mean_std(diffs);
    BootstrapCI pooled = paired_bootstrap(score[s], score[ref], cfg.bootstrap_resamples, cfg.bootstrap_seed);
    jc["diff"] = md.mean;
    jc["diff_std"] = md.std;
    jc["ci_low"] = pooled.low;
    jc["ci_high"] = pooled.high;
    jc["resamples"] = cfg.bootstrap_resamples;
    jc["p_mcnemar_max"] = pmax;
    jc["significant_seeds"] = significant;
    jc["per_seed"] = per;
    cmp[s] = jc;
  }
  out["comparisons"] = cmp;
  return out;
}

void write_merged(const std::string& dir, const std::vector<Item>& items, const std::map<RecordKey, Record>& recs,
                  const SummaryConfig& cfg) {
  fs::create_directories(fs::path(dir) / "merged");
  for (auto& s : cfg.strategies) {
    std::string text;
    for (int seed : cfg.seeds)
      for (auto& it : items) {
        auto r = recs.find(RecordKey{s, seed, it.id});
        if (r == recs.end()) continue;
        json j = record_to_json(r->second, it);
        j.erase("seconds");
        j.erase("rank");
        text += j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
      }
    write_whole((fs::path(dir) / "merged" / (s + ".jsonl")).string(), text);
  }
}

// ---------------------------------------------------------------------------------------------
// Presentation

static std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

static std::string pad(std::string s, size_t w) {
  // width in code points (names are ASCII in practice; UTF-8 continuation bytes do not count)
  size_t cps = 0;
  for (unsigned char c : s) cps += (c & 0xC0) != 0x80;
  if (cps < w) s.append(w - cps, ' ');
  return s;
}

std::string format_table(const json& sm) {
  std::ostringstream o;
  const auto& seeds = sm["seeds"];
  const bool multi = seeds.size() > 1;
  const std::string ref = sm["reference"];
  o << "items: " << sm["n_items"].get<size_t>() << "   seeds: " << seeds.size()
    << (multi ? " (accuracy: mean ± std across seeds)" : "") << "   reference: " << ref << "\n\n";
  size_t w = 10;
  for (auto& s : sm["strategies"]) w = std::max(w, s.get<std::string>().size() + 2);
  o << pad("strategy", w) << pad("accuracy", 18) << pad("Δ vs " + ref, 16) << pad("95% CI (bootstrap)", 22)
    << pad("b / c", 12) << (multi ? "McNemar p (max)" : "McNemar p") << "\n";
  o << std::string(w + 18 + 16 + 22 + 12 + 15, '-') << "\n";
  for (auto& sj : sm["strategies"]) {
    const std::string s = sj;
    const auto& a = sm["accuracy"][s];
    std::string accs = fmt("%.1f%%", 100 * a["mean"].get<double>());
    if (multi) accs += fmt(" ± %.1f", 100 * a["std"].get<double>());
    o << pad(s, w) << pad(accs, 18);
    if (s == ref) {
      o << pad("—", 16) << pad("", 22) << pad("", 12) << "\n";
      continue;
    }
    const auto& c = sm["comparisons"][s];
    std::string d = fmt("%+.1f", 100 * c["diff"].get<double>());
    if (multi) d += fmt(" ± %.1f", 100 * c["diff_std"].get<double>());
    int64_t b = 0, cc = 0;
    for (auto& p : c["per_seed"]) {
      b += p["b"].get<int64_t>();
      cc += p["c"].get<int64_t>();
    }
    o << pad(d, 16)
      << pad(fmt("[%+.1f, ", 100 * c["ci_low"].get<double>()) + fmt("%+.1f]", 100 * c["ci_high"].get<double>()), 22)
      << pad(std::to_string(b) + " / " + std::to_string(cc), 12) << fmt("%.4g", c["p_mcnemar_max"].get<double>());
    if (c["p_mcnemar_max"].get<double>() < 0.05) o << " *";
    o << "\n";
  }
  {
    // answers no rule could read: counted wrong, reported so a reader sees how many
    std::string inv;
    for (auto& sj : sm["strategies"]) {
      const auto& a = sm["accuracy"][sj.get<std::string>()];
      if (a.contains("invalid")) inv += (inv.empty() ? "" : ", ") + sj.get<std::string>() + " " + a["invalid"].dump();
    }
    if (!inv.empty()) o << "\ninvalid answers (counted wrong): " << inv << "\n";
  }
  for (const char* field : {"per_task", "per_category"}) {
    const std::string first = sm["strategies"][0];
    if (!sm["accuracy"][first].contains(field)) continue;
    o << "\n" << (std::string(field) == "per_task" ? "task" : "category") << " accuracy (%)\n";
    size_t tw = 8;
    for (auto& [g, v] : sm["accuracy"][first][field].items()) tw = std::max(tw, g.size() + 2);
    tw = std::min<size_t>(tw, 44);
    o << pad("", tw) << pad("n", 6);
    for (auto& s : sm["strategies"]) o << pad(s.get<std::string>(), std::max<size_t>(s.get<std::string>().size() + 2, 10));
    o << "\n";
    for (auto& [g, v] : sm["accuracy"][first][field].items()) {
      std::string name = g.size() > tw - 2 ? g.substr(0, tw - 3) + "…" : g;
      o << pad(name, tw) << pad(std::to_string(v["n"].get<size_t>()), 6);
      for (auto& s : sm["strategies"]) {
        const auto& e = sm["accuracy"][s.get<std::string>()][field][g];
        std::string cell = fmt("%.1f", 100 * e["mean"].get<double>());
        if (multi) cell += fmt("±%.1f", 100 * e["std"].get<double>());
        o << pad(cell, std::max<size_t>(s.get<std::string>().size() + 2, 10));
      }
      o << "\n";
    }
  }
  o << "\nb / c: items the strategy gets right and the reference wrong / the reverse"
    << (multi ? " (summed over seeds; the test is per seed)" : "") << "; * p < 0.05\n";
  return o.str();
}

static std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string render_html(const json& sm) {
  static const char* colours[] = {"#7a7a7a", "#d9480f", "#1971c2", "#2f9e44", "#9c36b5", "#e8590c", "#0c8599"};
  std::ostringstream o;
  const auto& strategies = sm["strategies"];
  const bool multi = sm["seeds"].size() > 1;
  o << "<!doctype html><html><head><meta charset=\"utf-8\"><title>outro eval</title><style>"
       "body{font-family:system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}"
       "table{border-collapse:collapse;margin:1em 0}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}"
       "td:first-child,th:first-child{text-align:left}.bar{height:14px;display:inline-block;vertical-align:middle}"
       ".grp{margin:.8em 0}.lbl{display:inline-block;width:12em;font-size:.85em}.val{font-size:.8em;margin-left:.4em}"
       ".legend span{display:inline-block;margin-right:1.2em}.sw{width:12px;height:12px;display:inline-block;margin-right:.3em}"
       "</style></head><body><h1>Evaluation summary</h1>";
  o << "<p>" << sm["n_items"].get<size_t>() << " items, " << sm["seeds"].size() << " seed(s); reference: "
    << esc(sm["reference"].get<std::string>()) << ".";
  if (sm["meta"].contains("bench")) o << " Benchmark: <code>" << esc(sm["meta"]["bench"].get<std::string>()) << "</code>.";
  if (sm["meta"].contains("model")) o << " Model: <code>" << esc(sm["meta"]["model"].get<std::string>()) << "</code>.";
  o << "</p><table><tr><th>strategy</th><th>accuracy</th><th>Δ</th><th>95% CI</th><th>McNemar p</th></tr>";
  for (auto& sj : strategies) {
    const std::string s = sj;
    const auto& a = sm["accuracy"][s];
    o << "<tr><td>" << esc(s) << "</td><td>" << fmt("%.1f%%", 100 * a["mean"].get<double>());
    if (multi) o << fmt(" ± %.1f", 100 * a["std"].get<double>());
    o << "</td>";
    if (sm["comparisons"].contains(s)) {
      const auto& c = sm["comparisons"][s];
      o << "<td>" << fmt("%+.1f", 100 * c["diff"].get<double>()) << "</td><td>["
        << fmt("%+.1f", 100 * c["ci_low"].get<double>()) << ", " << fmt("%+.1f", 100 * c["ci_high"].get<double>())
        << "]</td><td>" << fmt("%.4g", c["p_mcnemar_max"].get<double>()) << "</td>";
    } else {
      o << "<td>—</td><td></td><td></td>";
    }
    o << "</tr>";
  }
  o << "</table><div class=\"legend\">";
  for (size_t k = 0; k < strategies.size(); ++k)
    o << "<span><span class=\"sw\" style=\"background:" << colours[k % 7] << "\"></span>"
      << esc(strategies[k].get<std::string>()) << "</span>";
  o << "</div>";
  const std::string first = strategies[0];
  for (const char* field : {"per_task", "per_category"}) {
    if (!sm["accuracy"][first].contains(field)) continue;
    o << "<h2>Accuracy per " << (std::string(field) == "per_task" ? "task" : "category") << "</h2>";
    for (auto& [g, v] : sm["accuracy"][first][field].items()) {
      o << "<div class=\"grp\"><div><b>" << esc(g) << "</b> <small>(" << v["n"].get<size_t>() << " items)</small></div>";
      for (size_t k = 0; k < strategies.size(); ++k) {
        const auto& e = sm["accuracy"][strategies[k].get<std::string>()][field][g];
        const double m = e["mean"].get<double>();
        o << "<div><span class=\"lbl\">" << esc(strategies[k].get<std::string>()) << "</span><span class=\"bar\" style=\"width:"
          << fmt("%.1f", 5 * 100 * m) << "px;background:" << colours[k % 7] << "\"></span><span class=\"val\">"
          << fmt("%.1f%%", 100 * m);
        if (multi) o << fmt(" ± %.1f", 100 * e["std"].get<double>());
        o << "</span></div>";
      }
      o << "</div>";
    }
  }
  o << "</body></html>\n";
  return o.str();
}

}  // namespace outro::eval
