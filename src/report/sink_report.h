// The page of `outro analyze`: renders the report JSON of sink::run_analysis (every number on the
// page comes from that JSON) as one self-contained HTML file with inline SVG figures.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace outro::report {

std::string sink_report_html(const nlohmann::json& report);

// Writes DIR/report.json and DIR/report.html (creates DIR).
void write_sink_report(const std::string& dir, const nlohmann::json& report);

}  // namespace outro::report
