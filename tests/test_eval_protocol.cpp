// The OutRo authors' benchmark protocol (docs/eval.md): their two question files convert with the
// published counts, prompts and answers; their answer readers; the conversation text equals what
// their script builds (written here from ../shared/docs/method.md and their processor, not from our
// code); a synthetic clip runs end to end under --protocol outro on the omni demo model, resumes
// after a kill and rescores.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "eval/adapters.h"
#include "eval/bench.h"
#include "eval/extract.h"
#include "eval/prompt.h"
#include "kernels/backend.h"
#include "models/chat_prompt.h"
#include "models/model.h"
#include "models/multimodal.h"
#include "models/multimodal_config.h"
#include "models/multimodal_input.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace outro;
using namespace outro::eval;

namespace {

const std::string kOfficial = test::source_dir() + "/../shared/benchmarks/official/";
const char* kSystem =
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving auditory and visual "
    "inputs, as well as generating text and speech.";

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<json> json_lines(const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l))
    if (!l.empty() && l[0] == '{') out.push_back(json::parse(l));
  return out;
}

std::vector<json> jsonl_file(const fs::path& p) { return json_lines(slurp(p)); }

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

Item yes_no_item() {
  Item it;
  it.id = "y";
  it.question = "q";
  it.options = {"yes", "no"};
  it.answer = 0;
  return it;
}

Item abcd_item() {
  Item it;
  it.id = "m";
  it.question = "q";
  it.options = {"w", "x", "y", "z"};
  it.answer = 1;
  return it;
}

const std::string kDemo = test::source_dir() + "/models/outro-omni-demo";

// eval synth clips (1 s, 4 fps, a tone): a benchmark in the authors' AVHBench form and one in
// their Daily-Omni form whose videos are those clips.
struct ProtocolBench {
  std::string dir, avh, daily;
};
const ProtocolBench& protocol_bench() {
  static ProtocolBench b = [] {
    ProtocolBench p;
    p.dir = test::tmp_dir("eval_protocol");
    auto r = test::run_cli("eval synth --out " + p.dir + " --n 4 --seed 5");
    EXPECT_EQ(r.code, 0) << r.out;
    write(p.dir + "/avh_src.json", R"J([
      {"video_id": "synth-000", "task": "AV Matching", "text": "Are the contexts of audio and visual content matching?", "label": "Yes"},
      {"video_id": "synth-001", "task": "Video-driven Audio Hallucination", "text": "Is the circle making sound in the audio?", "label": "no"},
      {"video_id": "synth-002", "task": "AV Hallucination (Audio_only)", "text": "Is the circle making sound in the audio?", "label": "No"},
      {"video_id": "synth-003", "task": "AV Hallucination (Video_only)", "text": "Is the circle visible in the video?", "label": "Yes"}
    ])J");
    r = test::run_cli("eval convert --format avhbench --in " + p.dir + "/avh_src.json --out " + p.dir +
                      "/avh.jsonl --tasks all --media-template video=clips/{video_id}.mp4");
    EXPECT_EQ(r.code, 0) << r.out;
    p.avh = p.dir + "/avh.jsonl";
    json d = json::array();
    for (int i = 0; i < 2; ++i)
      d.push_back({{"video", "clips/synth-00" + std::to_string(i) + ".mp4"},
                   {"audio", "clips/synth-00" + std::to_string(i) + ".wav"},
                   {"conversations",
                    {{{"from", "human"},
                      {"value", "<image>\nSelect the best answer.\nWhich colour is the shape?\nred\nblue\ngreen\nyellow\n"
                                "Answer with the option's letter. The best answer is: "}},
                     {{"from", "gpt"}, {"value", i == 0 ? "A. red" : "c. green"}}}},
                   {"id", i}});
    write(p.dir + "/daily_src.json", d.dump());
    r = test::run_cli("eval convert --format dailyomni --in " + p.dir + "/daily_src.json --out " + p.dir + "/daily.jsonl");
    EXPECT_EQ(r.code, 0) << r.out;
    p.daily = p.dir + "/daily.jsonl";
    return p;
  }();
  return b;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The authors' question files (CI reads ../shared/benchmarks/official/)

