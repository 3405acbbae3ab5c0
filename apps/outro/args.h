// Command-line flags of the `outro` subcommands: --name value and boolean --name.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

namespace outro::cli {

class Args {
 public:
  // bool_flags: flags that take no value.
  Args(int argc, char** argv, int first, const std::set<std::string>& bool_flags);
  bool has(const std::string& k) const { return kv_.count(k) > 0; }
  std::string str(const std::string& k, const std::string& def = "") const;
  std::string required(const std::string& k) const;
  int integer(const std::string& k, int def) const;
  double number(const std::string& k, double def) const;
  bool flag(const std::string& k) const { return has(k); }
  // Fails on flags not in `known` (catches typos).
  void check_known(const std::set<std::string>& known) const;

 private:
  std::map<std::string, std::string> kv_;
  std::string cmd_;
};

std::vector<int32_t> parse_token_list(const std::string& s);
std::vector<std::string> split(const std::string& s, char sep);
// The model folder: --model, else $OUTRO_MODEL, else the embedded demo model.
std::string model_dir(const Args& a);

}  // namespace outro::cli
