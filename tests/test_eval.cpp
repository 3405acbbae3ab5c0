// The evaluation harness: statistics against known values, answer extraction, the benchmark
// format and adapters (on hand-written samples of each published format), summaries, resuming,
// and `outro eval` end to end on the synthetic benchmark, also under mpirun -n 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "eval/adapters.h"
#include "eval/bench.h"
#include "eval/extract.h"
#include "eval/prompt.h"
#include "eval/results.h"
#include "eval/stats.h"
#include "eval/synth.h"
#include "models/random_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace outro;
using namespace outro::eval;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

size_t count_lines(const fs::path& p) {
  std::ifstream f(p);
  std::string l;
  size_t n = 0;
  while (std::getline(f, l)) n += !l.empty();
  return n;
}

Item mc(std::vector<std::string> opts, int answer) {
  Item it;
  it.id = "x";
  it.question = "q";
  it.options = std::move(opts);
  it.answer = answer;
  return it;
}

json summary_without_run(const fs::path& p) {
  json j = json::parse(slurp(p));
  j.erase("run");
  return j;
}

// A tiny random Qwen2 checkpoint without tokenizer.json: prompts go in as bytes (vocab 256).
std::string tiny_model() {
  static std::string dir = [] {
    std::string d = test::tmp_dir("eval_model");
    RandomModelSpec s;
    s.vocab = 256;
    s.layers = 4;  // the OutRo presets edit layer 2 and later
    s.max_positions = 1024;
    s.seed = 7;
    write_random_model(d, s);
    return d;
  }();
  return dir;
}

// The synthetic benchmark with clips (ffmpeg is a declared dependency: scripts/apt-packages.txt).
std::string synth_bench(int n = 12) {
  static std::map<int, std::string> made;
  if (made.count(n)) return made[n];
  std::string d = test::tmp_dir("eval_synth" + std::to_string(n));
  auto r = test::run_cli("eval synth --out " + d + " --n " + std::to_string(n) + " --seed 3");
  EXPECT_EQ(r.code, 0) << r.out;
  return made[n] = d;
}


