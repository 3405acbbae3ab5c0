// What the CLI (apps/outro) and the Python module (python/) share, so both run one code path: the
// backend by device name, the prompt's token ids, the hook points a forward records, one recorded
// forward over a prompt, the stop ids of generation, the model's configuration as JSON.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "models/multimodal.h"
#include "models/model.h"
#include "runtime/hooks.h"
#include "runtime/intervention.h"
#include "tokenizer/chat_template.h"

namespace outro {

class Tokenizer;

// "cpu", "cuda", "cuda:N" or "auto" (CUDA when a GPU is there, else the CPU). "cuda" and "auto" take
// the launcher's local rank's GPU (launcher_local_rank() modulo the GPUs of the host), GPU 0 outside
// a launcher. `arg` names the argument in messages ("--device", "device"); a GPU index that does not
// exist is an error that lists the GPUs there are.
std::unique_ptr<Backend> make_backend(const std::string& device, const std::string& arg);
// The process's rank on its host under mpirun (OMPI_COMM_WORLD_LOCAL_RANK), MPICH, srun or torchrun;
// -1 outside a launcher.
int launcher_local_rank();

// A text prompt's ids: through the chat template in `format` (chat_prompt(...).text of
// models/chat_prompt.h) when the tokenizer has <|im_start|> and not `raw` (a system turn when
// `system` is given, even empty, else the format's default); else the text as is, with the
// post-processor's special tokens.
std::vector<int32_t> text_prompt_ids(const Tokenizer& tok, const std::string& text,
                                     const std::optional<std::string>& system, bool raw, const ChatFormat& format);

// Checks hook point names against a model of `layers` layers; throws Error "ARG: unknown hook
// point 'NAME'; accepted: ..." for the first unknown one.
std::vector<std::string> check_hook_names(const std::vector<std::string>& names, int layers, const std::string& arg);
// The accepted names in words, for messages: "embed, ln_final, blocks.{0..L-1}.hook_resid_pre, ...".
std::string describe_hook_names(int layers);
// The same for a model's config: with the mixture-of-experts points of its sparse layers.
std::vector<std::string> check_hook_names(const std::vector<std::string>& names, const ModelConfig& c,
                                          const std::string& arg);
std::string describe_hook_names(const ModelConfig& c);

// One forward pass over a whole prompt (past = 0) with every logits row and the hook tensors asked
// for, as `outro forward` writes them: logits [n, vocab]; each hook under its name, shape and
// layout of hooks.h (rows concatenated over the call).
struct RecordedForward {
  std::vector<float> logits;  // [n * vocab]
  std::vector<std::string> names;
  std::vector<Recorder::Entry> hooks;  // parallel to names
  std::vector<uint8_t> modality;       // [n] 0 text, 1 image, 2 video, 3 audio
};
// prefill: the multimodal prefill (its ids are the prompt) or null for ids alone. Throws Error for a
// prompt longer than the model's context (`arg` names the argument) and ids outside the vocabulary.
RecordedForward record_forward(const Model& m, Backend& be, const std::vector<int32_t>& ids,
                               const MultimodalPrefill* prefill, const std::vector<std::string>& hooks,
                               const std::vector<Intervention*>& ivs, const std::string& arg);

// The ids that end generation: the config's EOS ids, and <|im_end|> / <|endoftext|> when the tokenizer has them.
std::vector<int> default_stop_ids(const ModelConfig& c, const Tokenizer* tok);

// What `outro info` prints.
nlohmann::json config_json(const Model& m);

}  // namespace outro
