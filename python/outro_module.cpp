// The Python module `outro` (docs/python.md): a thin binding of the C++ engine. A Model holds the
// checkpoint, backend and tokenizer; forward() returns logits and hook tensors as numpy arrays
// (src/frontend: the code path of `outro forward`), edits at hook points call Python callables
// through an Intervention, generate() is the CLI's decode loop, the analyses are those of
// `outro analyze`. The GIL is released while the engine runs; engine errors raise outro.Error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <atomic>
#include <mutex>
#include <thread>
#include <optional>

#include "core/error.h"
#include "frontend/frontend.h"
#include "models/chat_prompt.h"
#include "models/multimodal.h"
#include "models/multimodal_input.h"
#include "outro/outro.h"
#include "report/sink_report.h"
#include "runtime/generate.h"
#include "runtime/session.h"
#include "sink/analysis.h"
#include "tokenizer/tokenizer.h"

namespace py = pybind11;
using namespace outro;

namespace {

// Thrown through the engine when a Python callback raised; the Python error stays set in the
// interpreter and is what the caller sees.
struct PyCallbackFailed {};

py::exception<Error>* g_error = nullptr;  // outro.Error

// Per layer, the Φ_LLM sink positions OutRo found in the prompt (empty where none).
// Per layer, the positions Φ_LLM found in the prompt (read back from the backend once).
py::object py_layer_sinks(const OutRo& o) { return py::cast(o.layer_sinks()); }

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }

// Runs f; an engine Error becomes a ValueError "ARG: message" (for arguments checked by the engine).
template <class F>
auto as_value_error(const std::string& arg, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    const std::string m = e.what();
    value_error(m.rfind(arg, 0) == 0 ? m : arg + ": " + m);
  }
}

py::array_t<float> to_array(const float* data, const std::vector<int64_t>& shape) {
  std::vector<py::ssize_t> s(shape.begin(), shape.end());
  py::array_t<float> a(s);
  size_t count = 1;
  for (int64_t d : shape) count *= size_t(d);
  if (count) std::memcpy(a.mutable_data(), data, count * sizeof(float));
  return a;
}