// On a Qwen2.5-Omni checkpoint (the omni demo model) the harness feeds each item's clip: video
// tokens and the clip's own audio track are in the prompt; --text-only leaves them out.
TEST(EvalCli, OmniModelSeesTheMedia) {
  const std::string model = test::source_dir() + "/models/outro-omni-demo";
  const std::string bench = test::fixture("omni_demo/bench.jsonl");
  std::string out = test::tmp_dir("eval_omni"), text = test::tmp_dir("eval_omni_text");
  const std::string common = "eval --model " + model + " --bench " + bench + " --media-root " + test::fixture("omni_demo") +
                             " --strategies baseline,outro --limit 4 --threads 1 --no-progress --bootstrap 200 " +
                             "--system \"You are a helpful assistant.\" --out ";
  auto r = test::run_cli(common + out);
  ASSERT_EQ(r.code, 0) << r.out;
  auto t = test::run_cli(common + text + " --text-only");
  ASSERT_EQ(t.code, 0) << t.out;
  json s = json::parse(slurp(fs::path(out) / "summary.json"));
  EXPECT_EQ(s["meta"]["media_mode"], "encoded");
  EXPECT_EQ(s["meta"]["protocol"]["audio_in_video"], "auto");
  json st = json::parse(slurp(fs::path(text) / "summary.json"));
  EXPECT_EQ(st["meta"]["media_mode"], "text-only");
  std::ifstream f(fs::path(out) / "results" / "baseline.rank0.jsonl"), g(fs::path(text) / "results" / "baseline.rank0.jsonl");
  std::string a, b;
  int n = 0;
  while (std::getline(f, a) && std::getline(g, b)) {
    const int with = json::parse(a)["prompt_tokens"], without = json::parse(b)["prompt_tokens"];
    // 8 video tokens, 50-51 audio tokens and the four vision/audio bracket tokens
    EXPECT_GE(with - without, 8 + 50 + 4) << a << "\n" << b;
    ++n;
  }
  EXPECT_EQ(n, 4);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Statistics

TEST(EvalStats, McNemarExactKnownValues) {
  EXPECT_NEAR(mcnemar_exact(10, 2), 0.03857421875, 1e-12);  // the referee's example: p = 0.0386
  EXPECT_NEAR(mcnemar_exact(2, 10), 0.03857421875, 1e-12);  // two-sided: symmetric
  EXPECT_NEAR(mcnemar_exact(0, 6), 0.03125, 1e-12);
  EXPECT_NEAR(mcnemar_exact(12, 30), 0.007915897334896727, 1e-12);
  EXPECT_NEAR(mcnemar_exact(300, 250), 0.036578745549102704, 1e-9);  // large n, log-space sum
  EXPECT_DOUBLE_EQ(mcnemar_exact(5, 5), 1.0);
  EXPECT_DOUBLE_EQ(mcnemar_exact(1, 0), 1.0);
  EXPECT_DOUBLE_EQ(mcnemar_exact(0, 0), 1.0);
  EXPECT_THROW(mcnemar_exact(-1, 2), std::invalid_argument);
}

TEST(EvalStats, PairedBootstrap) {
  // identical scores: no difference, degenerate interval
  std::vector<double> a = {1, 0, 1, 1, 0, 1, 0, 0, 1, 1};
  auto ci = paired_bootstrap(a, a);
  EXPECT_EQ(ci.diff, 0);
  EXPECT_EQ(ci.low, 0);
  EXPECT_EQ(ci.high, 0);
  EXPECT_EQ(ci.resamples, 10000);
  // every item flips from wrong to right: the difference is 1 in every resample
  std::vector<double> ones(20, 1.0), zeros(20, 0.0);
  ci = paired_bootstrap(ones, zeros);
  EXPECT_EQ(ci.diff, 1);
  EXPECT_EQ(ci.low, 1);
  EXPECT_EQ(ci.high, 1);
  // 200 items, 30 gained and 10 lost: diff 0.1; the percentile interval is close to the normal
  // approximation diff +- 1.96 * sd(d) / sqrt(n), and fixed by the seed
  std::vector<double> x(200, 0), y(200, 0);
  for (int i = 0; i < 30; ++i) x[i] = 1;
  for (int i = 30; i < 40; ++i) y[i] = 1;
  for (int i = 40; i < 120; ++i) x[i] = y[i] = 1;
  ci = paired_bootstrap(x, y);
  EXPECT_NEAR(ci.diff, 0.1, 1e-12);
  const double sd = std::sqrt((40 * 1.0 - 200 * 0.01) / 199.0);  // d in {-1,0,1}: sum d^2 = 40
  const double half = 1.96 * sd / std::sqrt(200.0);
  EXPECT_NEAR(ci.low, 0.1 - half, 0.01);
  EXPECT_NEAR(ci.high, 0.1 + half, 0.01);
  EXPECT_LT(ci.low, ci.diff);
  EXPECT_GT(ci.high, ci.diff);
  auto again = paired_bootstrap(x, y);
  EXPECT_EQ(again.low, ci.low);
  EXPECT_EQ(again.high, ci.high);
  auto other = paired_bootstrap(x, y, 10000, 99);  // another seed: a close interval
  EXPECT_NEAR(other.low, ci.low, 0.011);
  EXPECT_NEAR(other.high, ci.high, 0.011);
  EXPECT_THROW(paired_bootstrap(x, std::vector<double>(3)), std::invalid_argument);
}

TEST(EvalStats, MeanStd) {
  auto m = mean_std({0.5, 0.7});
  EXPECT_NEAR(m.mean, 0.6, 1e-12);
  EXPECT_NEAR(m.std, std::sqrt(0.02), 1e-12);  // sample std (n - 1)
  EXPECT_EQ(mean_std({0.3}).std, 0);
  EXPECT_EQ(mean_std({}).n, 0);
}

// ---------------------------------------------------------------------------------------------
// Answer extraction

TEST(EvalExtract, LettersTextAndYesNo) {
  Item it = mc({"red", "blue", "green", "yellow"}, 1);
  struct Case {
    const char* text;
    int want;
    const char* method;
  };
  const Case cases[] = {
      {"B", 1, "letter_leading"},
      {"B.", 1, "letter_leading"},
      {" (C) green", 2, "letter_leading"},
      {"D) yellow", 3, "letter_leading"},
      {"**A**", 0, "letter_leading"},
      {"B blue", 1, "letter_leading"},
      {"The answer is C.", 2, "letter_explicit"},
      {"Answer: (D)", 3, "letter_explicit"},
      {"I pick option A because it is red", 0, "letter_explicit"},
      {"It is blue.", 1, "option_text"},
      {"The shape looks Green to me", 2, "option_text"},
      {"<think>maybe red</think><answer>B</answer>", 1, "letter_leading"},
      {"hmm, I think it's (B)", 1, "letter_paren"},
      {"Probably D", 3, "letter_loose"},
      {"E", -1, "unparsed"},  // outside the four options
      {"no idea", -1, "unparsed"},
      {"", -1, "unparsed"},
  };
  for (auto& c : cases) {
    Extraction e = extract_answer(c.text, it);
    EXPECT_EQ(e.index, c.want) << c.text;
    EXPECT_EQ(e.method, c.method) << c.text;
  }
  // "A" as an article is not option A
  Item art = mc({"blue", "red", "green", "yellow"}, 1);
  EXPECT_EQ(extract_answer("A red circle, so the colour is red.", art).index, 1);
  EXPECT_EQ(extract_answer("A red circle, so the colour is red.", art).method, "option_text");
  EXPECT_EQ(extract_answer("A blue one", art).index, 0);  // ... unless option A's text follows
  // the longer option wins when both match at the same place
  Item it2 = mc({"red", "dark red"}, 1);
  EXPECT_EQ(extract_answer("dark red", it2).index, 1);

  Item yn = mc({"yes", "no"}, 1);
  EXPECT_EQ(extract_answer("No.", yn).index, 1);
  EXPECT_EQ(extract_answer("yes, it is", yn).index, 0);
  EXPECT_EQ(extract_answer("I would say no, not yes", yn).index, 1);  // the first one said
  EXPECT_EQ(extract_answer("A", yn).index, 0);                        // a letter still works
  EXPECT_EQ(extract_answer("nothing", yn).index, -1);                 // "no" must be a word
}

// ---------------------------------------------------------------------------------------------
// Benchmark format, prompt

TEST(EvalBench, ItemFormsAndErrors) {
  auto parse = [](const std::string& s) { return item_from_json(json::parse(s), "t"); };
  Item a = parse(R"({"id":"1","media":{"video":"v.mp4","audio":"a.wav"},"question":"q","options":["x","y","z"],"answer":"C","task":"t1"})");
  EXPECT_EQ(a.answer, 2);
  ASSERT_EQ(a.media.size(), 2u);
  EXPECT_EQ(parse(R"({"id":"1","question":"q","options":["x","y"],"answer":1})").answer, 1);
  EXPECT_EQ(parse(R"({"id":"1","question":"q","options":["Yes","No"],"answer":"no"})").answer, 1);
  EXPECT_TRUE(parse(R"({"id":"1","question":"q","options":["Yes","No"],"answer":"no"})").yes_no());
  Item l = parse(R"({"id":2,"media":["c/a.mp4","c/b.WAV","c/x.png"],"question":"q","options":["x","y"],"answer":"A"})");
  EXPECT_EQ(l.id, "2");
  EXPECT_EQ(l.media[0].kind, "video");
  EXPECT_EQ(l.media[1].kind, "audio");
  EXPECT_EQ(l.media[2].kind, "image");
  auto err = [&](const std::string& s, const std::string& want) {
    try {
      parse(s);
      ADD_FAILURE() << "no error for " << s;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  err(R"({"question":"q","options":["x","y"],"answer":"A"})", "missing field \"id\"");
  err(R"({"id":"1","question":"q","options":["x"],"answer":"A"})", "at least two");
  err(R"({"id":"1","question":"q","options":["x","y"],"answer":"D"})", "neither an option letter");
  err(R"({"id":"1","question":"q","options":["x","y"],"answer":5})", "outside");
  err(R"({"id":"1","question":"q","options":["x","y"]})", "missing field \"answer\"");

  std::string d = test::tmp_dir("eval_bench");
  std::ofstream(d + "/b.jsonl") << "# comment\n"
                                << R"({"id":"a","question":"q","options":["x","y"],"answer":"A"})" << "\n\n"
                                << R"({"id":"a","question":"q","options":["x","y"],"answer":"B"})" << "\n";
  try {
    load_bench(d + "/b.jsonl");
    ADD_FAILURE() << "duplicate id accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("b.jsonl:4: duplicate id"), std::string::npos) << e.what();
  }
  // round trip
  write_bench(d + "/c.jsonl", {a, l});
  auto back = load_bench(d + "/c.jsonl");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].answer, 2);
  EXPECT_EQ(back[1].media.size(), 3u);
  // missing media are named
  fs::create_directories(d + "/m");
  std::ofstream(d + "/m/v.mp4") << "x";
  auto miss = find_missing_media({a}, d + "/m");
  ASSERT_EQ(miss.size(), 1u);
  EXPECT_EQ(miss[0].path, d + "/m/a.wav");
}

TEST(EvalPrompt, DemoFormat) {
  Item it = mc({"red", "blue", "green", "yellow"}, 0);
  it.context = "A red circle moves left while a tone plays.";
  it.question = "Which colour is the shape?";
  it.media = {{"video", "c.mp4"}};
  auto segs = build_prompt(it);
  ASSERT_EQ(segs.size(), 2u);
  EXPECT_EQ(segs[0].kind, PromptSegment::Media);  // where the media embeddings will go
  EXPECT_EQ(render_text_only(segs),
            "A red circle moves left while a tone plays. Question: Which colour is the shape? Options: A. red B. blue "
            "C. green D. yellow");
  Item yn = mc({"yes", "no"}, 0);
  yn.context = "A red circle moves left while a tone plays. The sounding object is visible.";
  yn.question = "Is the shape red?";
  EXPECT_EQ(render_text_only(build_prompt(yn)),
            "A red circle moves left while a tone plays. The sounding object is visible. Question: Is the shape red? "
            "Answer yes or no.");
}

// ---------------------------------------------------------------------------------------------
// Adapters, on hand-written samples of each published format (tests/fixtures/bench)

TEST(EvalAdapters, AVHBench) {
  auto c = convert_benchmark("avhbench", test::fixture("bench/avhbench/json"));
  ASSERT_EQ(c.items.size(), 6u);  // 7 questions, the captioning one skipped
  EXPECT_EQ(c.skipped.size(), 1u);
  EXPECT_EQ(c.items[0].id, "avh-00191-0");
  EXPECT_TRUE(c.items[0].yes_no());
  EXPECT_EQ(c.items[0].answer, 0);
  EXPECT_EQ(c.items[1].answer, 1);
  EXPECT_EQ(c.items[0].task, "Video-driven Audio Hallucination");
  EXPECT_EQ(c.items[0].media[0].path, "video/00191.mp4");
  EXPECT_EQ(c.items[5].id, "avh-00204_swap-1");
  EXPECT_EQ(c.items[5].category, "swapped audio");
  EXPECT_EQ(c.items[5].answer, 1);  // "no" in lower case
  // a single file works too
  EXPECT_EQ(convert_benchmark("avhbench", test::fixture("bench/avhbench/json/00204_swap.json")).items.size(), 2u);
}

TEST(EvalAdapters, DailyOmni) {
  auto c = convert_benchmark("dailyomni", test::fixture("bench/dailyomni_qa.json"));
  ASSERT_EQ(c.items.size(), 4u);
  EXPECT_EQ(c.items[0].id, "dailyomni-0x9dKq1-0");
  EXPECT_EQ(c.items[0].options[1], "See you later");  // "B. " label stripped
  EXPECT_EQ(c.items[0].answer, 1);
  EXPECT_EQ(c.items[0].task, "AV Event Alignment");
  EXPECT_EQ(c.items[0].category, "30s");
  EXPECT_EQ(c.items[2].options[0], "The goal is scored");  // no label to strip
  EXPECT_EQ(c.items[3].options[2], "three");               // "C) " stripped
  EXPECT_EQ(c.items[3].answer, 2);
  EXPECT_EQ(c.items[0].media[0].path, "Videos/0x9dKq1/0x9dKq1_video.mp4");
  AdapterOptions o;
  o.media_templates["video"] = "clips/{video_id}.mp4";
  o.media_templates["audio"] = "clips/{video_id}.wav";
  auto c2 = convert_benchmark("dailyomni", test::fixture("bench/dailyomni_qa.json"), o);
  ASSERT_EQ(c2.items[0].media.size(), 2u);
  EXPECT_EQ(c2.items[0].media[0].path, "clips/0x9dKq1.wav");  // kinds in name order: audio, video
}

TEST(EvalAdapters, WorldSense) {
  auto c = convert_benchmark("worldsense", test::fixture("bench/worldsense_qa.json"));
  ASSERT_EQ(c.items.size(), 3u);
  std::map<std::string, Item> by;
  for (auto& it : c.items) by[it.id] = it;
  ASSERT_TRUE(by.count("worldsense-AbC123xy-task2"));
  EXPECT_EQ(by["worldsense-AbC123xy-task2"].answer, 2);
  EXPECT_EQ(by["worldsense-AbC123xy-task2"].options[2], "4");
  EXPECT_EQ(by["worldsense-AbC123xy-task2"].task, "Object Counting");
  EXPECT_EQ(by["worldsense-AbC123xy-task2"].category, "Sports");
  EXPECT_EQ(by["worldsense-QrS987zz-task1"].answer, 3);
  EXPECT_EQ(by["worldsense-QrS987zz-task1"].media[0].path, "videos/QrS987zz.mp4");
}

TEST(EvalAdapters, VideoHolmes) {
  auto c = convert_benchmark("videoholmes", test::fixture("bench/videoholmes_test.json"));
  ASSERT_EQ(c.items.size(), 3u);
  EXPECT_EQ(c.items[0].id, "holmes-kqVxN2-1");
  EXPECT_EQ(c.items[0].options.size(), 6u);
  EXPECT_EQ(c.items[0].answer, 1);
  EXPECT_EQ(c.items[1].answer, 3);
  EXPECT_EQ(c.items[0].task, "SR");
  EXPECT_EQ(c.items[2].media[0].path, "videos_cropped/mm81Lp.mp4");
}

TEST(EvalAdapters, OmniBench) {
  auto c = convert_benchmark("omnibench", test::fixture("bench/omnibench.jsonl"));
  ASSERT_EQ(c.items.size(), 3u);
  EXPECT_EQ(c.items[1].id, "omnibench-1");
  EXPECT_EQ(c.items[1].answer, 3);  // answer given as the option's text
  EXPECT_EQ(c.items[2].answer, 1);
  EXPECT_EQ(c.items[0].task, "Action and Activity");
  EXPECT_EQ(c.items[0].category, "speech");
  ASSERT_EQ(c.items[0].media.size(), 2u);
  EXPECT_EQ(c.items[0].media[0].path, "mm_data/audio/0.mp3");
  EXPECT_EQ(c.items[0].media[1].path, "mm_data/image/0.jpg");
  EXPECT_TRUE(c.items[0].context.empty());
  AdapterOptions o;
  o.text_alternative = true;
  auto t = convert_benchmark("omnibench", test::fixture("bench/omnibench.jsonl"), o);
  EXPECT_NE(t.items[0].context.find("Audio: Now add two eggs"), std::string::npos);
  EXPECT_NE(t.items[0].context.find("Image: A person stands"), std::string::npos);
}

TEST(EvalAdapters, Errors) {
  EXPECT_THROW(convert_benchmark("nope", test::fixture("bench/omnibench.jsonl")), Error);
  EXPECT_THROW(convert_benchmark("omnibench", "/no/such/file.jsonl"), Error);
  std::string d = test::tmp_dir("eval_adapt");
  std::ofstream(d + "/bad.json") << R"([{"video_id":"v","Question":"q","Choice":["a","b"],"Answer":"E"}])";
  try {
    convert_benchmark("dailyomni", d + "/bad.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the 2 options"), std::string::npos) << e.what();
  }
}

