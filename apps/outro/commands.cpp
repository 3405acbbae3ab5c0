#include "commands.h"

namespace outro::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> c = {
      {"generate", cmd_generate},
      {"forward", cmd_forward},
      {"info", cmd_info},
      {"hooks", cmd_hooks},
      {"eval", cmd_eval},
      {"analyze", cmd_analyze},
  };
  return c;
}

}  // namespace outro::cli
