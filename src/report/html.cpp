#include "report/html.h"

#include "report/svg.h"

namespace outro::report {

void HtmlPage::heading(int level, const std::string& text, const std::string& id) {
  const std::string l = std::to_string(level < 1 ? 1 : level > 4 ? 4 : level);
  std::string anchor = id.empty() ? "s" + std::to_string(toc_.size() + 1) : id;
  body_.append("<h").append(l).append(" id=\"").append(xml_escape(anchor)).append("\">");
  body_.append(xml_escape(text)).append("</h").append(l).append(">\n");
  if (level == 2) toc_.push_back({anchor, text});
}

void HtmlPage::paragraph(const std::string& text) { body_ += "<p>" + xml_escape(text) + "</p>\n"; }

void HtmlPage::raw(const std::string& html) { body_ += html + "\n"; }

void HtmlPage::figure(const std::string& svg, const std::string& caption) {
  body_ += "<figure>" + svg + "<figcaption>" + xml_escape(caption) + "</figcaption></figure>\n";
}

void HtmlPage::table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  bool any = false;
  for (const auto& h : header) any = any || !h.empty();
  body_ += "<table>";
  if (any) {
    body_ += "<thead><tr>";
    for (const auto& h : header) body_ += "<th>" + xml_escape(h) + "</th>";
    body_ += "</tr></thead>";
  }
  body_ += "<tbody>";
  for (const auto& r : rows) {
    body_ += "<tr>";
    for (const auto& c : r) body_ += "<td>" + xml_escape(c) + "</td>";
    body_ += "</tr>";
  }
  body_ += "</tbody></table>\n";
}

std::string HtmlPage::render() const {
  std::string o =
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" + xml_escape(title_) +
      "</title>\n<style>\n"
      "body{font-family:sans-serif;max-width:1000px;margin:24px auto;padding:0 16px;color:#222;line-height:1.45}\n"
      "h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:2em}\n"
      "figure{margin:16px 0}figcaption{font-size:.9em;color:#444;max-width:900px}\n"
      "table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\n"
      "th{background:#f4f4f4}.grid{display:flex;flex-wrap:wrap;gap:8px}nav a{margin-right:12px}\n"
      "code{background:#f4f4f4;padding:1px 4px}.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:4px 8px}\n"
      "</style></head><body>\n<h1>" +
      xml_escape(title_) + "</h1>\n";
  if (!toc_.empty()) {
    o += "<nav>";
    for (const auto& [id, text] : toc_) o += "<a href=\"#" + xml_escape(id) + "\">" + xml_escape(text) + "</a>";
    o += "</nav>\n";
  }
  return o + body_ + "</body></html>\n";
}

}  // namespace outro::report