TEST(EvalOfficial, AVHBenchAuthorsFile) {
  const std::string f = kOfficial + "avhbench.json";
  ASSERT_TRUE(fs::exists(f)) << f << " is missing: the authors' question files live in ../shared/benchmarks/official";
  Conversion c = convert_benchmark("avhbench", f);
  ASSERT_EQ(c.items.size(), 5302u);
  EXPECT_TRUE(c.skipped.empty());
  std::map<std::string, int> tasks;
  int yes = 0;
  std::set<std::string> ids;
  for (size_t i = 0; i < c.items.size(); ++i) {
    const Item& it = c.items[i];
    ++tasks[it.task];
    yes += it.answer == 0;
    ids.insert(it.id);
    ASSERT_EQ(it.index, (long long)i);  // file order, every record kept
    ASSERT_TRUE(it.yes_no());
    ASSERT_EQ(it.prompt, it.question + " Answer yes or no.") << it.id;
    ASSERT_EQ(it.prompt.find("Question:"), std::string::npos);
    ASSERT_EQ(it.media.size(), 1u);
    ASSERT_EQ(it.media[0].kind, "video");
  }
  EXPECT_EQ(ids.size(), 5302u);
  EXPECT_EQ(tasks, (std::map<std::string, int>{{"Video-driven Audio Hallucination", 2290},
                                               {"AV Matching", 1876},
                                               {"Audio-driven Video Hallucination", 1136}}));
  EXPECT_EQ(yes, 2651);
  const Item& first = c.items.front();
  EXPECT_EQ(first.prompt, "Are the contexts of audio and visual content matching? Answer yes or no.");
  EXPECT_EQ(first.answer, 1);  // "No"
  EXPECT_EQ(first.task, "AV Matching");
  EXPECT_EQ(first.media[0].path, "video/01162.mp4");
  EXPECT_EQ(c.items.back().media[0].path, "video/02205.mp4");
  EXPECT_EQ(c.items[1].prompt, "Is the car making sound in the audio? Answer yes or no.");
  EXPECT_EQ(c.items[1].answer, 0);
}

TEST(EvalOfficial, DailyOmniAuthorsFile) {
  const std::string f = kOfficial + "dailyomni.json";
  ASSERT_TRUE(fs::exists(f)) << f << " is missing";
  Conversion c = convert_benchmark("dailyomni", f);
  ASSERT_EQ(c.items.size(), 1197u);
  std::map<int, int> letters;
  for (size_t i = 0; i < c.items.size(); ++i) {
    const Item& it = c.items[i];
    ASSERT_EQ(it.index, (long long)i);
    ASSERT_EQ(it.id, "dailyomni-" + std::to_string(i));
    ASSERT_EQ(it.options.size(), 4u) << it.id;
    ASSERT_TRUE(it.task.empty());  // no --qa
    ++letters[it.answer];
    ASSERT_EQ(it.prompt.find("<image>"), std::string::npos);
    ASSERT_FALSE(std::isspace(static_cast<unsigned char>(it.prompt.back())));
    ASSERT_EQ(it.prompt.rfind("Select the best answer", 0), 0u) << it.id;
    ASSERT_EQ(it.media.size(), 1u);
    ASSERT_EQ(it.media[0].path.rfind("Videos/", 0), 0u);
    ASSERT_NE(it.media[0].path.find("_video.mp4"), std::string::npos);
  }
  // the gpt turns' letters, counted with jq/python on the file
  EXPECT_EQ(letters, (std::map<int, int>{{0, 278}, {1, 318}, {2, 306}, {3, 295}}));
  const Item& it = c.items[0];
  EXPECT_EQ(it.prompt,
            "Select the best answer to the following multiple-choice question based on the video and audio. Respond "
            "with only the letter (A, B, C, or D) of the correct option.\n"
            "What visual elements were displayed immediately after Dr. Rajani's 'BOTOX WITHOUT THE BOTOX' video "
            "concluded?\n"
            "Still product bottle \xe2\x86\x92 Price text overlay\n"
            "Facial treatment demonstration \xe2\x86\x92 Presenter holding product while explaining\n"
            "Presenter's torso shot \xe2\x86\x92 Secondary screen activation\n"
            "Bookshelf backdrop \xe2\x86\x92 Close-up of string lights\n"
            "Answer with the option's letter from the given choices directly and only give the best option. The best "
            "answer is:");
  EXPECT_EQ(it.answer, 1);  // "B. Facial treatment ..."
  EXPECT_EQ(it.question,
            "What visual elements were displayed immediately after Dr. Rajani's 'BOTOX WITHOUT THE BOTOX' video "
            "concluded?");
  EXPECT_EQ(it.options[3], "Bookshelf backdrop \xe2\x86\x92 Close-up of string lights");
  EXPECT_EQ(it.media[0].path, "Videos/Ec_lQgZ9wlg/Ec_lQgZ9wlg_video.mp4");

  // --qa: Daily-Omni's qa.json gives the Type of the questions it holds
  const std::string d = test::tmp_dir("eval_official_qa");
  write(d + "/qa.json", json::array({{{"video_id", "Ec_lQgZ9wlg"},
                                      {"Question", it.question},
                                      {"Choice", {"A. a", "B. b", "C. c", "D. d"}},
                                      {"Answer", "B"},
                                      {"Type", "Event Sequence"}}})
                            .dump());
  AdapterOptions o;
  o.qa_file = d + "/qa.json";
  Conversion q = convert_benchmark("dailyomni", f, o);
  ASSERT_EQ(q.items.size(), 1197u);
  EXPECT_EQ(q.items[0].task, "Event Sequence");
  EXPECT_TRUE(q.items[1].task.empty());
  EXPECT_EQ(q.notes.at("questions not found in --qa (no task)"), 1196);
}

