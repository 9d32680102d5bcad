//! Picks the exposition format from a scrape's `Accept` header, the way client_golang's
//! `expfmt.NegotiateIncludingOpenMetrics` does (promhttp with OpenMetrics enabled).
//!
//! Prometheus 2.42 sends
//! `application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`
//! and gets OpenMetrics 1.0.0; a `curl` without `Accept` gets text 0.0.4. We never serve the
//! protobuf format, so a request that prefers it falls through to the next range it accepts.
//!
//! `application/json` (which no Prometheus sends) selects our JSON format ([`json`]); a
//! client may also ask for it with `?format=json` ([`Format::from_query`]).
//!
//! One deliberate difference from goautoneg: a media range with `q=0` means "not acceptable"
//! (RFC 9110 §12.4.2) and is skipped instead of being chosen.

use super::{json, openmetrics, text};

/// A format this crate can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4 ([`text::encode`]).
    Text,
    /// OpenMetrics 1.0.0 ([`openmetrics::encode`]).
    OpenMetrics1,
    /// OpenMetrics 0.0.1: asked for by `application/openmetrics-text` without a version.
    /// client_golang writes the same body as for 1.0.0 and only labels it differently.
    OpenMetrics0,
    /// Our JSON schema ([`json::encode`]).
    Json,
}

impl Format {
    /// The `Content-Type` header of a response in this format, byte for byte what
    /// client_golang sends.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => text::CONTENT_TYPE,
            Self::OpenMetrics1 => openmetrics::CONTENT_TYPE,
            Self::OpenMetrics0 => openmetrics::CONTENT_TYPE_0_0_1,
            Self::Json => json::CONTENT_TYPE,
        }
    }

    /// The format named by `/metrics?format=NAME`: `text`, `openmetrics` or `json`.
    pub fn from_query(name: &str) -> Option<Self> {
        match name {
            "text" => Some(Self::Text),
            "openmetrics" => Some(Self::OpenMetrics1),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// Whether the body is OpenMetrics (the two OpenMetrics versions share one body).
    pub fn is_openmetrics(self) -> bool {
        matches!(self, Self::OpenMetrics1 | Self::OpenMetrics0)
    }
}

/// The format to answer a request with `Accept: accept` (or no `Accept` header: `None`).
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut ranges: Vec<MediaRange<'_>> = accept.split(',').filter_map(MediaRange::parse).collect();
    // Highest q first; among equal q, concrete types before wildcards (goautoneg's order).
    // The sort is stable, so ties keep the order the client wrote them in.
    ranges.sort_by(|a, b| {
        b.q.total_cmp(&a.q)
            .then_with(|| a.wildcards().cmp(&b.wildcards()))
    });
    for range in ranges.iter().filter(|r| r.q > 0.0) {
        let version = range.version.unwrap_or("");
        if range.is("text", "plain") && (version.is_empty() || version == "0.0.4") {
            return Format::Text;
        }
        if range.is("application", "openmetrics-text") {
            match version {
                "1.0.0" => return Format::OpenMetrics1,
                "" | "0.0.1" => return Format::OpenMetrics0,
                _ => {}
            }
        }
        if range.is("application", "json") {
            return Format::Json;
        }
    }
    Format::Text
}

/// One element of an `Accept` header: `type/subtype;param=value;q=0.5`.
#[derive(Debug)]
struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    version: Option<&'a str>,
    q: f64,
}

impl<'a> MediaRange<'a> {
    fn parse(element: &'a str) -> Option<Self> {
        let mut parts = element.split(';');
        let (kind, subtype) = parts.next()?.trim().split_once('/')?;
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() {
            return None;
        }
        let mut range = Self {
            kind,
            subtype,
            version: None,
            q: 1.0,
        };
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "version" => range.version = Some(value),
                // goautoneg: an unparsable q counts as 0.
                "q" => range.q = value.parse::<f64>().unwrap_or(0.0),
                _ => {}
            }
        }
        Some(range)
    }

    fn is(&self, kind: &str, subtype: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    /// 0 for `a/b`, 1 for `a/*`, 2 for `*/*`: fewer wildcards sort first.
    fn wildcards(&self) -> u8 {
        u8::from(self.kind == "*") + u8::from(self.subtype == "*")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PROMETHEUS_2_42: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn prometheus_gets_openmetrics_1() {
        assert_eq!(negotiate(Some(PROMETHEUS_2_42)), Format::OpenMetrics1);
        assert_eq!(
            Format::OpenMetrics1.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }

    #[test]
    fn prometheus_3_gets_openmetrics_1_and_its_escaping_parameter_is_ignored() {
        // Our names are all legacy-valid, so no escaping scheme changes a byte.
        let prometheus_3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus_3)), Format::OpenMetrics1);
        // Text 1.0.0 alone is not something we write; 0.0.4 is the next choice.
        assert_eq!(
            negotiate(Some(
                "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2"
            )),
            Format::Text
        );
    }

    #[test]
    fn plain_clients_get_text() {
        for accept in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4"),
            Some("garbage;;;,,"),
            // What Prometheus sends with scrape_protocols: [PrometheusText0.0.4].
            Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
        ] {
            assert_eq!(negotiate(accept), Format::Text, "{accept:?}");
        }
        assert_eq!(
            Format::Text.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    #[test]
    fn json_is_chosen_by_accept_or_query() {
        for accept in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/plain;q=0.5, application/json",
            "application/json, */*;q=0.1",
        ] {
            assert_eq!(negotiate(Some(accept)), Format::Json, "{accept}");
        }
        assert_eq!(
            negotiate(Some("application/json;q=0.2, text/plain;q=0.9")),
            Format::Text
        );
        assert_eq!(negotiate(Some("application/json;q=0")), Format::Text);
        // A browser's Accept does not ask for JSON.
        assert_eq!(
            negotiate(Some(
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
            )),
            Format::Text
        );
        assert_eq!(Format::Json.content_type(), "application/json");
        assert_eq!(Format::from_query("json"), Some(Format::Json));
        assert_eq!(Format::from_query("text"), Some(Format::Text));
        assert_eq!(
            Format::from_query("openmetrics"),
            Some(Format::OpenMetrics1)
        );
        assert_eq!(Format::from_query("JSON"), None);
        assert_eq!(Format::from_query("xml"), None);
    }

    #[test]
    fn openmetrics_without_version_is_0_0_1() {
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics0
        );
        assert_eq!(
            Format::OpenMetrics0.content_type(),
            "application/openmetrics-text; version=0.0.1; charset=utf-8"
        );
    }

    #[test]
    fn q_values_and_wildcards_order_the_choice() {
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0;q=0.2, text/plain;q=0.9"
            )),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("*/*, application/openmetrics-text; version=\"1.0.0\"")),
            Format::OpenMetrics1
        );
        // Unsupported versions and protobuf are passed over.
        assert_eq!(
            negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=2.0.0,application/openmetrics-text;version=1.0.0;q=0.5"
            )),
            Format::OpenMetrics1
        );
        // q=0 means "not acceptable".
        assert_eq!(
            negotiate(Some("application/openmetrics-text;version=1.0.0;q=0")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("APPLICATION/OpenMetrics-Text ; version=1.0.0")),
            Format::OpenMetrics1
        );
    }
}
