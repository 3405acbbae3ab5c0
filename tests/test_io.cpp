// safetensors and config.json: valid files load; every malformed one is refused with a message
// that names the file, the tensor or field, what was expected and what was found.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace outro {
namespace {

using test::error_of;

std::vector<uint8_t> image(const std::string& header, size_t data_len) {
  std::vector<uint8_t> b(8 + header.size() + data_len, 0);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) b[size_t(i)] = uint8_t(n >> (8 * i));
  std::memcpy(b.data() + 8, header.data(), header.size());
  return b;
}

std::string parse_err(const std::string& header, size_t data_len) {
  auto b = image(header, data_len);
  return error_of([&] { parse_safetensors(b.data(), b.size(), "x.safetensors"); });
}

TEST(Safetensors, ParsesValidHeader) {
  auto b = image(R"({"__metadata__":{"a":"b"},"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},)"
                 R"("v":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                 20);
  auto ts = parse_safetensors(b.data(), b.size(), "x");
  ASSERT_EQ(ts.size(), 2u);
  EXPECT_EQ(ts[1].name, "w");
  EXPECT_EQ(ts[1].dtype, DType::BF16);
  EXPECT_EQ(ts[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ts[1].nbytes, 12u);
}

TEST(Safetensors, RefusesMalformedFilesWithClearMessages) {
  auto has = [](const std::string& msg, std::initializer_list<const char*> parts) {
    for (const char* p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  };
  has(parse_err(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8), {"x.safetensors", "w", "past the data", "8 bytes"});
  has(parse_err(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", 16), {"w", "needs 16 bytes", "give 12"});
  has(parse_err(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
      {"overlap", "a", "b"});
  has(parse_err(R"({"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,4]}})", 4), {"w", "unsupported dtype Q4"});
  has(parse_err(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), {"w", "shape"});
  has(parse_err(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8), {"w", "before begin"});
  has(parse_err(R"({"w":{"dtype":"F32","shape":[1]}})", 4), {"w", "data_offsets"});
  has(parse_err(R"([1,2])", 0), {"JSON object"});
  has(parse_err(R"({"w":)", 0), {"not valid JSON"});
  has(parse_err(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", 4), {"w", "too large"});
  // length prefix larger than the file: truncated
  auto b = image("{}", 0);
  b[0] = 200;
  has(error_of([&] { parse_safetensors(b.data(), b.size(), "t.safetensors"); }), {"t.safetensors", "exceeds the file size"});
  uint8_t tiny[3] = {1, 2, 3};
  has(error_of([&] { parse_safetensors(tiny, 3, "t.safetensors"); }), {"t.safetensors", "8-byte"});
}

TEST(Safetensors, WriterRoundTripAndShards) {
  std::string dir = test::tmp_dir("shards");
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  write_safetensors(dir + "/part-1.safetensors", {tensor_f32("a", {2, 3}, a.data())});
  write_safetensors(dir + "/part-2.safetensors", {tensor_i64("b", {7, -8})});
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"metadata":{},"weight_map":{"a":"part-1.safetensors","b":"part-2.safetensors"}})";
  auto ws = WeightStore::open(dir);
  EXPECT_EQ(read_f32(ws->get("a", {2, 3})), a);
  EXPECT_EQ(read_i64(ws->get("b")), (std::vector<int64_t>{7, -8}));
  EXPECT_NE(error_of([&] { ws->get("a", {3, 2}); }).find("expected shape [3, 2], found [2, 3]"), std::string::npos);
  EXPECT_NE(error_of([&] { ws->get("zzz"); }).find("missing tensor zzz"), std::string::npos);
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"a":"part-9.safetensors"}})";
  EXPECT_NE(error_of([&] { WeightStore::open(dir); }).find("model.safetensors.index.json: field weight_map[\"a\"] names shard part-9.safetensors, which is missing"), std::string::npos);
  std::ofstream(dir + "/model.safetensors.index.json") << R"({"weight_map":{"a":"../etc/passwd"}})";
  EXPECT_NE(error_of([&] { WeightStore::open(dir); }).find("expected a file name"), std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(Config, ParsesEachArchitecture) {
  auto q = parse_config(R"({"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,
    "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":256,"rope_theta":1000000.0,
    "rms_norm_eps":1e-6,"tie_word_embeddings":true,"eos_token_id":3})", "q.json");
  EXPECT_EQ(q.arch, Arch::Qwen2);
  EXPECT_EQ(q.head_dim, 16);
  EXPECT_TRUE(q.qkv_bias);
  EXPECT_FALSE(q.o_bias);
  EXPECT_TRUE(q.tie_embeddings);
  EXPECT_FLOAT_EQ(q.rope_theta, 1e6f);
  EXPECT_EQ(q.eos_tokens, std::vector<int>{3});
  auto l = parse_config(R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":172,
    "num_hidden_layers":5,"num_attention_heads":8,"num_key_value_heads":4,"vocab_size":512,"head_dim":16,
    "attention_bias":true})", "l.json");
  EXPECT_EQ(l.arch, Arch::Llama);
  EXPECT_EQ(l.head_dim, 16);
  EXPECT_TRUE(l.qkv_bias && l.o_bias);
  auto o = parse_config(R"({"architectures":["Qwen2_5OmniThinkerForConditionalGeneration"],"model_type":"qwen2_5_omni_thinker",
    "text_config":{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
    "num_key_value_heads":2,"vocab_size":300,"rope_scaling":{"type":"mrope","mrope_section":[2,3,3]}}})", "o.json");
  EXPECT_EQ(o.arch, Arch::Qwen2_5OmniThinker);
  EXPECT_EQ(o.vocab, 300);
  EXPECT_EQ(o.mrope_section, (std::vector<int>{2, 3, 3}));
  auto v = parse_config(R"({"architectures":["Qwen2_5_VLForConditionalGeneration"],"text_config":{"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":256}})", "v.json");
  EXPECT_EQ(v.arch, Arch::Qwen2_5_VL);
  EXPECT_EQ(v.kv_heads, 4);
}