TEST(EvalOfficial, WrongFormatNamesFieldsAndRecord) {
  const std::string avh = kOfficial + "avhbench.json", daily = kOfficial + "dailyomni.json";
  std::string e = test::error_of([&] { convert_benchmark("dailyomni", avh); });
  EXPECT_NE(e.find(avh + " [0]"), std::string::npos) << e;
  EXPECT_NE(e.find("\"video\", \"conversations\""), std::string::npos) << e;
  EXPECT_NE(e.find("found \"video_id\", \"task\", \"text\", \"label\""), std::string::npos) << e;
  e = test::error_of([&] { convert_benchmark("avhbench", daily); });
  EXPECT_NE(e.find(daily + " [0]"), std::string::npos) << e;
  EXPECT_NE(e.find("found \"video\", \"audio\", \"conversations\", \"id\""), std::string::npos) << e;
  for (const char* fmt : {"worldsense", "videoholmes", "omnibench"}) {
    e = test::error_of([&] { convert_benchmark(fmt, daily); });
    EXPECT_NE(e.find("[0]"), std::string::npos) << fmt << ": " << e;
    EXPECT_NE(e.find("found \"video\""), std::string::npos) << fmt << ": " << e;
  }
  // the first bad record is named, not the first record
  const std::string d = test::tmp_dir("eval_wrong_format");
  write(d + "/mixed.json", R"J([{"video_id":"a","task":"AV Matching","text":"t?","label":"Yes"},
                               {"video_id":"b","task":"AV Matching","text":"t?","label":"No"},
                               {"video":"x.mp4","question":"q"}])J");
  e = test::error_of([&] { convert_benchmark("avhbench", d + "/mixed.json"); });
  EXPECT_NE(e.find("mixed.json [2]"), std::string::npos) << e;
  EXPECT_NE(e.find("found \"video\", \"question\""), std::string::npos) << e;
}

// ---------------------------------------------------------------------------------------------
// Adapters: AVHBench's single-modality tasks, file order, OmniBench's unmatched answers

TEST(EvalAdapters, AVHBenchSingleModalityTasks) {
  const std::string d = test::tmp_dir("eval_avh_only");
  write(d + "/qa.json", R"J([
    {"video_id": "00001", "task": "AV Hallucination (Audio)", "text": "Is the dog making sound in the audio?", "label": "Yes"},
    {"video_id": "00001", "task": "AV Hallucination (Audio_only)", "text": "Is the dog making sound in the audio?", "label": "Yes"},
    {"video_id": "00001", "task": "AV Hallucination (Video_only)", "text": "Is the dog visible in the video?", "label": "No"},
    {"video_id": "00001", "task": "AV Captioning", "text": "Describe what you see and hear.", "label": "A dog barks."},
    {"video_id": "00002.mp4", "task": "AV Matching", "text": " Do they match? Please answer Yes or No. ", "label": "no"}
  ])J");
  Conversion c = convert_benchmark("avhbench", d + "/qa.json");
  ASSERT_EQ(c.items.size(), 2u);  // the audio-visual questions only
  EXPECT_EQ(c.items[0].index, 0);
  EXPECT_EQ(c.items[1].index, 4);
  EXPECT_EQ(c.items[1].prompt, "Do they match? Please answer Yes or No.");  // already asks: nothing added
  EXPECT_EQ(c.items[1].media[0].path, "video/00002.mp4");                 // not .mp4.mp4
  int left_out = 0;
  for (auto& [why, n] : c.skipped)
    if (why.find("single-modality") != std::string::npos) left_out += n;
  EXPECT_EQ(left_out, 2);
  EXPECT_EQ(c.skipped.size(), 3u);  // two single-modality tasks, the captioning one

  AdapterOptions all;
  all.tasks = {"all"};
  Conversion a = convert_benchmark("avhbench", d + "/qa.json", all);
  ASSERT_EQ(a.items.size(), 4u);
  const Item& audio_only = a.items[1];
  EXPECT_EQ(audio_only.task, "AV Hallucination (Audio_only)");
  ASSERT_EQ(audio_only.media.size(), 1u);
  EXPECT_EQ(audio_only.media[0].kind, "audio");  // the clip's sound alone
  EXPECT_EQ(audio_only.media[0].path, "video/00001.mp4");
  const Item& video_only = a.items[2];
  ASSERT_EQ(video_only.media.size(), 1u);
  EXPECT_EQ(video_only.media[0].kind, "video");
  EXPECT_EQ(video_only.audio_in_video, 0);  // the frames alone
  // the flag survives the harness's JSONL
  Item back = item_from_json(item_to_json(video_only), "t");
  EXPECT_EQ(back.audio_in_video, 0);
  EXPECT_EQ(back.prompt, "Is the dog visible in the video? Answer yes or no.");
  EXPECT_EQ(back.index, 2);
  EXPECT_EQ(item_from_json(item_to_json(a.items[0]), "t").audio_in_video, -1);

  AdapterOptions one;
  one.tasks = {"AV Hallucination (Audio_only)"};
  Conversion o = convert_benchmark("avhbench", d + "/qa.json", one);
  ASSERT_EQ(o.items.size(), 1u);
  EXPECT_EQ(o.items[0].index, 1);
}

