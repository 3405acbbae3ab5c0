// The `outro` command line end to end: generate/forward on a real trained checkpoint, and every
// kind of bad input ending in one clear error line and a non-zero exit, never a crash.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "frontend/frontend.h"
#include "io/safetensors.h"
#include "models/random_model.h"
#include "test_util.h"

namespace outro {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

const std::string kStories = test::shared_model("stories260K");

TEST(Cli, GenerateJsonGreedyMatchesReferenceContinuation) {
  // transformers' greedy continuation of BOS on stories260K (../shared/models/stories260K/README.md)
  auto r = run_cli("generate --model " + kStories + " --tokens 1 --max-new-tokens 12 --greedy --json --device cpu");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(j["tokens"].get<std::vector<int>>(), (std::vector<int>{461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299}));
  EXPECT_TRUE(j.contains("text"));
}

TEST(Cli, SeededSamplingIsReproducibleAndDiffersFromGreedy) {
  auto a = run_cli("generate --model " + kStories + " --tokens 1 --max-new-tokens 20 --temperature 1.0 --top-k 40 --top-p 0.9 --seed 7 --json");
  auto b = run_cli("generate --model " + kStories + " --tokens 1 --max-new-tokens 20 --temperature 1.0 --top-k 40 --top-p 0.9 --seed 7 --json");
  auto c = run_cli("generate --model " + kStories + " --tokens 1 --max-new-tokens 20 --temperature 1.0 --top-k 40 --top-p 0.9 --seed 8 --json");
  ASSERT_EQ(a.code, 0) << a.out;
  auto ta = nlohmann::json::parse(a.out.substr(a.out.find('{')))["tokens"];
  auto tb = nlohmann::json::parse(b.out.substr(b.out.find('{')))["tokens"];
  auto tc = nlohmann::json::parse(c.out.substr(c.out.find('{')))["tokens"];
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Cli, ForwardWritesLogitsAndHooks) {
  std::string dir = test::tmp_dir("fwd");
  auto r = run_cli("forward --model " + kStories + " --tokens 1,200,300,17 --out " + dir +
                   "/o.safetensors --hooks blocks.1.attn.hook_pattern,blocks.0.hook_resid_pre");
  ASSERT_EQ(r.code, 0) << r.out;
  auto ws = WeightStore::open(dir + "/o.safetensors");
  EXPECT_EQ(ws->get("logits").shape, (std::vector<int64_t>{4, 512}));
  EXPECT_EQ(ws->get("logits").dtype, DType::F32);
  EXPECT_EQ(ws->get("blocks.1.attn.hook_pattern").shape, (std::vector<int64_t>{8, 4, 4}));
  EXPECT_EQ(ws->get("blocks.0.hook_resid_pre").shape, (std::vector<int64_t>{4, 64}));
  fs::remove_all(dir);
}

struct BadCase {
  const char* what;
  std::string args;
  std::vector<std::string> must_mention;
};

TEST(Cli, BadInputGivesOneClearErrorLine) {
  std::string dir = test::tmp_dir("bad");
  RandomModelSpec spec;
  write_random_model(dir + "/ok", spec);
  // a truncated copy of the weights
  fs::create_directories(dir + "/trunc");
  fs::copy_file(dir + "/ok/config.json", dir + "/trunc/config.json");
  {
    std::ifstream in(dir + "/ok/model.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(dir + "/trunc/model.safetensors", std::ios::binary).write(bytes.data(), long(bytes.size() / 2));
  }
  // a config that lies about the shape
  fs::create_directories(dir + "/shape");
  fs::copy_file(dir + "/ok/model.safetensors", dir + "/shape/model.safetensors");
  {
    std::ifstream in(dir + "/ok/config.json");
    auto j = nlohmann::json::parse(in);
    j["intermediate_size"] = 96;
    std::ofstream(dir + "/shape/config.json") << j.dump();
  }
  // an unknown architecture
  fs::create_directories(dir + "/arch");
  fs::copy_file(dir + "/ok/model.safetensors", dir + "/arch/model.safetensors");
  {
    std::ifstream in(dir + "/ok/config.json");
    auto j = nlohmann::json::parse(in);
    j["architectures"] = {"MambaForCausalLM"};
    std::ofstream(dir + "/arch/config.json") << j.dump();
  }
  // a missing tensor
  fs::create_directories(dir + "/missing");
  {
    std::ifstream in(dir + "/ok/config.json");
    auto j = nlohmann::json::parse(in);
    j["num_hidden_layers"] = 3;
    std::ofstream(dir + "/missing/config.json") << j.dump();
    fs::copy_file(dir + "/ok/model.safetensors", dir + "/missing/model.safetensors");
  }
  std::string longp;
  for (int i = 0; i < 2100; ++i) longp += (i ? ",5" : "5");
  const std::vector<BadCase> cases = {
      {"missing folder", "generate --model " + dir + "/nope --tokens 1", {dir + "/nope", "does not exist"}},
      {"folder without config", "generate --model " + dir + " --tokens 1", {"config.json", "missing"}},
      {"truncated weights", "generate --model " + dir + "/trunc --tokens 1", {"trunc/model.safetensors"}},
      {"shape mismatch", "generate --model " + dir + "/shape --tokens 1", {"mlp.gate_proj.weight", "expected shape [96, 64]", "found [128, 64]"}},
      {"unknown architecture", "generate --model " + dir + "/arch --tokens 1", {"MambaForCausalLM", "unsupported architecture"}},
      {"missing tensor", "generate --model " + dir + "/missing --tokens 1", {"missing tensor model.layers.2."}},
      {"token out of range", "generate --model " + dir + "/ok --tokens 1,256", {"token id 256", "vocabulary [0, 256)"}},
      {"negative token", "forward --model " + dir + "/ok --tokens 1,-3 --out /tmp/x.safetensors", {"--tokens", "-3"}},
      {"garbage token", "generate --model " + dir + "/ok --tokens 1,abc", {"--tokens", "abc"}},
      {"prompt too long", "generate --model " + dir + "/ok --tokens " + longp, {"2100 tokens", "context of 2048"}},
      {"prompt without tokenizer", "generate --model " + dir + "/ok --prompt hi", {"tokenizer.json"}},
      {"unknown hook", "forward --model " + dir + "/ok --tokens 1 --out /tmp/x.safetensors --hooks blocks.9.nope", {"unknown hook point", "blocks.9.nope"}},
      {"unknown flag", "generate --model " + dir + "/ok --tokens 1 --frobnicate 3", {"unknown flag --frobnicate"}},
      {"bad number", "generate --model " + dir + "/ok --tokens 1 --max-new-tokens lots", {"--max-new-tokens", "lots"}},
      {"bad device", "generate --model " + dir + "/ok --tokens 1 --device tpu", {"--device", "tpu"}},
      {"bad GPU index", "generate --model " + dir + "/ok --tokens 1 --device cuda:x", {"--device", "cuda:N", "cuda:x"}},
      // No machine that runs the tests has 4097 GPUs: the message names the index asked for, and
      // either the GPUs there are or why there is none.
      {"missing GPU", "generate --model " + dir + "/ok --tokens 1 --device cuda:4096", {"--device cuda:4096: "}},
  };
  for (const auto& c : cases) {
    auto r = run_cli(c.args);
    EXPECT_EQ(r.code, 1) << c.what << ": " << r.out;
    EXPECT_EQ(r.out.rfind("error: ", 0), 0u) << c.what << ": " << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << c.what << ": expected one line, got: " << r.out;
    for (const auto& m : c.must_mention) EXPECT_NE(r.out.find(m), std::string::npos) << c.what << ": '" << m << "' not in: " << r.out;
  }
  fs::remove_all(dir);
}

// Under a launcher each process finds its local rank (and so its GPU) in the environment; a value
// that is not a rank is ignored, and outside a launcher there is none.
TEST(Cli, LauncherLocalRankFromEnvironment) {
  const char* vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* v : vars)
    if (const char* e = std::getenv(v)) saved.emplace_back(v, e);
  for (const char* v : vars) unsetenv(v);
  EXPECT_EQ(launcher_local_rank(), -1);
  setenv("LOCAL_RANK", "2", 1);
  EXPECT_EQ(launcher_local_rank(), 2);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "5", 1);  // mpirun's wins
  EXPECT_EQ(launcher_local_rank(), 5);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "x5", 1);
  EXPECT_EQ(launcher_local_rank(), 2);
  for (const char* v : vars) unsetenv(v);
  for (const auto& [k, v] : saved) setenv(k.c_str(), v.c_str(), 1);
  // Rank 3 takes GPU 3 % count (sharing when there are fewer), or the CPU where there is no GPU.
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3", 1);
  EXPECT_STREQ(make_backend("auto", "--device")->name(), cuda_device_count() > 0 ? "cuda" : "cpu");
  unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
  for (const auto& [k, v] : saved) setenv(k.c_str(), v.c_str(), 1);
}

}  // namespace
}  // namespace outro