TEST(EvalAdapters, ConvertCommand) {
  std::string d = test::tmp_dir("eval_convert");
  struct F {
    const char* format;
    std::string in;
    size_t n;
  };
  for (const F& f : {F{"avhbench", test::fixture("bench/avhbench/json"), 6}, F{"dailyomni", test::fixture("bench/dailyomni_qa.json"), 4},
                     F{"worldsense", test::fixture("bench/worldsense_qa.json"), 3},
                     F{"videoholmes", test::fixture("bench/videoholmes_test.json"), 3},
                     F{"omnibench", test::fixture("bench/omnibench.jsonl"), 3}}) {
    const std::string out = d + "/" + f.format + ".jsonl";
    auto r = test::run_cli(std::string("eval convert --format ") + f.format + " --in " + f.in + " --out " + out);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(load_bench(out).size(), f.n) << f.format;
  }
  auto r = test::run_cli("eval convert --format dailyomni --in " + test::fixture("bench/dailyomni_qa.json") + " --out " + d +
                         "/t.jsonl --media-template video=v/{video_id}.mp4,audio=a/{video_id}.wav");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(slurp(d + "/t.jsonl").find("\"audio\":\"a/0x9dKq1.wav\""), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Summary and result files

TEST(EvalSummary, AccuracyPairsAndSeeds) {
  std::vector<Item> items;
  for (int i = 0; i < 10; ++i) {
    Item it = mc({"a", "b"}, 0);
    it.id = "i" + std::to_string(i);
    it.task = i < 5 ? "t1" : "t2";
    items.push_back(it);
  }
  std::map<RecordKey, Record> recs;
  auto put = [&](const std::string& s, int seed, int i, bool ok) {
    Record r;
    r.id = items[i].id;
    r.strategy = s;
    r.seed = seed;
    r.correct = ok;
    r.pred = ok ? 0 : (i % 3 == 0 ? -1 : 1);
    recs[RecordKey{s, seed, r.id}] = r;
  };
  for (int seed : {1, 2})
    for (int i = 0; i < 10; ++i) {
      put("baseline", seed, i, i < 4);                 // 40%
      put("outro", seed, i, i < 7 + (seed == 2 ? 1 : 0));  // 70%, 80%
    }
  SummaryConfig cfg;
  cfg.strategies = {"outro", "baseline"};  // the reference is "baseline" wherever it is listed
  cfg.seeds = {1, 2};
  cfg.bootstrap_resamples = 2000;
  json s = summarize(items, recs, cfg);
  EXPECT_EQ(s["reference"], "baseline");
  EXPECT_NEAR(s["accuracy"]["baseline"]["mean"].get<double>(), 0.4, 1e-12);
  EXPECT_NEAR(s["accuracy"]["outro"]["mean"].get<double>(), 0.75, 1e-12);
  EXPECT_NEAR(s["accuracy"]["outro"]["std"].get<double>(), std::sqrt(0.005), 1e-12);
  EXPECT_NEAR(s["accuracy"]["outro"]["per_task"]["t1"]["mean"].get<double>(), 1.0, 1e-12);
  EXPECT_NEAR(s["accuracy"]["outro"]["per_task"]["t2"]["mean"].get<double>(), 0.5, 1e-12);
  EXPECT_EQ(s["accuracy"]["outro"]["per_task"]["t2"]["n"], 5);
  const auto& c = s["comparisons"]["outro"];
  EXPECT_EQ(c["vs"], "baseline");
  EXPECT_NEAR(c["diff"].get<double>(), 0.35, 1e-12);
  ASSERT_EQ(c["per_seed"].size(), 2u);
  EXPECT_EQ(c["per_seed"][0]["b"], 3);
  EXPECT_EQ(c["per_seed"][0]["c"], 0);
  EXPECT_NEAR(c["per_seed"][0]["p_mcnemar"].get<double>(), 0.25, 1e-12);
  EXPECT_EQ(c["per_seed"][1]["b"], 4);
  EXPECT_NEAR(c["p_mcnemar_max"].get<double>(), 0.25, 1e-12);
  EXPECT_LE(c["ci_low"].get<double>(), 0.35);
  EXPECT_GE(c["ci_high"].get<double>(), 0.35);
  EXPECT_FALSE(s["comparisons"].contains("baseline"));
  const std::string table = format_table(s);
  EXPECT_NE(table.find("75.0% ± 7.1"), std::string::npos) << table;
  EXPECT_NE(table.find("+35.0"), std::string::npos) << table;
  const std::string html = render_html(s);
  EXPECT_NE(html.find("Accuracy per task"), std::string::npos);
  EXPECT_NE(html.find("class=\"bar\""), std::string::npos);
  // one record missing: no summary
  recs.erase(RecordKey{"outro", 2, "i3"});
  try {
    summarize(items, recs, cfg);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("1 (strategy, seed, item) records missing (outro/seed 2/i3)"),
              std::string::npos)
        << e.what();
  }
}

TEST(EvalResults, AppendResumeAndTornLine) {
  std::string d = test::tmp_dir("eval_store");
  Item it = mc({"a", "b"}, 1);
  {
    ResultStore s(d, 0);
    Record r;
    r.id = "x";
    r.strategy = "baseline";
    r.pred = 1;
    r.correct = true;
    s.append(r, it);
    EXPECT_TRUE(s.done("baseline", 0, "x"));
  }
  const fs::path f = fs::path(d) / "results" / "baseline.rank0.jsonl";
  std::ofstream(f, std::ios::app) << R"({"id":"y","strategy":"base)";  // a writer killed mid-line
  std::ofstream(fs::path(d) / "results" / "baseline.rank1.jsonl") << R"({"id":"z","strategy":"baseline","seed":0,"correct":false})" "\n";
  ResultStore s(d, 0);
  EXPECT_TRUE(s.done("baseline", 0, "x"));
  EXPECT_TRUE(s.done("baseline", 0, "z"));  // another rank's record counts as done
  EXPECT_FALSE(s.done("baseline", 0, "y"));
  EXPECT_EQ(slurp(f).back(), '\n');  // the torn line was cut
  EXPECT_EQ(count_lines(f), 1u);
  auto all = read_all_records(d);
  EXPECT_EQ(all.size(), 2u);
  EXPECT_EQ(all.at(RecordKey{"baseline", 0, "x"}).pred, 1);
}