TEST(EvalAdapters, FileOrderKept) {
  const std::string d = test::tmp_dir("eval_order");
  write(d + "/ws.json", R"J({
    "zz9": {"video_id": "zz9", "domain": "Music",
            "task2": {"question": "q2", "candidates": ["A. a", "B. b"], "answer": "B", "task_type": "t"},
            "task1": {"question": "q1", "candidates": ["A. a", "B. b"], "answer": "A", "task_type": "t"}},
    "aa1": {"video_id": "aa1", "domain": "Sports",
            "task1": {"question": "q3", "candidates": ["A. a", "B. b"], "answer": "A", "task_type": "t"}}
  })J");
  Conversion c = convert_benchmark("worldsense", d + "/ws.json");
  ASSERT_EQ(c.items.size(), 3u);
  EXPECT_EQ(c.items[0].id, "worldsense-zz9-task2");
  EXPECT_EQ(c.items[1].id, "worldsense-zz9-task1");
  EXPECT_EQ(c.items[2].id, "worldsense-aa1-task1");
  EXPECT_EQ(c.items[2].index, 2);
  write(d + "/holmes.json", R"J([
    {"video ID": "zz", "Question ID": "2", "Question Type": "SR", "Question": "q", "Options": {"B": "b", "A": "a"}, "Answer": "B"},
    {"video ID": "aa", "Question ID": "1", "Question Type": "SR", "Question": "q", "Options": {"A": "a", "B": "b"}, "Answer": "A"}
  ])J");
  Conversion h = convert_benchmark("videoholmes", d + "/holmes.json");
  ASSERT_EQ(h.items.size(), 2u);
  EXPECT_EQ(h.items[0].id, "holmes-zz-2");
  EXPECT_EQ(h.items[0].options[0], "a");  // options by letter
  EXPECT_EQ(h.items[0].answer, 1);
}

TEST(EvalAdapters, OmniBenchUnmatchedAnswerIsSkippedAndCounted) {
  const std::string d = test::tmp_dir("eval_omnibench_skip");
  write(d + "/b.jsonl",
        R"J({"index": 0, "task type": "t", "audio type": "speech", "question": "q", "options": ["Red", "Blue"], "answer": " blue "}
{"index": 1, "task type": "t", "audio type": "speech", "question": "q", "options": ["Red", "Blue"], "answer": "Green"}
{"index": 3, "task type": "t", "audio type": "speech", "question": "q", "options": ["Red", "Blue"], "answer": "(B) Blue."}
{"index": 2, "task type": "t", "audio type": "music", "question": "q", "options": ["Red", "Blue"], "answer": "Red"}
)J");
  Conversion c = convert_benchmark("omnibench", d + "/b.jsonl");
  ASSERT_EQ(c.items.size(), 3u);
  EXPECT_EQ(c.items[0].answer, 1);  // case and spaces aside
  EXPECT_EQ(c.items[1].id, "omnibench-3");  // "(B) Blue.": read as OmniBench's scorer reads it
  EXPECT_EQ(c.items[1].answer, 1);
  EXPECT_EQ(c.items[2].id, "omnibench-2");
  EXPECT_EQ(c.items[2].index, 3);
  EXPECT_EQ(c.skipped.at("answer matches none of the options (nor OmniBench's parser)"), 1);  // "Green"
  EXPECT_EQ(c.notes.size(), 1u);
}