py::object json_to_py(const nlohmann::json& j) {
  return py::module_::import("json").attr("loads")(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Edits at hook points from Python: each callable receives the tensor (float32, the hook's shape)
// and returns a changed array of the same shape, or None (then the array it was given, possibly
// edited in place, is written back). Points: hook_resid_pre, attn.hook_q/k/v, attn.hook_z.
class PythonEdit : public Intervention {
 public:
  struct Point {
    int layer;
    Hook hook;
    std::string name;
    py::object fn;
  };
  explicit PythonEdit(std::vector<Point> points) : points_(std::move(points)) {}
  ~PythonEdit() override {
    py::gil_scoped_acquire g;
    points_.clear();
  }
  std::string name() const override { return "python-edit"; }
  std::string explain() const override {
    std::string s = "python-edit:";
    for (const auto& p : points_) s += " " + p.name;
    return s;
  }
  void resid_pre(ForwardCtx& ctx, int layer, Buf h) override { call(ctx, layer, Hook::ResidPre, h, {ctx.n, ctx.cfg->hidden}); }
  void qkv(ForwardCtx& ctx, int layer, Buf q, Buf k, Buf v) override {
    const ModelConfig& c = *ctx.cfg;
    call(ctx, layer, Hook::Q, q, {ctx.n, c.heads, c.head_dim});
    call(ctx, layer, Hook::K, k, {ctx.n, c.kv_heads, c.head_dim});
    call(ctx, layer, Hook::V, v, {ctx.n, c.kv_heads, c.head_dim});
  }
  void z(ForwardCtx& ctx, int layer, Buf z) override { call(ctx, layer, Hook::Z, z, {ctx.n, ctx.cfg->heads, ctx.cfg->head_dim}); }

  static bool editable(Hook h) {
    return h == Hook::ResidPre || h == Hook::Q || h == Hook::K || h == Hook::V || h == Hook::Z;
  }

 private:
  void call(ForwardCtx& ctx, int layer, Hook hook, Buf b, std::vector<int64_t> shape) {
    size_t count = 1;
    for (int64_t d : shape) count *= size_t(d);
    for (const auto& p : points_) {
      if (p.layer != layer || p.hook != hook) continue;
      host_.resize(count);
      ctx.be->download(b, 0, host_.data(), count);
      {
        py::gil_scoped_acquire g;
        try {
          py::array_t<float> given = to_array(host_.data(), shape);
          py::object r = p.fn(given);
          py::object result = r.is_none() ? py::object(given) : r;
          auto arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(result);
          if (!arr) {
            PyErr_Clear();
            throw py::type_error("edits['" + p.name + "']: the callback returned " +
                                 std::string(py::str(py::type::of(r))) + ", expected a numpy array of shape " +
                                 shape_str(shape) + " or None");
          }
          std::vector<int64_t> got(arr.shape(), arr.shape() + arr.ndim());
          if (got != shape)
            throw py::value_error("edits['" + p.name + "']: the callback returned an array of shape " + shape_str(got) +
                                  ", expected " + shape_str(shape));
          std::memcpy(host_.data(), arr.data(), count * sizeof(float));
        } catch (py::error_already_set& e) {
          e.restore();
          throw PyCallbackFailed{};
        } catch (py::builtin_exception& e) {
          e.set_error();
          throw PyCallbackFailed{};
        }
      }
      ctx.be->upload(b, 0, host_.data(), count);
    }
  }

  std::vector<Point> points_;
  std::vector<float> host_;
};

struct ForwardResult {
  py::object logits, hooks, sinks, tokens, modality, explain;
};

struct GenerateOutput {
  std::string text, stop_reason;
  std::vector<int> tokens;
  int prompt_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// The interventions of one call, owned together (OutRo first, then head ablation, then the Python
// edits: the CLI's order).
struct Interventions {
  std::unique_ptr<OutRo> outro;
  std::unique_ptr<HeadAblation> ablation;
  std::unique_ptr<PythonEdit> edit;
  std::vector<Intervention*> list() const {
    std::vector<Intervention*> v;
    if (outro) v.push_back(outro.get());
    if (ablation) v.push_back(ablation.get());
    if (edit) v.push_back(edit.get());
    return v;
  }
  std::vector<std::string> explain() const {
    std::vector<std::string> s;
    for (auto* iv : list()) s.push_back(iv->explain());
    return s;
  }
};

struct Prompt {
  std::vector<int32_t> ids;
  std::optional<PreparedPrompt> media;
};

class PyModel {
 public:
  PyModel(const std::string& path, const std::string& device, std::optional<int> threads) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(path))
      value_error("path: '" + path + "' is not a folder (expected a Hugging Face model folder with config.json and *.safetensors)");
    if (device != "cpu" && device != "cuda" && device != "auto")
      value_error("device: expected 'cpu', 'cuda' or 'auto', found '" + device + "'");
    if (threads) {
      if (*threads < 1) value_error("threads: expected a count >= 1, found " + std::to_string(*threads));
      setenv("OUTRO_THREADS", std::to_string(*threads).c_str(), 1);
    }
    dir_ = path;
    py::gil_scoped_release nogil;
    model_ = Model::load(path);
    be_ = make_backend(device, "device");
    if (fs::exists(fs::path(path) / "tokenizer.json")) tok_ = Tokenizer::load(path);
    chat_ = chat_prompt(model_->config(), path);  // the folder's chat template decides the thinking block
  }
  ~PyModel() {
    mm_.reset();  // the encoders' buffers live in the backend
  }

  const ModelConfig& cfg() const { return model_->config(); }
  // Media need an architecture with a processor here and, for Qwen3-Omni, the towers' tensors in the
  // folder (a decoder saved alone is text only), as the command line decides.
  bool takes_media() const {
    const Arch a = cfg().arch;
    return a == Arch::Qwen2_5OmniThinker || a == Arch::Qwen2_5_VL ||
           (a == Arch::Qwen3OmniMoeThinker && has_media_towers(*model_));
  }
  std::string takes_media_why() const {
    return cfg().arch == Arch::Qwen3OmniMoeThinker ? " without vision or audio tower tensors" : "";
  }

  py::dict config() const {
    py::dict d = json_to_py(config_json(*model_));
    d["path"] = dir_;
    d["backend"] = be_->name();
    d["has_tokenizer"] = bool(tok_);
    return d;
  }

  std::vector<int> tokenize(const std::string& text, bool chat, std::optional<std::string> system) const {
    need_tokenizer("tokenize");
    std::vector<int32_t> ids = chat ? text_prompt_ids(*tok_, text, system, false, chat_.text) : [&] {
      auto v = tok_->encode(text, true, false);
      return std::vector<int32_t>(v.begin(), v.end());
    }();
    return std::vector<int>(ids.begin(), ids.end());
  }
  std::string detokenize(const std::vector<int>& ids, bool skip_special) const {
    need_tokenizer("detokenize");
    check_ids(std::vector<int32_t>(ids.begin(), ids.end()), "tokens");
    return tok_->decode(ids, skip_special);
  }

  ForwardResult forward(py::object tokens, py::object prompt, py::object hooks, py::object strategy, py::object config,
                        py::object edits, py::object ablate_heads, py::object video, py::object audio, py::object image,
                        bool use_audio_in_video, py::object system, bool raw) {
    std::vector<std::string> names;
    if (!hooks.is_none()) {
      if (py::isinstance<py::str>(hooks)) value_error("hooks: expected a list of hook point names, found a string");
      names = py::cast<std::vector<std::string>>(hooks);
      as_value_error("hooks", [&] { return check_hook_names(names, cfg(), "hooks"); });
    }
    Interventions ivs = interventions(strategy, config, edits, ablate_heads);
    Prompt p = make_prompt(tokens, prompt, video, audio, image, use_audio_in_video, system, raw);
    RecordedForward f;
    {
      py::gil_scoped_release nogil;
      EngineLock lock(*this);
      f = record_forward(*model_, *be_, p.ids, p.media ? &p.media->prefill : nullptr, names, ivs.list(), "tokens");
    }
    ForwardResult r;
    r.logits = to_array(f.logits.data(), {int64_t(p.ids.size()), cfg().vocab});
    py::dict h;
    for (size_t i = 0; i < f.names.size(); ++i) h[py::str(f.names[i])] = to_array(f.hooks[i].data.data(), f.hooks[i].shape);
    r.hooks = h;
    r.sinks = ivs.outro ? py_layer_sinks(*ivs.outro) : py::none();
    r.tokens = py::cast(std::vector<int>(p.ids.begin(), p.ids.end()));
    r.modality = py::cast(std::vector<int>(f.modality.begin(), f.modality.end()));
    r.explain = py::cast(ivs.explain());
    return r;
  }

  GenerateOutput generate(py::object prompt, py::object tokens, py::object video, py::object audio, py::object image,
                          bool use_audio_in_video, int max_new_tokens, py::object strategy, py::object config,
                          py::object edits, py::object ablate_heads, py::object temperature, py::object top_k,
                          py::object top_p, py::object seed, py::object stop, py::object system, bool raw,
                          int max_context) {
    if (max_new_tokens < 1) value_error("max_new_tokens: expected a count >= 1, found " + std::to_string(max_new_tokens));
    GenerateOptions o;
    o.max_new_tokens = max_new_tokens;
    const bool sampling = !temperature.is_none() || !top_k.is_none() || !top_p.is_none() || !seed.is_none();
    o.sampling.greedy = !sampling;
    if (!temperature.is_none()) o.sampling.temperature = py::cast<float>(temperature);
    if (!top_k.is_none()) o.sampling.top_k = py::cast<int>(top_k);
    if (!top_p.is_none()) o.sampling.top_p = py::cast<float>(top_p);
    if (!seed.is_none()) o.sampling.seed = py::cast<uint64_t>(seed);
    if (sampling && !(o.sampling.temperature > 0))
      value_error("temperature: expected a number > 0, found " + std::to_string(o.sampling.temperature));
    if (sampling && !(o.sampling.top_p > 0 && o.sampling.top_p <= 1))
      value_error("top_p: expected a number in (0, 1], found " + std::to_string(o.sampling.top_p));
    o.stop_ids = default_stop_ids(cfg(), tok_.get());
    if (!stop.is_none()) o.stop_strings.push_back(py::cast<std::string>(stop));
    Interventions ivs = interventions(strategy, config, edits, ablate_heads);
    Prompt p = make_prompt(tokens, prompt, video, audio, image, use_audio_in_video, system, raw);
    if (p.media) {
      o.prefill_embeds = p.media->prefill.embeds.data();
      o.prefill_modality = p.media->prefill.modality.data();
      o.prefill_positions = p.media->prefill.positions.data();
    }
    if (int(p.ids.size()) > cfg().max_positions)
      value_error("prompt: " + std::to_string(p.ids.size()) + " tokens is longer than the model's context of " +
                  std::to_string(cfg().max_positions) + " tokens");
    int ctx = max_context > 0 ? max_context : std::min<int>(cfg().max_positions, int(p.ids.size()) + max_new_tokens + 1);
    GenerateResult g;
    {
      py::gil_scoped_release nogil;
      EngineLock lock(*this);
      Session s(*model_, *be_, ctx);
      for (auto* iv : ivs.list()) s.add_intervention(iv);
      g = outro::generate(s, p.ids, o, tok_.get(), {});
    }
    GenerateOutput out;
    out.text = g.text;
    out.tokens = g.tokens;
    out.stop_reason = g.stop_reason;
    out.prompt_tokens = g.prompt_tokens;
    out.prefill_seconds = g.prefill_seconds;
    out.decode_seconds = g.decode_seconds;
    return out;
  }

  // `outro analyze` on a prompts file or one token list: report.json as a dict (and the report
  // written to `out` when given).
  py::object analyze(py::object tokens, py::object prompts, const std::string& metric, bool pruning, bool single_head,
                     bool zeroing, bool tsne, std::vector<uint64_t> seeds, py::object tau_abs, py::object tau_rel,
                     const std::string& score_sinks, int max_prompts, bool raw, const std::string& media_root,
                     const std::string& system, py::object out) {
    if (tokens.is_none() == prompts.is_none()) value_error("analyze: give tokens=[...] or prompts='FILE.jsonl' (one of them)");
    sink::AnalysisParams p;
    llm_thresholds(p.sinks.llm, tau_abs, tau_rel);
    p.sinks.score_sinks = as_value_error("score_sinks", [&] { return sink::parse_score_sinks(score_sinks); });
    if (metric != "auto" && metric != "loglik" && metric != "accuracy")
      value_error("metric: expected 'auto', 'loglik' or 'accuracy', found '" + metric + "'");
    p.metric = metric;
    p.pruning = pruning;
    p.single_head = single_head;
    p.zeroing = zeroing;
    p.tsne = tsne;
    p.seeds = seeds;
    if (p.pruning && p.seeds.empty()) value_error("seeds: expected at least one seed when pruning");
    std::vector<sink::TaskItem> items;
    const std::string file = prompts.is_none() ? std::string("tokens") : py::cast<std::string>(prompts);
    if (!prompts.is_none()) {
      sink::TaskLoadOptions o;
      o.chat = !raw;
      o.max_items = max_prompts;
      o.max_positions = cfg().max_positions;
      o.media_root = media_root;
      o.chat_format = chat_.text;
      py::gil_scoped_release nogil;
      EngineLock lock(*this);
      items = sink::load_tasks(file, tok_.get(), cfg().vocab, o);
      if (sink::any_media(items)) {
        if (!takes_media())
          fail(file, ": items with video/audio/image need a Qwen2.5-Omni thinker, Qwen2.5-VL or Qwen3-Omni checkpoint "
               "with its towers, ", dir_, " is ", arch_name(cfg().arch), takes_media_why());
        if (!tok_) fail(file, ": items with media need a tokenizer.json in ", dir_);
        sink::attach_media(items, encoders(), *tok_, system, chat_.media, cfg().max_positions, file);
      }
    } else {
      sink::TaskItem it;
      it.id = "tokens";
      it.prompt = token_list(tokens, "tokens");
      items.push_back(std::move(it));
    }
    nlohmann::json r;
    {
      py::gil_scoped_release nogil;
      EngineLock lock(*this);
      r = sink::run_analysis(*model_, *be_, items, p);
      r["model"]["dir"] = dir_;
      r["prompts"]["file"] = file;
    }
    if (!out.is_none()) {
      const std::string dir = py::cast<std::string>(out);
      py::gil_scoped_release nogil;
      report::write_sink_report(dir, r);
    }
    return json_to_py(r);
  }

  // Per layer, the sink sets of one prompt under the three criteria (Fig. 1a), with Φ_LLM's statistics.
  // Φ_LLM's thresholds: the arguments when either is given, else the model folder's
  // sink_thresholds.json when it has one, else the release's 100 and 1000.
  void llm_thresholds(sink::LlmCriterion& c, py::object tau_abs, py::object tau_rel) {
    if (tau_abs.is_none() && tau_rel.is_none()) {
      const ModelSinkThresholds t = as_value_error("sink_thresholds.json", [&] { return read_model_thresholds(dir_); });
      if (t.present) c.tau_abs = t.abs_thr, c.tau_rel = t.med_mul, c.from = t.file;
      return;
    }
    if (!tau_abs.is_none()) c.tau_abs = py::cast<double>(tau_abs);
    if (!tau_rel.is_none()) c.tau_rel = py::cast<double>(tau_rel);
  }

  py::list prompt_sinks(py::object tokens, py::object tau_abs, py::object tau_rel, double vlm_tau, double dim_tau,
                        double eps) {
    std::vector<int32_t> ids = token_list(tokens, "tokens");
    sink::SinkParams sp;
    llm_thresholds(sp.llm, tau_abs, tau_rel);
    sp.vlm.tau = vlm_tau;
    sp.vlm.dim_tau = dim_tau;
    sp.attn.eps = eps;
    std::vector<sink::LayerSinks> s;
    std::vector<std::vector<double>> scores;
    {
      py::gil_scoped_release nogil;
      EngineLock lock(*this);
      sink::Recorded rec = sink::record(*model_, *be_, ids, false);
      sink::DSink d = sink::model_dsink(rec, cfg(), sp.vlm);
      s = sink::prompt_sinks(rec, cfg(), d, sp);
      scores = sink::head_scores(rec, cfg(), s, sp.exclude_sink_rows);
    }
    py::list out;
    for (size_t l = 0; l < s.size(); ++l) {
      py::dict d;
      d["phi_llm"] = s[l].llm;
      d["phi_vlm"] = s[l].vlm;
      d["attention"] = s[l].attn;
      d["attention_heads"] = s[l].attn_heads;
      d["score_set"] = s[l].score;
      d["fallback"] = s[l].fallback;
      d["first_max"] = s[l].first_max;
      d["other_max"] = s[l].other_max;
      d["median"] = s[l].median;
      d["head_scores"] = scores[l];
      out.append(d);
    }
    return out;
  }

  std::vector<std::string> hook_names() const { return all_hook_names(cfg()); }
  std::string repr() const {
    return "outro.Model('" + dir_ + "', " + cfg().architecture + ", " + std::to_string(cfg().layers) + " layers, " +
           be_->name() + ")";
  }

 private:
  void need_tokenizer(const char* what) const {
    if (!tok_) value_error(std::string(what) + ": " + dir_ + " has no tokenizer.json (give token ids)");
  }
  void check_ids(const std::vector<int32_t>& ids, const char* arg) const {
    for (int32_t t : ids)
      if (t < 0 || t >= cfg().vocab)
        value_error(std::string(arg) + ": token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                    std::to_string(cfg().vocab) + ")");
  }
  std::vector<int32_t> token_list(py::object tokens, const char* arg) const {
    if (py::isinstance<py::str>(tokens)) value_error(std::string(arg) + ": expected a list of token ids, found a string");
    std::vector<int64_t> v;
    try {
      v = py::cast<std::vector<int64_t>>(py::module_::import("builtins").attr("list")(tokens));
    } catch (const py::error_already_set&) {
      value_error(std::string(arg) + ": expected a list of token ids");
    } catch (const py::cast_error&) {
      value_error(std::string(arg) + ": expected a list of integer token ids");
    }
    if (v.empty()) value_error(std::string(arg) + ": expected at least one token id");
    std::vector<int32_t> ids;
    for (int64_t t : v) {
      if (t < 0 || t >= cfg().vocab)
        value_error(std::string(arg) + ": token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                    std::to_string(cfg().vocab) + ")");
      ids.push_back(int32_t(t));
    }
    return ids;
  }
  MultimodalModel& encoders() {
    if (!mm_) mm_ = std::make_unique<MultimodalModel>(*model_, *be_);
    return *mm_;
  }

  Prompt make_prompt(py::object tokens, py::object text, py::object video, py::object audio, py::object image,
                     bool use_audio_in_video, py::object system, bool raw) {
    if (!tokens.is_none() && !text.is_none()) value_error("give either tokens or prompt, not both");
    if (tokens.is_none() && text.is_none()) value_error("one of tokens=[...] or prompt='text' is required");
    MediaRequest r;
    auto path = [](py::object o) { return o.is_none() ? std::string() : std::string(py::str(o)); };
    r.video = path(video);
    r.audio = path(audio);
    r.image = path(image);
    r.use_audio_in_video = use_audio_in_video;
    std::optional<std::string> sys;
    if (!system.is_none()) sys = py::cast<std::string>(system);
    Prompt p;
    if (!tokens.is_none()) p.ids = token_list(tokens, "tokens");
    if (!r.any() && !r.use_audio_in_video) {
      if (tokens.is_none()) {
        need_tokenizer("prompt");
        p.ids = text_prompt_ids(*tok_, py::cast<std::string>(text), sys, raw, chat_.text);
      }
      return p;
    }
    if (!takes_media())
      value_error("video/audio/image: need a Qwen2.5-Omni thinker, Qwen2.5-VL or Qwen3-Omni checkpoint with its "
                  "towers, " + dir_ + " is " + arch_name(cfg().arch) + takes_media_why());
    if (use_audio_in_video && r.video.empty()) value_error("use_audio_in_video: needs video='FILE'");
    if (tokens.is_none()) need_tokenizer("prompt");
    const std::string t = tokens.is_none() ? py::cast<std::string>(text) : std::string();
    py::gil_scoped_release nogil;
    EngineLock lock(*this);
    MultimodalModel& mm = encoders();
    if (tokens.is_none()) p.ids = multimodal_chat_ids(mm.config(), *tok_, r, t, sys.value_or(""), chat_.media);
    p.media = prepare_multimodal(mm, r, p.ids);
    p.ids = p.media->prefill.ids;
    return p;
  }

  Interventions interventions(py::object strategy, py::object config, py::object edits, py::object ablate_heads) {
    Interventions ivs;
    ivs.outro = build_outro(strategy, config);
    if (!ablate_heads.is_none()) {
      std::vector<HeadAblation::Target> t;
      for (py::handle item : ablate_heads) {
        std::pair<int, int> lh;
        try {
          lh = py::cast<std::pair<int, int>>(item);
        } catch (const py::cast_error&) {
          value_error("ablate_heads: expected (layer, head) pairs, found " + std::string(py::repr(item)));
        }
        if (lh.first < 0 || lh.first >= cfg().layers || lh.second < 0 || lh.second >= cfg().heads)
          value_error("ablate_heads: (" + std::to_string(lh.first) + ", " + std::to_string(lh.second) +
                      ") is not a layer in [0, " + std::to_string(cfg().layers) + ") and head in [0, " +
                      std::to_string(cfg().heads) + ")");
        t.push_back({lh.first, lh.second});
      }
      if (!t.empty()) ivs.ablation = std::make_unique<HeadAblation>(t);
    }
    if (!edits.is_none()) {
      if (!py::isinstance<py::dict>(edits)) value_error("edits: expected a dict {hook name: callable}");
      std::vector<PythonEdit::Point> pts;
      for (auto kv : py::cast<py::dict>(edits)) {
        const std::string name = py::cast<std::string>(kv.first);
        std::optional<PythonEdit::Point> pt;
        for (int l = 0; l < cfg().layers && !pt; ++l)
          for (int h = 0; h < int(Hook::kCount) && !pt; ++h)
            if (PythonEdit::editable(Hook(h)) && hook_name(l, Hook(h)) == name)
              pt = PythonEdit::Point{l, Hook(h), name, py::reinterpret_borrow<py::object>(kv.second)};
        if (!pt)
          value_error("edits: '" + name + "' is not an edit point; accepted: blocks.{0.." + std::to_string(cfg().layers - 1) +
                      "}.hook_resid_pre, .attn.hook_q, .attn.hook_k, .attn.hook_v, .attn.hook_z");
        if (!PyCallable_Check(kv.second.ptr())) value_error("edits['" + name + "']: expected a callable");
        pts.push_back(std::move(*pt));
      }
      if (!pts.empty()) ivs.edit = std::make_unique<PythonEdit>(std::move(pts));
    }
    return ivs;
  }

  // strategy: a preset name; config: a dict of OutRo parameters (the keys of an --outro-config
  // file) on top of it, as the CLI's --strategy / --outro-config.
  std::unique_ptr<OutRo> build_outro(py::object strategy, py::object config) {
    if (strategy.is_none() && config.is_none()) return nullptr;
    const bool explicit_strategy = !strategy.is_none();
    if (explicit_strategy && !py::isinstance<py::str>(strategy)) value_error("strategy: expected a preset name (str)");
    const std::string name = explicit_strategy ? py::cast<std::string>(strategy) : "outro";
    OutroParams p = as_value_error("strategy", [&] { return outro_preset(name); });
    std::string where = "strategy " + p.strategy;
    if (!config.is_none()) {
      if (!py::isinstance<py::dict>(config)) value_error("config: expected a dict of OutRo parameters");
      std::string text;
      try {
        text = py::cast<std::string>(py::module_::import("json").attr("dumps")(config));
      } catch (const py::error_already_set& e) {
        value_error(std::string("config: not serialisable as JSON: ") + e.what());
      }
      p = as_value_error("config", [&] { return parse_outro_config(text, "config", true, p, explicit_strategy); });
      where = "config";
    }
    as_value_error(where, [&] {
      apply_model_thresholds(p, read_model_thresholds(dir_));
      validate_outro(p, cfg(), where);
      return 0;
    });
    if (p.strategy == "baseline" && !outro_active(p)) return nullptr;
    return std::make_unique<OutRo>(std::move(p));
  }

  std::string dir_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Tokenizer> tok_;
  ChatPrompt chat_;
  std::unique_ptr<MultimodalModel> mm_;
  // One engine call at a time per model (the GIL is released while it runs). An edit callback
  // that calls its own model again would wait for itself: that is an error instead.
  std::mutex mu_;
  std::atomic<std::thread::id> owner_{};
  struct EngineLock {
    PyModel& m;
    std::unique_lock<std::mutex> l;
    explicit EngineLock(PyModel& model) : m(model) {
      if (m.owner_.load() == std::this_thread::get_id())
        fail("this model is already running on this thread (an edit callback called it); use another outro.Model");
      l = std::unique_lock<std::mutex>(m.mu_);
      m.owner_.store(std::this_thread::get_id());
    }
    ~EngineLock() { m.owner_.store(std::thread::id()); }
  };
};

}  // namespace

PYBIND11_MODULE(outro, m) {
  m.doc() = "The outro engine from Python: Hugging Face checkpoints, hook tensors as numpy arrays, "
            "edits at hook points, OutRo, generation and the sink analyses (docs/python.md).";
  // Kept for the interpreter's lifetime (a static's destructor would run after it is gone).
  g_error = new py::exception<Error>(m, "Error", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const PyCallbackFailed&) {
      // the callback's Python exception is already set
    } catch (const Error& e) {
      (*g_error)(e.what());
    }
  });
  m.attr("strategies") = py::cast(outro_preset_names());

  py::class_<ForwardResult>(m, "ForwardResult", "What Model.forward returns.")
      .def_readonly("logits", &ForwardResult::logits, "numpy float32 [n, vocab]")
      .def_readonly("hooks", &ForwardResult::hooks, "dict: hook name -> numpy float32 array (the CLI's layout)")
      .def_readonly("sinks", &ForwardResult::sinks, "OutRo runs: per layer, the Phi_LLM sink positions; else None")
      .def_readonly("tokens", &ForwardResult::tokens, "the prompt's token ids")
      .def_readonly("modality", &ForwardResult::modality, "per token: 0 text, 1 image, 2 video, 3 audio")
      .def_readonly("explain", &ForwardResult::explain, "what each intervention did (--explain)")
      .def("__repr__", [](const ForwardResult& r) {
        return "ForwardResult(logits " + std::string(py::str(r.logits.attr("shape"))) + ", hooks " +
               std::string(py::str(py::list(r.hooks))) + ")";
      });

  py::class_<GenerateOutput>(m, "Generation", "What Model.generate returns.")
      .def_readonly("text", &GenerateOutput::text)
      .def_readonly("tokens", &GenerateOutput::tokens)
      .def_readonly("stop_reason", &GenerateOutput::stop_reason)
      .def_readonly("prompt_tokens", &GenerateOutput::prompt_tokens)
      .def_readonly("prefill_seconds", &GenerateOutput::prefill_seconds)
      .def_readonly("decode_seconds", &GenerateOutput::decode_seconds)
      .def("__repr__", [](const GenerateOutput& g) { return "Generation(" + std::string(py::repr(py::str(g.text))) + ")"; });

  py::class_<PyModel>(m, "Model", "A Hugging Face model folder on the engine (device: cpu | cuda | auto).")
      .def(py::init<const std::string&, const std::string&, std::optional<int>>(), py::arg("path"),
           py::arg("device") = "auto", py::arg("threads") = py::none())
      .def_property_readonly("config", &PyModel::config)
      .def("hook_names", &PyModel::hook_names)
      .def("tokenize", &PyModel::tokenize, py::arg("text"), py::arg("chat") = false, py::arg("system") = py::none(),
           "Token ids of text (chat=True: through the chat template, as the CLI's --prompt)")
      .def("detokenize", &PyModel::detokenize, py::arg("tokens"), py::arg("skip_special") = false)
      .def("forward", &PyModel::forward, py::arg("tokens") = py::none(), py::kw_only(), py::arg("prompt") = py::none(),
           py::arg("hooks") = py::none(), py::arg("strategy") = py::none(), py::arg("config") = py::none(),
           py::arg("edits") = py::none(), py::arg("ablate_heads") = py::none(), py::arg("video") = py::none(),
           py::arg("audio") = py::none(), py::arg("image") = py::none(), py::arg("use_audio_in_video") = false,
           py::arg("system") = py::none(), py::arg("raw") = false)
      .def("generate", &PyModel::generate, py::arg("prompt") = py::none(), py::kw_only(), py::arg("tokens") = py::none(),
           py::arg("video") = py::none(), py::arg("audio") = py::none(), py::arg("image") = py::none(),
           py::arg("use_audio_in_video") = false, py::arg("max_new_tokens") = 64, py::arg("strategy") = py::none(),
           py::arg("config") = py::none(), py::arg("edits") = py::none(), py::arg("ablate_heads") = py::none(),
           py::arg("temperature") = py::none(), py::arg("top_k") = py::none(), py::arg("top_p") = py::none(),
           py::arg("seed") = py::none(), py::arg("stop") = py::none(), py::arg("system") = py::none(),
           py::arg("raw") = false, py::arg("max_context") = 0)
      .def("analyze", &PyModel::analyze, py::arg("tokens") = py::none(), py::kw_only(), py::arg("prompts") = py::none(),
           py::arg("metric") = "auto", py::arg("pruning") = true, py::arg("single_head") = true,
           py::arg("zeroing") = true, py::arg("tsne") = true, py::arg("seeds") = std::vector<uint64_t>{1, 2, 3},
           py::arg("tau_abs") = py::none(), py::arg("tau_rel") = py::none(), py::arg("score_sinks") = "phi_llm",
           py::arg("max_prompts") = 0, py::arg("raw") = false, py::arg("media_root") = "", py::arg("system") = "",
           py::arg("out") = py::none(), "outro analyze: report.json as a dict")
      .def("prompt_sinks", &PyModel::prompt_sinks, py::arg("tokens"), py::kw_only(), py::arg("tau_abs") = py::none(),
           py::arg("tau_rel") = py::none(), py::arg("vlm_tau") = 20.0, py::arg("dim_tau") = 20.0, py::arg("eps") = 0.3,
           "Per layer: the sink sets under Phi_LLM, Phi_VLM and the attention criterion, and the heads' sink scores")
      .def("__repr__", &PyModel::repr);
}
