//! The Prometheus text format 0.0.4 from OpenMetrics text.
//!
//! `prometheus_client` writes OpenMetrics only. A scraper that does not
//! ask for OpenMetrics (an older Prometheus, `curl`, `promtool check
//! metrics`) gets the classic format, which differs in what a family is
//! called, not in its samples: a counter family's `HELP`/`TYPE` name the
//! samples' `_total` name, an `info` family is a gauge named `_info`,
//! `unknown` is `untyped`, and there are no `# UNIT` or `# EOF` lines.
//! Before this, `promtool check metrics` refused the endpoint (exit 3,
//! `ffrtmp_events_total no help text`).

use std::fmt::Write as _;

/// Rewrites OpenMetrics text (as `prometheus_client` writes it: no
/// exemplars, no `_created` samples) into the classic text format.
pub(super) fn from_openmetrics(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // A family's HELP comes before its TYPE, which decides its name.
    let mut help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (family.to_string(), kind),
                // unknown, stateset, gaugehistogram: none is written here.
                _ => (family.to_string(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(h, _)| *h == family) {
                // OpenMetrics escapes `"` in help text; the classic format does not.
                let _ = writeln!(out, "# HELP {name} {}", text.replace("\\\"", "\""));
            }
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# TYPE {name} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_counter_and_info_families_and_drops_openmetrics_only_lines() {
        let om = "# HELP ffrtmp_events Events written.\n# TYPE ffrtmp_events counter\nffrtmp_events_total{event=\"exec\"} 3\n\
                  # HELP ffrtmp_build Build.\n# TYPE ffrtmp_build info\nffrtmp_build_info{version=\"1\"} 1\n\
                  # HELP ffrtmp_latency_seconds Latency.\n# TYPE ffrtmp_latency_seconds histogram\n# UNIT ffrtmp_latency_seconds seconds\n\
                  ffrtmp_latency_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP ffrtmp_events_total Events written.\n# TYPE ffrtmp_events_total counter\nffrtmp_events_total{event=\"exec\"} 3\n\
             # HELP ffrtmp_build_info Build.\n# TYPE ffrtmp_build_info gauge\nffrtmp_build_info{version=\"1\"} 1\n\
             # HELP ffrtmp_latency_seconds Latency.\n# TYPE ffrtmp_latency_seconds histogram\n\
             ffrtmp_latency_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