// OmniBench's choice parser, case by case as its answer_parsing.py reads them.
TEST(EvalAnswerRules, OmniBenchParser) {
  const std::vector<std::string> o = {"a dog", "a cat", "a bird", "a fish"};
  EXPECT_EQ(omnibench_choice("(C)", o), 2);
  EXPECT_EQ(omnibench_choice("I pick (B), not (D)", o), 3);  // several in brackets: the last one
  EXPECT_EQ(omnibench_choice("B", o), 1);                    // "B " once padded with spaces
  EXPECT_EQ(omnibench_choice("D.", o), 3);
  EXPECT_EQ(omnibench_choice("A man says C is right", o), 2);  // "A " and "C ": the one found last
  EXPECT_EQ(omnibench_choice("it sounds like a cat to me", o), 1);  // more than five words: option text
  EXPECT_EQ(omnibench_choice("a cat", o), -1);  // too short for the text match, no letter
  EXPECT_EQ(omnibench_choice("", o), -1);
  Item it;
  it.options = o;
  EXPECT_EQ(read_answer(AnswerRule::OmniBench, "(A)", it).index, 0);
  EXPECT_EQ(read_answer(AnswerRule::OmniBench, "(A)", it).method, "omnibench");
}

// ---------------------------------------------------------------------------------------------
// The authors' answer readers (their eval scripts' rules, as method.md states them)

TEST(EvalAnswerRules, AVHBenchFirstWholeYesNoWord) {
  const Item yn = yes_no_item();
  auto r = [&](const std::string& s) { return read_answer(AnswerRule::AVHBench, s, yn).index; };
  EXPECT_EQ(r("Yes"), 0);
  EXPECT_EQ(r("no."), 1);
  EXPECT_EQ(r("  NO "), 1);
  EXPECT_EQ(r("I think yes, not no"), 0);  // the first one
  EXPECT_EQ(r("Surely no, yes"), 1);
  EXPECT_EQ(r("Yesterday"), -1);  // not a whole word
  EXPECT_EQ(r("nope"), -1);
  EXPECT_EQ(r("yes_no"), -1);  // '_' is a word character
  EXPECT_EQ(r(""), -1);
  EXPECT_EQ(read_answer(AnswerRule::AVHBench, "Yes", yn).method, "avhbench_yes_no");
  EXPECT_EQ(read_answer(AnswerRule::AVHBench, "maybe", yn).method, "unparsed");
}

TEST(EvalAnswerRules, DailyOmniLetterRules) {
  const Item m = abcd_item();
  auto r = [&](const std::string& s) { return read_answer(AnswerRule::DailyOmni, s, m).index; };
  EXPECT_EQ(r("B"), 1);
  EXPECT_EQ(r(" b. blue"), 1);      // stripped and upper-cased
  EXPECT_EQ(r("(C)"), 2);           // "(X)" anywhere
  EXPECT_EQ(r("it is [D]"), 3);     // "[X]" anywhere
  EXPECT_EQ(r("C, or maybe (A)"), 0);  // letters are tried A first: "(A)" wins over the leading C
  EXPECT_EQ(r("Answer: D"), 0);     // starts with "A" once upper-cased: the authors' rule reads A
  EXPECT_EQ(r("The answer: d"), 3);  // no leading letter, no brackets: the letter after "Answer:"
  EXPECT_EQ(r("The answer is B"), -1);  // none of their patterns
  EXPECT_EQ(r("E"), -1);
  EXPECT_EQ(r(""), -1);
  // the harness's own reader reads that one
  EXPECT_EQ(read_answer(AnswerRule::Harness, "The answer is B", m).index, 1);
  // authors: AVHBench's reader for yes/no items, Daily-Omni's for the others
  EXPECT_EQ(read_answer(AnswerRule::Authors, "No", yes_no_item()).index, 1);
  EXPECT_EQ(read_answer(AnswerRule::Authors, "No", m).index, -1);
  EXPECT_EQ(read_answer(AnswerRule::Authors, "D", m).index, 3);
  EXPECT_THROW(parse_answer_rule("mine"), Error);
  EXPECT_EQ(parse_answer_rule("dailyomni"), AnswerRule::DailyOmni);
}

// ---------------------------------------------------------------------------------------------
// The conversation text and the run