TEST(Config, RefusesBadFieldsNamingThem) {
  auto err = [](const std::string& body) { return error_of([&] { parse_config(body, "c.json"); }); };
  const std::string base = R"("hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":256)";
  EXPECT_NE(err(R"({"architectures":["GPT2LMHeadModel"],)" + base + "}").find("unsupported architecture 'GPT2LMHeadModel'"), std::string::npos);
  EXPECT_NE(err(R"({"architectures":["Qwen2ForCausalLM"],"hidden_size":64})").find("field intermediate_size is missing"), std::string::npos);
  EXPECT_NE(err(R"({"architectures":["Qwen2ForCausalLM"],)" + base + R"(,"num_key_value_heads":3})").find("num_key_value_heads"), std::string::npos);
  EXPECT_NE(err(R"({"architectures":["Qwen2ForCausalLM"],)" + base + R"(,"hidden_act":"gelu"})").find("expected silu, found gelu"), std::string::npos);
  EXPECT_NE(err(R"({"architectures":["Qwen2ForCausalLM"],)" + base + R"(,"rope_theta":"big"})").find("rope_theta: expected a number"), std::string::npos);
  EXPECT_NE(err(R"({"architectures":["Qwen2ForCausalLM"],)" + base + R"(,"rope_scaling":{"type":"yarn","factor":4}})").find("yarn"), std::string::npos);
  EXPECT_NE(err(R"({"architectures":["Qwen2ForCausalLM"],"hidden_size":-5,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":1})").find("hidden_size: expected an integer >= 1, found -5"), std::string::npos);
  EXPECT_NE(err("{").find("c.json: not valid JSON"), std::string::npos);
}

}  // namespace
}  // namespace outro
