// The subcommand registry: each command lives in its own cmd_*.cpp and registers here.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace outro::cli {

struct Command {
  const char* name;
  std::function<int(int, char**)> run;  // argv[1] is the command name; flags start at argv[2]
};
const std::vector<Command>& commands();

int cmd_generate(int argc, char** argv);
int cmd_forward(int argc, char** argv);
int cmd_info(int argc, char** argv);
int cmd_hooks(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_analyze(int argc, char** argv);

}  // namespace outro::cli