TEST(EvalProtocol, PromptTextIsTheAuthorsConversation) {
  const ProtocolBench& b = protocol_bench();
  // Media need not exist for --print-prompts: it reads neither the videos nor the weights.
  auto r = test::run_cli("eval --model " + kDemo + " --bench " + b.avh + " --media-root /nonexistent --protocol outro " +
                         "--print-prompts --out " + b.dir + "/unused");
  ASSERT_EQ(r.code, 0) << r.out;
  auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 4u) << r.out;
  // The authors' script: conversation [system: their text], [user: video, text]; Qwen2.5-Omni's chat
  // template renders a video part as <|vision_bos|><|VIDEO|><|vision_eos|>; with use_audio_in_video the
  // audio gets no placeholder of its own in this text (the processor later replaces the whole
  // <|vision_bos|><|VIDEO|><|vision_eos|> with the interleaved video/audio block).
  const std::string head = std::string("<|im_start|>system\n") + kSystem + "<|im_end|>\n<|im_start|>user\n";
  const std::string tail = "<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(lines[0]["id"], "avh-synth-000-0");
  EXPECT_EQ(lines[0]["text"], head + "<|vision_bos|><|VIDEO|><|vision_eos|>" +
                                  "Are the contexts of audio and visual content matching? Answer yes or no." + tail);
  EXPECT_EQ(lines[0]["use_audio_in_video"], true);
  EXPECT_EQ(lines[0]["index"], 0);
  // Audio_only: the sound alone; Video_only: the frames alone
  EXPECT_EQ(lines[2]["text"], head + "<|audio_bos|><|AUDIO|><|audio_eos|>" +
                                  "Is the circle making sound in the audio? Answer yes or no." + tail);
  EXPECT_EQ(lines[3]["text"], head + "<|vision_bos|><|VIDEO|><|vision_eos|>" +
                                  "Is the circle visible in the video? Answer yes or no." + tail);
  EXPECT_EQ(lines[3]["use_audio_in_video"], false);

  r = test::run_cli("eval --model " + kDemo + " --bench " + b.daily + " --media-root " + b.dir +
                    "/media --protocol outro --print-prompts --limit 1 --out " + b.dir + "/unused");
  ASSERT_EQ(r.code, 0) << r.out;
  lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 1u);  // --limit
  // the human turn without its <image> line, stripped (the trailing space goes)
  EXPECT_EQ(lines[0]["text"], head + "<|vision_bos|><|VIDEO|><|vision_eos|>" +
                                  "Select the best answer.\nWhich colour is the shape?\nred\nblue\ngreen\nyellow\n"
                                  "Answer with the option's letter. The best answer is:" +
                                  tail);

  // the text is what the run tokenizes: its encoding equals the ids the run builds
  auto tok = Tokenizer::load(kDemo);
  MultimodalConfig mc = load_multimodal_config(kDemo);
  MediaRequest req;
  req.video = "v.mp4";
  req.use_audio_in_video = true;
  const std::string user = "Is the circle visible in the video? Answer yes or no.";
  auto ids = tok->encode(multimodal_chat_text(mc, *tok, req, user, kSystem, chat_prompt(load_config(kDemo), kDemo).media), true, false);
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.end()), multimodal_chat_ids(mc, *tok, req, user, kSystem, chat_prompt(load_config(kDemo), kDemo).media));
}

// The protocol's time step reaches the positions: 1 s per video group instead of the sampled fps's.
TEST(EvalProtocol, VideoSecondPerGridSetsTheTimeStep) {
  const ProtocolBench& b = protocol_bench();
  auto model = Model::load(kDemo);
  auto be = make_cpu_backend();
  MultimodalModel mm(*model, *be);
  auto tok = Tokenizer::load(kDemo);
  MediaRequest req;
  req.video = b.dir + "/media/clips/synth-000.mp4";
  req.use_audio_in_video = true;
  req.qwen_utils_video_budget = true;
  auto ids = multimodal_chat_ids(mm.config(), *tok, req, "Is it red? Answer yes or no.", kSystem,
                                 chat_prompt(model->config(), kDemo).media);
  PreparedPrompt sampled = prepare_multimodal(mm, req, ids);
  req.video_second_per_grid = 1.0;
  PreparedPrompt fixed = prepare_multimodal(mm, req, ids);
  ASSERT_EQ(sampled.media.videos.size(), 1u);
  // a 4 fps clip of 1 s: 4 frames (the minimum), 2 groups; the sampled fps gives 2 / 4 = 0.5 s a group
  EXPECT_DOUBLE_EQ(sampled.media.videos[0].second_per_grid, 0.5);
  EXPECT_DOUBLE_EQ(fixed.media.videos[0].second_per_grid, 1.0);
  ASSERT_EQ(sampled.prefill.ids.size(), fixed.prefill.ids.size());
  // the largest temporal position of the video tokens: group 1 at 0.5 * 25 = 12 vs 1.0 * 25 = 25 after the start
  const size_t n = fixed.prefill.ids.size();
  int max_s = -1, max_f = -1, start = -1;
  for (size_t i = 0; i < n; ++i)
    if (fixed.prefill.modality[i] == uint8_t(Modality::Video)) {
      if (start < 0) start = fixed.prefill.positions[i];
      max_s = std::max(max_s, sampled.prefill.positions[i]);
      max_f = std::max(max_f, fixed.prefill.positions[i]);
    }
  ASSERT_GE(start, 0);
  EXPECT_EQ(max_s - start, 12);
  EXPECT_EQ(max_f - start, 25);
}

