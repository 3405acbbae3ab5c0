// Tokenizers from tokenizer.json against the Hugging Face `tokenizers` library's ids and decodes
// (fixtures made by tools/tokenizer_fixtures.py: a Qwen2-style byte-level BPE, a LLaMA-style BPE
// with byte fallback, a Metaspace one, and the demo model's), streaming decode, special tokens,
// the chat template, and the errors a malformed tokenizer.json gives.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/text.h"
#include "tokenizer/tokenizer.h"

namespace outro {
namespace {

using test::error_of;

using json = nlohmann::json;

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string tok_path(const std::string& name) {
  return name == "demo" ? test::source_dir() + "/models/outro-demo/tokenizer.json"
                        : test::fixture("tokenizer/" + name + ".tokenizer.json");
}

json cases_of(const std::string& name) { return json::parse(read(test::fixture("tokenizer/" + name + ".cases.json"))); }

std::string show(const std::string& s) {
  std::string o;
  for (unsigned char c : s) {
    if (c == '\n') o += "\\n";
    else if (c < 0x20) o += "\\x" + std::to_string(c);
    else o += char(c);
  }
  return o;
}

// Streams ids one at a time; every piece must be whole UTF-8 characters.
std::string stream(const Tokenizer& t, const std::vector<int>& ids, bool skip, bool* pieces_valid) {
  StreamDecoder d(t, skip);
  std::string all;
  *pieces_valid = true;
  for (int id : ids) {
    std::string p = d.push(id);
    *pieces_valid = *pieces_valid && text::is_valid_utf8(p);
    all += p;
  }
  std::string f = d.flush();
  *pieces_valid = *pieces_valid && text::is_valid_utf8(f);
  return all + f;
}

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, IdsAndDecodesMatchTheReference) {
  const std::string name = GetParam();
  auto t = Tokenizer::load(tok_path(name));
  json c = cases_of(name);
  ASSERT_GE(c["cases"].size(), 50u);
  EXPECT_EQ(t->vocab_size(), c["vocab_size"].get<int>());
  for (const auto& k : c["cases"]) {
    const std::string text = k["text"];
    const auto ref = k["ids"].get<std::vector<int>>();
    SCOPED_TRACE(name + ": '" + show(text) + "'");
    EXPECT_EQ(t->encode(text), ref) << "reference tokens: " << k["tokens"].dump();
    EXPECT_EQ(t->encode(text, true, true), k["ids_post"].get<std::vector<int>>());
    if (k.contains("normalized")) EXPECT_EQ(t->normalize(text), k["normalized"].get<std::string>());
    EXPECT_EQ(t->decode(ref), k["decoded"].get<std::string>());
    EXPECT_EQ(t->decode(ref, true), k["decoded_skip"].get<std::string>());
    bool valid;
    EXPECT_EQ(stream(*t, ref, false, &valid), k["decoded"].get<std::string>());
    EXPECT_TRUE(valid);
    EXPECT_EQ(stream(*t, ref, true, &valid), k["decoded_skip"].get<std::string>());
    EXPECT_TRUE(valid);
  }
}

TEST_P(TokenizerParity, DecodesArbitraryIdsLikeTheReference) {
  const std::string name = GetParam();
  auto t = Tokenizer::load(tok_path(name));
  const json c = cases_of(name);
  for (const auto& k : c["decode_cases"]) {
    const auto ids = k["ids"].get<std::vector<int>>();
    SCOPED_TRACE(name + ": " + k["ids"].dump());
    EXPECT_EQ(t->decode(ids), k["decoded"].get<std::string>());
    EXPECT_EQ(t->decode(ids, true), k["decoded_skip"].get<std::string>());
    bool valid;
    stream(*t, ids, false, &valid);
    EXPECT_TRUE(valid);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerParity, ::testing::Values("qwen2style", "llamastyle", "metaspace", "demo"));

TEST(Tokenizer, StreamingHoldsBackPartialCharacters) {
  for (const char* name : {"qwen2style", "llamastyle"}) {
    auto t = Tokenizer::load(tok_path(name));
    const std::string text = "a 👨‍👩‍👧 한국 😀!";
    auto ids = t->encode(text);
    StreamDecoder d(*t);
    std::string all;
    int held = 0;
    for (int id : ids) {
      std::string p = d.push(id);
      EXPECT_TRUE(text::is_valid_utf8(p)) << name;
      held += p.empty();
      all += p;
    }
    all += d.flush();
    EXPECT_EQ(all, text) << name;
    EXPECT_GT(held, 0) << name << ": some tokens end inside a character and must be held back";
  }
}

TEST(Tokenizer, SpecialAndAddedTokens) {
  auto t = Tokenizer::load(tok_path("qwen2style"));
  ASSERT_TRUE(t->token_id("<|im_end|>"));
  const int im_end = *t->token_id("<|im_end|>"), call = *t->token_id("<tool_call>");
  EXPECT_TRUE(t->is_special(im_end));
  EXPECT_FALSE(t->is_special(call));
  EXPECT_EQ(t->encode("<|im_end|>"), std::vector<int>{im_end});
  // parse_special = false: the text of a special token is ordinary text; added tokens still match
  auto plain = t->encode("<|im_end|><tool_call>", false);
  EXPECT_GT(plain.size(), 2u);
  EXPECT_EQ(plain.back(), call);
  EXPECT_EQ(t->decode(plain), "<|im_end|><tool_call>");
  EXPECT_EQ(t->decode({im_end, call}, true), "<tool_call>");
  EXPECT_EQ(t->token_bytes(im_end), "<|im_end|>");
  EXPECT_EQ(t->token_bytes(*t->token_id(" the")), " the");
  // LLaMA: the post-processor puts <s> first
  auto l = Tokenizer::load(tok_path("llamastyle"));
  EXPECT_EQ(l->encode("hi", true, true).front(), *l->token_id("<s>"));
  EXPECT_EQ(l->token_bytes(*l->token_id("<0x41>")), "A");
}

TEST(Tokenizer, ChatTemplate) {
  const std::string chat = apply_chat_template(
      {{"user", "A red circle moves left while a tone plays. Question: Which colour is the shape?"}}, true);
  EXPECT_EQ(chat,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "A red circle moves left while a tone plays. Question: Which colour is the shape?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template({{"system", "S"}, {"user", "U"}}, false), "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n");
  for (const char* name : {"qwen2style", "demo"}) {
    auto t = Tokenizer::load(tok_path(name));
    bool found = false;
    const json c = cases_of(name);
    for (const auto& k : c["cases"])
      if (k["text"].get<std::string>() == chat) {
        found = true;
        auto ids = t->encode(chat);
        EXPECT_EQ(ids, k["ids"].get<std::vector<int>>()) << name;
        EXPECT_EQ(ids.front(), *t->token_id("<|im_start|>"));
        EXPECT_EQ(t->decode(ids), chat);
      }
    EXPECT_TRUE(found) << name;
  }
}

TEST(Tokenizer, MergesAsStringsOrPairsGiveTheSameIds) {
  json j = json::parse(read(tok_path("qwen2style")));
  ASSERT_TRUE(j["model"]["merges"][0].is_array());
  json s = j;
  s["model"]["merges"] = json::array();
  for (const auto& m : j["model"]["merges"]) s["model"]["merges"].push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
  auto a = Tokenizer::from_json(j.dump(), "pairs.json"), b = Tokenizer::from_json(s.dump(), "strings.json");
  const json c = cases_of("qwen2style");
  for (const auto& k : c["cases"]) EXPECT_EQ(a->encode(k["text"]), b->encode(k["text"]));
}

TEST(Tokenizer, IllFormedUtf8ReadsAsReplacementCharacters) {
  auto t = Tokenizer::load(tok_path("qwen2style"));
  EXPECT_EQ(t->encode("a\xff\xfe b\xe4\xbd"), t->encode("a\xEF\xBF\xBD\xEF\xBF\xBD b\xEF\xBF\xBD"));
  EXPECT_EQ(text::to_valid_utf8("\xe4\xbd\xa0\xe4\xbd"), "\xe4\xbd\xa0\xEF\xBF\xBD");
  EXPECT_EQ(text::to_valid_utf8("\xed\xa0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
  EXPECT_EQ(text::truncated_tail("a\xf0\x9f\x98"), 3u);
  EXPECT_EQ(text::truncated_tail("a\xf0\x9f\x98\x80"), 0u);
  EXPECT_EQ(text::truncated_tail("a\xff"), 0u);
}

TEST(Tokenizer, NormalizersAndDecodersOfTheLlamaLayout) {
  auto l = Tokenizer::load(tok_path("llamastyle"));
  EXPECT_EQ(l->normalize("a b"), "\u2581a\u2581b");
  EXPECT_EQ(l->normalize(""), "");
  auto q = Tokenizer::load(tok_path("qwen2style"));
  EXPECT_EQ(q->normalize("e\u0301"), "\u00e9");
  // every character reaches the model: byte fallback for those without a piece
  const std::string rare = "\U0001F9EA\u0D9E";
  EXPECT_EQ(l->decode(l->encode(rare)), rare);
}

TEST(Tokenizer, RefusesMalformedFilesWithOneClearError) {
  auto has = [](const std::string& msg, std::initializer_list<const char*> parts) {
    for (const char* p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  };
  has(error_of([] { Tokenizer::load("/nonexistent/dir/tokenizer.json"); }), {"/nonexistent/dir/tokenizer.json", "missing"});
  const std::string dir = test::tmp_dir("tok_missing");
  has(error_of([&] { Tokenizer::load(dir); }), {"tokenizer.json", "missing"});
  has(error_of([] { Tokenizer::from_json("{\"model\": ", "t/tokenizer.json"); }), {"t/tokenizer.json", "not valid JSON"});
  has(error_of([] { Tokenizer::from_json("[1,2]", "t/tokenizer.json"); }), {"t/tokenizer.json", "model"});

  json base = json::parse(read(tok_path("llamastyle")));
  auto err_with = [&](const std::function<void(json&)>& edit) {
    json j = base;
    edit(j);
    return error_of([&] { Tokenizer::from_json(j.dump(), "m/tokenizer.json"); });
  };
  has(err_with([](json& j) { j["model"]["type"] = "Unigram"; }), {"m/tokenizer.json", "model.type", "Unigram"});
  has(err_with([](json& j) { j["normalizer"]["normalizers"][1]["type"] = "BertNormalizer"; }),
      {"m/tokenizer.json", "normalizer.normalizers[1].type", "BertNormalizer"});
  has(err_with([](json& j) { j["normalizer"] = {{"type", "Precompiled"}}; }), {"normalizer.type", "Precompiled"});
  has(err_with([](json& j) { j["pre_tokenizer"] = {{"type", "Punctuation"}}; }), {"pre_tokenizer.type", "Punctuation"});
  has(err_with([](json& j) { j["decoder"]["decoders"][0] = {{"type", "CTC"}}; }), {"decoder.decoders[0].type", "CTC"});
  has(err_with([](json& j) { j["post_processor"] = {{"type", "Nope"}}; }), {"post_processor.type", "Nope"});
  has(err_with([](json& j) { j["model"]["merges"][0] = "a"; }), {"model.merges[0]"});
  has(err_with([](json& j) { j["model"]["merges"][3] = json::array({"\u2581", "zzzq"}); }), {"model.merges[3]", "zzzq", "not in model.vocab"});
  has(err_with([](json& j) { j["model"]["vocab"]["x"] = "seven"; }), {"model.vocab[x]", "integer"});
  has(err_with([](json& j) { j["model"]["unk_token"] = "<nope>"; }), {"model.unk_token", "<nope>"});
  has(err_with([](json& j) { j["model"]["byte_fallback"] = 3; }), {"model.byte_fallback"});
  has(err_with([](json& j) { j["added_tokens"][0]["id"] = "zero"; }), {"added_tokens[0]"});
  has(err_with([](json& j) { j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}}; }),
      {"pre_tokenizer.pattern.Regex", "does not compile"});
  has(err_with([](json& j) { j["pre_tokenizer"] = 5; }), {"pre_tokenizer", "object"});
  has(err_with([](json& j) { j["model"]["continuing_subword_prefix"] = "##"; }), {"model.continuing_subword_prefix"});
}

}  // namespace
}  // namespace outro
