#include "eval/synth.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "core/error.h"

namespace outro::eval {

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kColours = {"red", "blue", "green", "yellow", "purple", "orange", "white", "black"};
const std::vector<std::string> kShapes = {"circle", "square", "triangle", "star", "ball", "box"};
const std::vector<std::string> kDirs = {"left", "right", "up", "down"};
const std::vector<std::string> kSounds = {"a tone", "a beep", "a drum", "a bell", "silence"};

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t s) : g(s * 0x9E3779B97F4A7C15ull + 17) {}
  size_t below(size_t n) { return size_t(g() % n); }
  const std::string& pick(const std::vector<std::string>& v) { return v[below(v.size())]; }
  bool coin() { return g() & 1; }
};

// answer + three others from pool, shuffled
std::vector<std::string> choices(Rng& r, const std::string& answer, const std::vector<std::string>& pool, int* idx) {
  std::vector<std::string> rest;
  for (auto& p : pool)
    if (p != answer) rest.push_back(p);
  std::vector<std::string> opts = {answer};
  for (int k = 0; k < 3 && !rest.empty(); ++k) {
    size_t i = r.below(rest.size());
    opts.push_back(rest[i]);
    rest.erase(rest.begin() + long(i));
  }
  for (size_t i = opts.size() - 1; i > 0; --i) std::swap(opts[i], opts[r.below(i + 1)]);
  for (size_t i = 0; i < opts.size(); ++i)
    if (opts[i] == answer) *idx = int(i);
  return opts;
}

int sound_hz(const std::string& s) {
  if (s == "a tone") return 440;
  if (s == "a beep") return 1000;
  if (s == "a drum") return 110;
  if (s == "a bell") return 1760;
  return 0;
}

}  // namespace

std::vector<Item> synth_items(const SynthOptions& o) {
  Rng r(o.seed);
  std::vector<Item> items;
  for (int n = 0; n < o.n; ++n) {
    const std::string c = r.pick(kColours), s = r.pick(kShapes), d = r.pick(kDirs), snd = r.pick(kSounds);
    const int beeps = int(r.below(6));
    const bool visible = r.coin();
    std::string desc = "A " + c + " " + s + " moves " + d + " while " + snd + " plays.";
    if (snd == "a beep") desc = "A " + c + " " + s + " moves " + d + ". There are " + std::to_string(beeps) + " beeps.";
    desc += visible ? " The sounding object is visible." : " The sounding object is not visible.";
    Item it;
    char id[32];
    std::snprintf(id, sizeof id, "synth-%03d", n);
    it.id = id;
    it.context = desc;
    const int kind = n % 6;  // every kind appears, in turn
    if (kind == 0) {
      it.question = "Which colour is the shape?";
      it.options = choices(r, c, kColours, &it.answer);
      it.task = "colour";
      it.category = "visual";
    } else if (kind == 1) {
      it.question = "Which direction does the shape move?";
      it.options = choices(r, d, kDirs, &it.answer);
      it.task = "direction";
      it.category = "visual";
    } else if (kind == 2) {
      it.question = "What is the shape?";
      it.options = choices(r, s, kShapes, &it.answer);
      it.task = "shape";
      it.category = "visual";
    } else if (kind == 3 && snd == "a beep") {
      std::vector<std::string> counts;
      for (int i = 0; i < 6; ++i) counts.push_back(std::to_string(i));
      it.question = "How many beeps are there?";
      it.options = choices(r, std::to_string(beeps), counts, &it.answer);
      it.task = "counting";
      it.category = "audio";
    } else if (kind == 4 || kind == 3) {
      const bool yes = r.coin();
      std::string other = c;
      while (other == c) other = r.pick(kColours);
      it.question = "Is the shape " + (yes ? c : other) + "?";
      it.options = {"yes", "no"};
      it.answer = yes ? 0 : 1;
      it.task = "colour yes/no";
      it.category = "visual";
    } else {
      it.question = "Is the sounding object visible?";
      it.options = {"yes", "no"};
      it.answer = visible ? 0 : 1;
      it.task = "sound source";
      it.category = "audio-visual";
    }
    // ffmpeg colour + tone of the scene, encoded in the file names' sources (see write_synth_benchmark)
    it.media = {{"video", "clips/" + it.id + ".mp4"}, {"audio", "clips/" + it.id + ".wav"}};
    items.push_back(std::move(it));
  }
  return items;
}

std::string find_ffmpeg() {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  size_t a = 0;
  while (a <= p.size()) {
    size_t b = p.find(':', a);
    if (b == std::string::npos) b = p.size();
    fs::path cand = fs::path(p.substr(a, b - a)) / "ffmpeg";
    if (::access(cand.c_str(), X_OK) == 0) return cand.string();
    a = b + 1;
  }
  return "";
}

static void run_ffmpeg(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) fail("fork failed");
  if (pid == 0) {
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    std::string cmd;
    for (auto& a : args) cmd += a + " ";
    fail("ffmpeg failed (status ", WIFEXITED(st) ? WEXITSTATUS(st) : -1, "): ", cmd);
  }
}

std::vector<Item> write_synth_benchmark(const std::string& dir, const SynthOptions& o) {
  std::vector<Item> items = synth_items(o);
  fs::create_directories(dir);
  if (o.media) {
    const std::string ff = find_ffmpeg();
    if (ff.empty()) fail("ffmpeg not found on PATH: install it (scripts/apt-packages.txt lists ffmpeg) or pass --no-media");
    const fs::path clips = fs::path(dir) / "media" / "clips";
    fs::create_directories(clips);
    for (auto& it : items) {
      // The colour and tone of the scene, read back from the description the item carries.
      std::string colour = "gray", tone = "0";
      for (auto& c : kColours)
        if (it.context.rfind("A " + c + " ", 0) == 0) colour = c;
      for (auto& s : kSounds)
        if (it.context.find(s) != std::string::npos && sound_hz(s) > 0) tone = std::to_string(sound_hz(s));
      const std::string audio_src =
          tone == "0" ? "anullsrc=r=16000:cl=mono" : "sine=frequency=" + tone + ":sample_rate=16000";
      run_ffmpeg({ff, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                  "color=c=" + colour + ":size=64x64:rate=4:duration=1", "-f", "lavfi", "-t", "1", "-i", audio_src,
                  "-map", "0:v", "-map", "1:a", "-shortest", "-pix_fmt", "yuv420p", (clips / (it.id + ".mp4")).string(),
                  "-map", "1:a", "-t", "1", (clips / (it.id + ".wav")).string()});
    }
  }
  write_bench((fs::path(dir) / "bench.jsonl").string(), items);
  return items;
}

}  // namespace outro::eval