TEST(EvalProtocol, EndToEndOnOmniDemoResumesAndRescores) {
  const ProtocolBench& b = protocol_bench();
  const std::string common = "eval --model " + kDemo + " --bench " + b.avh + " --media-root " + b.dir +
                             "/media --protocol outro --strategies baseline,outro --threads 1 --no-progress "
                             "--bootstrap 200 --out ";
  const std::string full = test::tmp_dir("eval_protocol_full"), part = test::tmp_dir("eval_protocol_part");
  auto r = test::run_cli(common + full);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("eval: protocol outro: {"), std::string::npos) << r.out;  // printed at the start
  EXPECT_NE(r.out.find("\"video_second_per_grid\":1.0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("invalid answers (counted wrong): baseline "), std::string::npos) << r.out;
  auto recs = jsonl_file(fs::path(full) / "merged" / "baseline.jsonl");
  ASSERT_EQ(recs.size(), 4u);
  for (auto& x : recs) {
    EXPECT_LE(x["new_tokens"].get<int>(), 1) << x.dump();  // greedy, one new token
    const std::string resp = x["response"];
    EXPECT_EQ(resp.find("<|"), std::string::npos) << x.dump();  // special tokens dropped
    const std::string m = x["method"];
    EXPECT_TRUE(m == "avhbench_yes_no" || m == "unparsed") << m;
    EXPECT_TRUE(x.contains("pred"));
  }
  json s = json::parse(slurp(fs::path(full) / "summary.json"));
  const json& p = s["meta"]["protocol"];
  EXPECT_EQ(p["name"], "outro");
  EXPECT_EQ(p["max_new_tokens"], 1);
  EXPECT_EQ(p["answer_rule"], "authors");
  EXPECT_EQ(p["audio_in_video"], "on");
  EXPECT_EQ(p["video_second_per_grid"], 1.0);
  EXPECT_EQ(p["audio_max_seconds"], 30.0);
  EXPECT_EQ(p["video_budget"]["source"], "qwen-omni-utils");
  EXPECT_EQ(p["video_budget"]["max_frames"], 768);
  EXPECT_EQ(p["skip_special_tokens"], true);
  EXPECT_EQ(p["system"], kSystem);
  EXPECT_EQ(s["meta"]["max_new_tokens"], 1);
  EXPECT_EQ(s["meta"]["sampling"], "greedy");
  EXPECT_TRUE(s["accuracy"]["baseline"].contains("invalid"));
  EXPECT_TRUE(s["accuracy"]["baseline"]["per_task"].contains("AV Hallucination (Audio_only)"));
  // a prompt with the video's own audio is longer than the same with the frames alone
  std::map<std::string, int> tokens;
  for (auto& x : recs) tokens[x["id"]] = x["prompt_tokens"];
  EXPECT_GT(tokens["avh-synth-001-0"], tokens["avh-synth-003-0"] + 20);

  // killed after 3 records, then started again: nothing lost, the same summary
  r = test::run_cli(common + part + " --stop-after 3");
  ASSERT_EQ(r.code, 3) << r.out;
  r = test::run_cli(common + part);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("5 of this rank's 8 runs left (resuming)"), std::string::npos) << r.out;
  json sp = json::parse(slurp(fs::path(part) / "summary.json"));
  s.erase("run");
  sp.erase("run");
  EXPECT_EQ(s, sp);
  // another protocol setting in the same folder is refused
  r = test::run_cli(common + part + " --video-second-per-grid 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("another protocol"), std::string::npos) << r.out;

  // rescored with the harness's reader: same records, the rule recorded, the run's own summary untouched
  const std::string before = slurp(fs::path(full) / "summary.json");
  r = test::run_cli("eval rescore --out " + full + " --bench " + b.avh + " --answer-rule harness --bootstrap 200");
  ASSERT_EQ(r.code, 0) << r.out;
  json rs = json::parse(slurp(fs::path(full) / "rescore-harness" / "summary.json"));
  EXPECT_EQ(rs["n_items"], 4);
  EXPECT_EQ(rs["meta"]["rescored"]["answer_rule"], "harness");
  EXPECT_EQ(rs["meta"]["protocol"]["answer_rule"], "harness");
  EXPECT_EQ(slurp(fs::path(full) / "summary.json"), before);
  // rescored with the same rule: the same accuracy
  r = test::run_cli("eval rescore --out " + full + " --bench " + b.avh + " --answer-rule authors --bootstrap 200");
  ASSERT_EQ(r.code, 0) << r.out;
  json ra = json::parse(slurp(fs::path(full) / "rescore-authors" / "summary.json"));
  EXPECT_EQ(ra["accuracy"], json::parse(before)["accuracy"]);
}

TEST(EvalProtocol, DailyOmniFormRunsWithTheLetterReader) {
  const ProtocolBench& b = protocol_bench();
  const std::string out = test::tmp_dir("eval_protocol_daily");
  auto r = test::run_cli("eval --model " + kDemo + " --bench " + b.daily + " --media-root " + b.dir +
                         "/media --protocol outro --strategies baseline --threads 1 --no-progress --bootstrap 200 --out " +
                         out);
  ASSERT_EQ(r.code, 0) << r.out;
  auto recs = jsonl_file(fs::path(out) / "merged" / "baseline.jsonl");
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0]["answer"], "A");
  EXPECT_EQ(recs[1]["answer"], "C");  // "c. green": the first letter, upper-cased
  for (auto& x : recs) {
    const std::string m = x["method"];
    EXPECT_TRUE(m.rfind("dailyomni_", 0) == 0 || m == "unparsed") << m;
  }
}