TEST(EvalSynth, DeterministicAndComplete) {
  SynthOptions o;
  o.n = 30;
  o.seed = 5;
  auto a = synth_items(o), b = synth_items(o);
  ASSERT_EQ(a.size(), 30u);
  std::set<std::string> tasks;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(item_to_json(a[i]), item_to_json(b[i]));
    EXPECT_GE(a[i].answer, 0);
    EXPECT_LT(a[i].answer, int(a[i].options.size()));
    EXPECT_FALSE(a[i].context.empty());
    tasks.insert(a[i].task);
    // the answer is stated by the scene description
    if (a[i].task == "colour" || a[i].task == "shape" || a[i].task == "direction")
      EXPECT_NE(a[i].context.find(a[i].options[a[i].answer]), std::string::npos) << a[i].context;
  }
  EXPECT_GE(tasks.size(), 5u);
  o.seed = 6;
  EXPECT_NE(item_to_json(synth_items(o)[0]).dump() + item_to_json(synth_items(o)[1]).dump(),
            item_to_json(a[0]).dump() + item_to_json(a[1]).dump());
}

// ---------------------------------------------------------------------------------------------
// `outro eval` end to end

TEST(EvalCli, SynthMakesClipsWithFfmpeg) {
  ASSERT_FALSE(find_ffmpeg().empty()) << "ffmpeg is required (scripts/apt-packages.txt)";
  std::string d = synth_bench();
  auto items = load_bench(d + "/bench.jsonl");
  ASSERT_EQ(items.size(), 12u);
  EXPECT_TRUE(find_missing_media(items, d + "/media").empty());
  EXPECT_GT(fs::file_size(d + "/media/clips/synth-000.mp4"), 100u);
  EXPECT_GT(fs::file_size(d + "/media/clips/synth-000.wav"), 1000u);
}

