//! The two text formats of `/metrics`, chosen by the scraper's `Accept` header: the
//! OpenMetrics text that `prometheus-client` encodes, for a client that asks for it
//! (Prometheus does), and the Prometheus text format 0.0.4 for every other client
//! (`curl`, `promtool check metrics`), which reads a counter's `# HELP` and `# TYPE`
//! under the name of its sample (`…_total`) and knows no `# UNIT` or `# EOF`.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the client accepts OpenMetrics text (any `Accept` entry of that type
/// whose quality is not 0).
pub fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|entry| {
            let mut parts = entry.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        })
}

/// The answer to a scrape: `openmetrics` (as `prometheus-client` encodes it) as is,
/// or in the Prometheus text format, as the request's `Accept` asks.
pub fn response(headers: &HeaderMap, openmetrics: String) -> Response {
    if wants_openmetrics(headers) {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS))],
            openmetrics,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_TEXT),
            )],
            to_prometheus_text(&openmetrics),
        )
            .into_response()
    }
}

/// OpenMetrics text in the Prometheus text format 0.0.4: a counter's metadata names
/// its sample (`x_total`), `unknown` is `untyped`, `# UNIT` and `# EOF` are left out.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                let tail = if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_sample_and_openmetrics_markers_go() {
        let om = "# HELP a_sent Offers sent.\n# TYPE a_sent counter\n# UNIT a_sent offers\n\
                  a_sent_total 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_sent_total Offers sent.\n# TYPE a_sent_total counter\na_sent_total 3\n\
             # HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }

    #[test]
    fn accept_header_chooses_the_format() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            wants_openmetrics(&h)
        };
        assert!(!wants_openmetrics(&HeaderMap::new()));
        assert!(!with("*/*"));
        assert!(!with("text/plain;version=0.0.4"));
        assert!(with(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!with("application/openmetrics-text;q=0, text/plain"));
    }
}
