// Errors that reach the user: one line naming the file/tensor/field, what was expected, what was found.
#pragma once
#include <stdexcept>
#include <string>

namespace outro {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Concatenates its arguments with operator<< into one message and throws outro::Error.
template <typename... Args>
[[noreturn]] void fail(const Args&... args);

}  // namespace outro

#include <sstream>
namespace outro {
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}
}  // namespace outro