TEST(EvalCli, EndToEndSummaryTableAndHtml) {
  std::string d = synth_bench();
  std::string out = test::tmp_dir("eval_e2e");
  auto r = test::run_cli("eval --model " + tiny_model() + " --bench " + d + "/bench.jsonl --media-root " + d +
                         "/media --strategies baseline --out " + out + " --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("strategy"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("task accuracy"), std::string::npos) << r.out;
  EXPECT_EQ(count_lines(fs::path(out) / "results" / "baseline.rank0.jsonl"), 12u);
  EXPECT_EQ(count_lines(fs::path(out) / "merged" / "baseline.jsonl"), 12u);
  json s = json::parse(slurp(fs::path(out) / "summary.json"));
  EXPECT_EQ(s["n_items"], 12);
  EXPECT_EQ(s["meta"]["sampling"], "greedy");
  EXPECT_TRUE(s["accuracy"]["baseline"].contains("per_task"));
  EXPECT_TRUE(s["accuracy"]["baseline"].contains("per_category"));
  EXPECT_NE(slurp(fs::path(out) / "report.html").find("<html>"), std::string::npos);
  // a finished run started again has nothing left to do and reports the same
  auto again = test::run_cli("eval --model " + tiny_model() + " --bench " + d + "/bench.jsonl --media-root " + d +
                             "/media --strategies baseline --out " + out + " --threads 1");
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("0 of this rank's 12 runs left"), std::string::npos) << again.out;
  EXPECT_EQ(count_lines(fs::path(out) / "results" / "baseline.rank0.jsonl"), 12u);
}