namespace outro {
namespace {

// `info` names the CPU path the products run on and why a better one is not used. Asking for AMX
// on a CPU (or kernel) that cannot give it falls back with one note and never crashes (no SIGILL).
TEST(Cli, InfoNamesTheCpuPathAndAmxRequestsFallBackCleanly) {
  const std::string dir = test::fixture("models/qwen2_mqa_bf16");
  auto r = run_cli("info --model " + dir);
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  ASSERT_TRUE(j.contains("cpu")) << r.out;
  EXPECT_EQ(j["cpu"]["kernels"], cpu::kernels().name);
  EXPECT_EQ(j["cpu"]["note"], cpu::isa_note());
  const std::string cmd = "OUTRO_ISA=amx " + std::string(std::getenv("OUTRO_BIN") ? std::getenv("OUTRO_BIN") : OUTRO_BINARY_DIR "/outro") +
                          " info --model " + dir + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t k;
  while ((k = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
  const int st = pclose(p);
  ASSERT_TRUE(WIFEXITED(st)) << "killed by a signal: " << out;
  EXPECT_EQ(WEXITSTATUS(st), 0) << out;
  auto jf = nlohmann::json::parse(out.substr(out.find('{')));
  if (cpu::isa_supported(cpu::Isa::Amx)) {
    EXPECT_EQ(jf["cpu"]["kernels"], "amx") << out;
  } else {
    EXPECT_NE(jf["cpu"]["kernels"], "amx") << out;
    EXPECT_NE(out.find("OUTRO_ISA=amx is not supported by this CPU"), std::string::npos) << out;
    EXPECT_NE(std::string(jf["cpu"]["note"]).find("AMX not used"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace outro
