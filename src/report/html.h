// A self-contained HTML page (inline CSS and SVG, no scripts, no network) built section by section.
#pragma once
#include <string>
#include <vector>

namespace outro::report {

class HtmlPage {
 public:
  explicit HtmlPage(std::string title) : title_(std::move(title)) {}
  void heading(int level, const std::string& text, const std::string& id = "");
  void paragraph(const std::string& text);   // escaped
  void raw(const std::string& html);         // inserted as is (e.g. an <svg> from svg.h)
  void figure(const std::string& svg, const std::string& caption);
  void table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);
  std::string render() const;

 private:
  std::string title_;
  std::vector<std::pair<std::string, std::string>> toc_;  // id, text of level-2 headings
  std::string body_;
};

}  // namespace outro::report