TEST(EvalCli, KilledRunResumesAndLosesNothing) {
  std::string d = synth_bench();
  const std::string common =
      "eval --model " + tiny_model() + " --bench " + d + "/bench.jsonl --media-root " + d + "/media --threads 1 --seeds 2 --strategies baseline --no-progress --out ";
  std::string full = test::tmp_dir("eval_full"), part = test::tmp_dir("eval_part");
  auto r = test::run_cli(common + full);
  ASSERT_EQ(r.code, 0) << r.out;
  // interrupted after 7 of 24 records, then a torn half-line as a SIGKILL mid-write leaves it
  r = test::run_cli(common + part + " --stop-after 7");
  ASSERT_EQ(r.code, 3) << r.out;
  const fs::path f = fs::path(part) / "results" / "baseline.rank0.jsonl";
  EXPECT_EQ(count_lines(f), 7u);
  std::ofstream(f, std::ios::app) << R"({"id":"synth-0)";
  r = test::run_cli(common + part);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("17 of this rank's 24 runs left (resuming)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dropped an unfinished last line"), std::string::npos) << r.out;
  EXPECT_EQ(count_lines(f), 24u);
  EXPECT_EQ(summary_without_run(fs::path(part) / "summary.json"), summary_without_run(fs::path(full) / "summary.json"));
  json s = json::parse(slurp(fs::path(full) / "summary.json"));
  EXPECT_EQ(s["seeds"], json::array({1, 2}));
  EXPECT_TRUE(s["accuracy"]["baseline"]["per_seed"].contains("2"));
  EXPECT_TRUE(s["meta"]["sampling"].is_object());
  // other decoding settings in the same folder are refused, not mixed
  r = test::run_cli(common + part + " --max-new-tokens 3");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("another max_new_tokens"), std::string::npos) << r.out;
}