// Daily-Omni's own qa.json: the same user text as the authors' file, built around its question;
// --tasks keeps the named tasks of any format.
TEST(EvalAdapters, DailyOmniQaFormGetsTheAuthorsPromptAndTasksFilter) {
  Conversion c = convert_benchmark("dailyomni", test::fixture("bench/dailyomni_qa.json"));
  ASSERT_EQ(c.items.size(), 4u);
  const Item& it = c.items[0];
  std::string want =
      "Select the best answer to the following multiple-choice question based on the video and audio. Respond with "
      "only the letter (A, B, C, or D) of the correct option.\n" +
      it.question + "\n";
  for (auto& o : it.options) want += o + "\n";
  want += "Answer with the option's letter from the given choices directly and only give the best option. The best "
          "answer is:";
  EXPECT_EQ(it.prompt, want);
  EXPECT_EQ(it.index, 0);
  AdapterOptions o;
  o.tasks = {"AV Event Alignment"};
  Conversion f = convert_benchmark("dailyomni", test::fixture("bench/dailyomni_qa.json"), o);
  ASSERT_EQ(f.items.size(), 1u);
  EXPECT_EQ(f.items[0].task, "AV Event Alignment");
  EXPECT_EQ(f.skipped.size(), 3u);  // one reason per task left out
}

TEST(EvalCli, ConvertTasksAndQaFlags) {
  const std::string d = test::tmp_dir("eval_convert_flags");
  const std::string official = kOfficial + "dailyomni.json";
  write(d + "/qa.json", R"J([{"video_id": "Ec_lQgZ9wlg", "Question": "What visual elements were displayed immediately after Dr. Rajani's 'BOTOX WITHOUT THE BOTOX' video concluded?", "Type": "Event Sequence"}])J");
  auto r = test::run_cli("eval convert --format dailyomni --in " + official + " --qa " + d + "/qa.json --tasks 'Event Sequence' --out " +
                         d + "/one.jsonl");
  ASSERT_EQ(r.code, 0) << r.out;
  auto items = load_bench(d + "/one.jsonl");
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].task, "Event Sequence");
  EXPECT_EQ(items[0].index, 0);
  EXPECT_NE(r.out.find("note 1196: questions not found in --qa"), std::string::npos) << r.out;
  r = test::run_cli("eval convert --format avhbench --in " + kOfficial + "avhbench.json --qa " + d + "/qa.json --out " + d +
                    "/x.jsonl");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--qa: only for --format dailyomni"), std::string::npos) << r.out;
  // a qa.json that is not one names what it lacks
  r = test::run_cli("eval convert --format dailyomni --in " + official + " --qa " + kOfficial + "avhbench.json --out " + d +
                    "/x.jsonl");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("avhbench.json [0]: not in the Daily-Omni qa.json (--qa) format"), std::string::npos) << r.out;
}
