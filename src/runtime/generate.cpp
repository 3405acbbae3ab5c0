#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace outro {

namespace {

// Holds back the tail of the text that could still become a stop string.
class StopFilter {
 public:
  explicit StopFilter(const std::vector<std::string>& stops) : stops_(stops) {}
  // Returns the text that is safe to emit; sets *hit when a stop string completed.
  std::string push(const std::string& piece, bool* hit) {
    pending_ += piece;
    for (const auto& s : stops_) {
      if (s.empty()) continue;
      size_t at = pending_.find(s);
      if (at != std::string::npos) {
        *hit = true;
        std::string out = pending_.substr(0, at);
        pending_.clear();
        return out;
      }
    }
    size_t hold = 0;
    for (const auto& s : stops_)
      for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k)
        if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }
  std::string flush() {
    std::string out;
    out.swap(pending_);
    return out;
  }

 private:
  const std::vector<std::string>& stops_;
  std::string pending_;
};

}  // namespace

GenerateResult generate(Session& s, const std::vector<int32_t>& prompt, const GenerateOptions& o,
                        const Tokenizer* tok, const std::function<void(const std::string&)>& on_text) {
  if (prompt.empty()) fail("generate: the prompt has no tokens");
  if (o.max_new_tokens < 0) fail("generate: --max-new-tokens must be >= 0, found ", o.max_new_tokens);
  if (int(prompt.size()) > s.capacity())
    fail("prompt of ", prompt.size(), " tokens is longer than the context of ", s.capacity(), " tokens");
  GenerateResult r;
  r.prompt_tokens = int(prompt.size());
  Sampler sampler(o.sampling);
  std::unique_ptr<StreamDecoder> dec;
  if (tok) dec = std::make_unique<StreamDecoder>(*tok);
  StopFilter stop(o.stop_strings);
  auto emit = [&](const std::string& t) {
    if (t.empty()) return;
    r.text += t;
    if (on_text) on_text(t);
  };

  using clock = std::chrono::steady_clock;
  std::vector<float> logits;
  auto t0 = clock::now();
  s.reset();
  if (o.prefill_deepstack && !o.prefill_deepstack->empty() && o.prefill_deepstack_rows)
    s.set_deepstack(*o.prefill_deepstack, *o.prefill_deepstack_rows);
  if (o.prefill_embeds || o.prefill_positions)
    s.forward_embeds(prompt.data(), int(prompt.size()), o.prefill_embeds, o.prefill_modality, o.prefill_positions,
                     &logits, false);
  else
    s.forward(prompt, &logits, false);
  auto t1 = clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  const int vocab = s.model().config().vocab;
  r.stop_reason = "max_tokens";
  // Greedy decoding takes each next token from Session::forward_argmax (on a GPU only the index
  // comes back); the first one from the prefill's logits.
  int next_greedy = -1;
  for (int step = 0; step < o.max_new_tokens; ++step) {
    const int id = next_greedy >= 0 ? next_greedy : sampler.sample(logits.data(), vocab);
    r.tokens.push_back(id);
    if (std::find(o.stop_ids.begin(), o.stop_ids.end(), id) != o.stop_ids.end()) {
      r.stop_reason = "eos";
      break;
    }
    if (dec) {
      bool hit = false;
      emit(stop.push(dec->push(id), &hit));
      if (hit) {
        r.stop_reason = "stop_string";
        break;
      }
    }
    if (step + 1 == o.max_new_tokens) break;
    if (s.position() >= s.capacity()) {
      r.stop_reason = "context";
      break;
    }
    const int32_t next = id;
    if (o.sampling.greedy)
      next_greedy = s.forward_argmax(&next, 1);
    else
      s.forward(&next, 1, &logits, false);
  }
  if (dec && r.stop_reason != "stop_string") {
    bool hit = false;
    emit(stop.push(dec->flush(), &hit));
    if (!hit) emit(stop.flush());
    if (hit) r.stop_reason = "stop_string";
  }
  r.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

}  // namespace outro