TEST(EvalCli, TornSettingsFileIsNamedNotParsedAsGarbage) {
  std::string d = synth_bench();
  std::string out = test::tmp_dir("eval_torn");
  std::ofstream(fs::path(out) / "config.json") << R"({"bench": ")";
  auto r = test::run_cli("eval --model " + tiny_model() + " --bench " + d + "/bench.jsonl --media-root " + d +
                         "/media --strategies baseline --threads 1 --no-progress --out " + out);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("config.json is not a whole JSON object"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(fs::path(out) / "summary.json"));
}

TEST(EvalCli, MpirunTwoRanksEqualsOneProcess) {
  const char* path = std::getenv("PATH");
  bool have = false;
  for (auto& dir : {std::string("/usr/bin"), std::string("/usr/local/bin")})
    have = have || fs::exists(dir + "/mpirun");
  ASSERT_TRUE(have || (path && std::system("command -v mpirun >/dev/null 2>&1") == 0))
      << "mpirun (Open MPI, Debian openmpi-bin) is required: scripts/apt-packages.txt installs it";
  std::string d = synth_bench();
  const std::string args = " eval --model " + tiny_model() + " --bench " + d + "/bench.jsonl --media-root " + d +
                           "/media --strategies baseline --threads 1 --no-progress --out ";
  std::string one = test::tmp_dir("eval_one"), two = test::tmp_dir("eval_mpi");
  auto r = test::run_cli(args + one);
  ASSERT_EQ(r.code, 0) << r.out;
  const char* bin = std::getenv("OUTRO_BIN");
  const std::string outro = bin ? bin : std::string(OUTRO_BINARY_DIR) + "/outro";
  const std::string cmd = "mpirun --allow-run-as-root --oversubscribe -n 2 " + outro + args + two + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string text;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, k);
  const int st = pclose(p);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << text;
  // each rank wrote its own share, rank 0 merged
  const auto r0 = count_lines(fs::path(two) / "results" / "baseline.rank0.jsonl");
  const auto r1 = count_lines(fs::path(two) / "results" / "baseline.rank1.jsonl");
  EXPECT_EQ(r0, 6u);
  EXPECT_EQ(r1, 6u);
  EXPECT_TRUE(fs::exists(fs::path(two) / "ranks" / "done.rank1.json"));
  EXPECT_EQ(summary_without_run(fs::path(two) / "summary.json"), summary_without_run(fs::path(one) / "summary.json"));
  EXPECT_EQ(slurp(fs::path(two) / "merged" / "baseline.jsonl"), slurp(fs::path(one) / "merged" / "baseline.jsonl"));
  EXPECT_EQ(json::parse(slurp(fs::path(two) / "summary.json"))["run"]["ranks"], 2);
  // the table is printed once, by rank 0
  size_t tables = 0;
  for (size_t q = text.find("reference: baseline"); q != std::string::npos; q = text.find("reference: baseline", q + 1)) ++tables;
  EXPECT_EQ(tables, 1u) << text;
}

