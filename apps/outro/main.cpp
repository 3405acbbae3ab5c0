// outro: run, inspect and steer omni-modal language models from Hugging Face checkpoint folders.
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"

namespace {

void usage() {
  std::fputs(
      "usage: outro <command> [flags]\n"
      "\n"
      "commands:\n"
      "  generate  --model DIR (--prompt TEXT | --tokens 1,2,3) [--max-new-tokens N] [--greedy]\n"
      "            [--temperature T --top-k K --top-p P --seed S] [--stop STR] [--raw] [--json]\n"
      "            [--strategy NAME] [--outro-config FILE] [--explain] [--device cpu|cuda[:N]|auto]\n"
      "            [--video FILE [--use-audio-in-video]] [--audio FILE] [--image FILE]   (Omni / -VL)\n"
      "            [--system TEXT] [--think auto|on|off] [--audio-max-seconds S]   (0: the model's limit)\n"
      "  forward   --model DIR (--prompt TEXT | --tokens 1,2,3) --out FILE.safetensors [--hooks NAME[,NAME...]]\n"
      "            [--strategy NAME] [--outro-config FILE] [--video/--audio/--image FILE]\n"
      "            [--system TEXT] [--think auto|on|off] [--audio-max-seconds S]\n"
      "            (media: also writes token_modality 0 text 1 image 2 video 3 audio, position_ids)\n"
      "  analyze   --model DIR (--prompts FILE.jsonl | --tokens 1,2,3) --out DIR\n"
      "            [--metric loglik|accuracy] [--seeds 1,2,3] [--no-pruning] [--no-tsne] [--quiet]\n"
      "            writes DIR/report.json and DIR/report.html (sinks, head pruning, Fig. 1-5)\n"
      "  eval      --model DIR --bench FILE.jsonl --media-root DIR --strategies baseline,outro,...\n"
      "            --out DIR [--seeds N] [--limit N] [--max-new-tokens N]   (resumable; mpirun splits)\n"
      "  info      --model DIR          print the model's configuration\n"
      "  hooks     --model DIR          list the hook point names\n"
      "\n"
      "Without --model the embedded demo model (models/outro-omni-demo) is used.\n",
      stderr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    for (const auto& c : outro::cli::commands())
      if (cmd == c.name) return c.run(argc, argv);
    std::fprintf(stderr, "outro: unknown command '%s'\n", cmd.c_str());
    usage();
    return 2;
  } catch (const outro::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