TEST(EvalCli, MissingMediaAreReported) {
  std::string d = test::tmp_dir("eval_missing");
  auto r = test::run_cli("eval synth --out " + d + " --n 4 --seed 1");
  ASSERT_EQ(r.code, 0) << r.out;
  fs::remove(d + "/media/clips/synth-002.wav");
  const std::string args = "eval --model " + tiny_model() + " --bench " + d + "/bench.jsonl --media-root " + d +
                           "/media --strategies baseline --no-progress --out ";
  r = test::run_cli(args + d + "/o1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("1 media file(s) of 1 item(s) not found"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("synth-002: " + d + "/media/clips/synth-002.wav"), std::string::npos) << r.out;
  r = test::run_cli(args + d + "/o2 --allow-missing-media");
  EXPECT_EQ(r.code, 0) << r.out;
  // a wrong media root names every file
  r = test::run_cli(args + d + "/o3 --media-root /nonexistent");
  EXPECT_NE(r.out.find("8 media file(s) of 4 item(s)"), std::string::npos) << r.out;
}

TEST(EvalCli, StrategiesAndErrors) {
  std::string d = synth_bench();
  const std::string base = "eval --model " + tiny_model() + " --bench " + d + "/bench.jsonl --media-root " + d +
                           "/media --no-progress --limit 2 --out ";
  auto r = test::run_cli(base + test::tmp_dir("eval_bad1") + " --strategies baseline,no-such-strategy");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("no-such-strategy"), std::string::npos) << r.out;
  r = test::run_cli(base + test::tmp_dir("eval_bad2") + " --strategies baseline,baseline");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("listed twice"), std::string::npos) << r.out;
  r = test::run_cli(base + test::tmp_dir("eval_bad3") + " --strategies ../x");
  EXPECT_NE(r.out.find("is not a strategy name"), std::string::npos) << r.out;
  r = test::run_cli("eval --bench /no/such.jsonl --out /tmp/x");
  EXPECT_NE(r.out.find("cannot open the benchmark file"), std::string::npos) << r.out;
  // the four strategies of the paper's ablation
  std::string out = test::tmp_dir("eval_four");
  r = test::run_cli(base + out + " --strategies baseline,outro,outro-align-only,outro-sinkout-only");
  ASSERT_EQ(r.code, 0) << r.out;
  json s = json::parse(slurp(fs::path(out) / "summary.json"));
  EXPECT_EQ(s["comparisons"].size(), 3u);
}
