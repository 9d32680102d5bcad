//! A parser for the Prometheus text format 0.0.4, into [`Family`] values that encode back to
//! the same bytes (for input that is already in client_golang's order, as every KubeVirt
//! component's is).
//!
//! Hand-written: the one crate for this, `prometheus-parse` 0.2, keeps labels in a `HashMap`
//! (their order is lost, so nothing can be re-served unchanged), cuts label values at the
//! first `}`, and skips lines it cannot read instead of reporting them.
//!
//! The rules follow client_golang's `expfmt.TextParser`: `# HELP`/`# TYPE` lines (at most one
//! each per name, TYPE before the family's first sample), other `#` lines are comments,
//! label values escape `\\`, `\"` and `\n`, HELP escapes `\\` and `\n`, values are Go floats
//! (`NaN`, `+Inf`, `-Inf` included), timestamps are integer milliseconds. A histogram `x` owns
//! `x_bucket` (with an `le` label), `x_sum` and `x_count`; a summary owns `x` (with
//! `quantile`), `x_sum` and `x_count`; a sample of no declared family becomes an untyped
//! family of its own. Anything else is an error naming the line; the parser never panics.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use crate::core::metric::{Family, Labels, MetricType, Sample};

/// Why a text exposition could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// Parses a whole text-format exposition. Families keep the order in which they first
/// appear; samples keep their order and their labels' order.
pub fn parse(text: &str) -> Result<Vec<Family>, ParseError> {
    let mut parser = Parser::default();
    for (index, line) in text.lines().enumerate() {
        parser.line(line).map_err(|reason| ParseError {
            line: index + 1,
            reason,
        })?;
    }
    Ok(parser.families)
}

/// The names of the families a text exposition serves, without reading samples: names on
/// `# HELP`/`# TYPE` lines, plus the name of any sample that belongs to no declared family
/// (untyped). For the complement check, which runs every interval against an exposition that
/// can be megabytes: it allocates per family, not per sample, and a malformed sample line
/// costs that line, not the whole answer (the names it can still read are kept).
pub fn family_names(text: &str) -> BTreeSet<String> {
    let mut declared: HashMap<&str, Option<&str>> = HashMap::new();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches([' ', '\t']);
        if let Some(comment) = line.strip_prefix('#') {
            let (keyword, rest) = split_token(comment);
            if keyword == "HELP" || keyword == "TYPE" {
                let (name, rest) = split_token(rest);
                if check_metric_name(name).is_ok() {
                    let kind = declared.entry(name).or_insert(None);
                    if keyword == "TYPE" {
                        *kind = Some(split_token(rest).0);
                    }
                    names.insert(name.to_owned());
                }
            }
            continue;
        }
        let end = line
            .find(|c: char| !is_metric_name_char(c))
            .unwrap_or(line.len());
        let name = &line[..end];
        if name.is_empty() || declared.contains_key(name) || check_metric_name(name).is_err() {
            continue;
        }
        let owned_by_declared = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .and_then(|base| declared.get(base))
                .and_then(|kind| *kind)
                .is_some_and(|kind| {
                    kind.eq_ignore_ascii_case("histogram")
                        || (kind.eq_ignore_ascii_case("summary") && !suffix.ends_with("bucket"))
                })
        });
        if !owned_by_declared {
            declared.insert(name, None);
            names.insert(name.to_owned());
        }
    }
    names
}

#[derive(Default)]
struct Parser {
    families: Vec<Family>,
    by_name: HashMap<String, FamilyState>,
}

struct FamilyState {
    index: usize,
    help_seen: bool,
    type_seen: bool,
    has_samples: bool,
}

type LineResult = Result<(), String>;

impl Parser {
    fn line(&mut self, line: &str) -> LineResult {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() {
            return Ok(());
        }
        match trimmed.strip_prefix('#') {
            Some(comment) => self.comment(comment),
            None => self.sample(trimmed),
        }
    }

    fn comment(&mut self, comment: &str) -> LineResult {
        let rest = comment.trim_start_matches([' ', '\t']);
        let (keyword, rest) = split_token(rest);
        match keyword {
            "HELP" => {
                let (name, help) = split_token(rest);
                check_metric_name(name)?;
                let help = unescape_help(help)?;
                let state = self.family_state(name);
                if state.help_seen {
                    return Err(format!("second HELP line for {name}"));
                }
                state.help_seen = true;
                let index = state.index;
                self.families[index].help = Cow::Owned(help);
                Ok(())
            }
            "TYPE" => {
                let (name, rest) = split_token(rest);
                check_metric_name(name)?;
                let (word, trailing) = split_token(rest);
                if !trailing.is_empty() {
                    return Err(format!("unexpected text after TYPE: {trailing:?}"));
                }
                let kind = metric_type(word)?;
                let state = self.family_state(name);
                if state.type_seen {
                    return Err(format!("second TYPE line for {name}"));
                }
                if state.has_samples {
                    return Err(format!("TYPE line for {name} after its samples"));
                }
                state.type_seen = true;
                let index = state.index;
                self.families[index].kind = kind;
                Ok(())
            }
            // Any other comment, `# EOF` included, carries nothing.
            _ => Ok(()),
        }
    }

    /// The state of family `name`, created (untyped, no help) if it is new.
    fn family_state(&mut self, name: &str) -> &mut FamilyState {
        let families = &mut self.families;
        self.by_name.entry(name.to_owned()).or_insert_with(|| {
            families.push(Family::new(name.to_owned(), "", MetricType::Untyped));
            FamilyState {
                index: families.len() - 1,
                help_seen: false,
                type_seen: false,
                has_samples: false,
            }
        })
    }

    fn sample(&mut self, line: &str) -> LineResult {
        let name_end = line
            .find(|c: char| !is_metric_name_char(c))
            .unwrap_or(line.len());
        let name = &line[..name_end];
        check_metric_name(name)?;
        let mut rest = line[name_end..].trim_start_matches([' ', '\t']);
        let labels = if let Some(after_brace) = rest.strip_prefix('{') {
            let (labels, after) = parse_labels(after_brace)?;
            rest = after.trim_start_matches([' ', '\t']);
            labels
        } else {
            Labels::new()
        };
        let (value, rest) = split_token(rest);
        if value.is_empty() {
            return Err(format!("sample {name} has no value"));
        }
        let value = parse_value(value)?;
        let (timestamp, trailing) = split_token(rest);
        if !trailing.is_empty() {
            return Err(format!("unexpected text after the sample: {trailing:?}"));
        }
        let timestamp_ms = if timestamp.is_empty() {
            None
        } else {
            Some(
                timestamp
                    .parse::<i64>()
                    .map_err(|_| format!("invalid timestamp {timestamp:?}"))?,
            )
        };

        let (index, suffix) = self.owner(name);
        let family = &self.families[index];
        check_special_label(family, suffix, &labels)?;
        self.families[index].samples.push(Sample {
            suffix,
            labels,
            value,
            timestamp_ms,
        });
        Ok(())
    }

    /// The family a sample named `name` belongs to, and its suffix in that family.
    fn owner(&mut self, name: &str) -> (usize, &'static str) {
        for suffix in ["_bucket", "_sum", "_count"] {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            if let Some(state) = self.by_name.get_mut(base) {
                let kind = self.families[state.index].kind;
                let owns = match kind {
                    MetricType::Histogram => true,
                    MetricType::Summary => suffix != "_bucket",
                    _ => false,
                };
                if owns {
                    state.has_samples = true;
                    return (state.index, suffix);
                }
            }
        }
        let state = self.family_state(name);
        state.has_samples = true;
        (state.index, "")
    }
}

/// A histogram's buckets need `le`, a summary's quantiles need `quantile`, and a histogram
/// has no sample without a suffix.
fn check_special_label(family: &Family, suffix: &str, labels: &Labels) -> LineResult {
    let needs = match (family.kind, suffix) {
        (MetricType::Histogram, "_bucket") => "le",
        (MetricType::Summary, "") => "quantile",
        (MetricType::Histogram, "") => {
            return Err(format!(
                "histogram {} has a sample without _bucket, _sum or _count",
                family.name
            ));
        }
        _ => return Ok(()),
    };
    match labels.iter().find(|(name, _)| name == needs) {
        Some((_, value)) => parse_value(value)
            .map(|_| ())
            .map_err(|_| format!("{} has an invalid {needs} value {value:?}", family.name)),
        None => Err(format!("{}{suffix} has no {needs} label", family.name)),
    }
}

/// Reads `name="value",...}` (after the `{`); returns the labels and the text after `}`.
fn parse_labels(mut rest: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels.into(), after));
        }
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        check_label_name(name)?;
        if labels.iter().any(|(existing, _)| existing == name) {
            return Err(format!("duplicate label {name}"));
        }
        rest = rest[name_end..].trim_start_matches([' ', '\t']);
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| format!("expected '=' after label {name}"))?;
        rest = rest.trim_start_matches([' ', '\t']);
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("expected '\"' to start the value of label {name}"))?;
        let (value, after) = read_label_value(rest)?;
        labels.push((name.into(), value.into()));
        rest = after.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected ',' or '}}' after label {name}"));
        }
    }
}

/// Reads a label value after its opening quote; returns it unescaped and the text after the
/// closing quote.
fn read_label_value(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => {
                    return Err(format!("invalid escape \\{other} in a label value"));
                }
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("label value without closing quote".to_owned())
}

fn unescape_help(text: &str) -> Result<String, String> {
    let mut help = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            help.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => help.push('\\'),
            Some('n') => help.push('\n'),
            Some(other) => return Err(format!("invalid escape \\{other} in HELP")),
            None => return Err("HELP ends with a lone backslash".to_owned()),
        }
    }
    Ok(help)
}

/// A Go float as `strconv.ParseFloat` reads it (`NaN`, `+Inf`, `-Inf`, `1e+06`, ...).
fn parse_value(text: &str) -> Result<f64, String> {
    // Rust also reads "infinity" and "nan" in any case, like Go; it rejects Go's hex floats
    // and digit separators, which no client library writes.
    text.parse::<f64>()
        .map_err(|_| format!("invalid value {text:?}"))
}

fn metric_type(word: &str) -> Result<MetricType, String> {
    // client_golang upper-cases the word before looking it up.
    match word.to_ascii_lowercase().as_str() {
        "counter" => Ok(MetricType::Counter),
        "gauge" => Ok(MetricType::Gauge),
        "histogram" => Ok(MetricType::Histogram),
        "summary" => Ok(MetricType::Summary),
        "untyped" => Ok(MetricType::Untyped),
        _ => Err(format!("unknown metric type {word:?}")),
    }
}

/// The first blank-separated token and the rest (leading blanks of the rest removed).
fn split_token(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    match text.find([' ', '\t']) {
        Some(end) => (&text[..end], text[end..].trim_start_matches([' ', '\t'])),
        None => (text, ""),
    }
}

fn is_metric_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn check_metric_name(name: &str) -> LineResult {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name.chars().all(is_metric_name_char);
    if valid {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> LineResult {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!("invalid label name {name:?}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn label_pairs(sample: &Sample) -> Vec<(&str, &str)> {
        sample
            .labels
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
            .collect()
    }

    #[test]
    fn reads_families_types_help_and_samples() {
        let text = "# HELP a_total A \\\\ counter\\nwith newline.\n\
                    # TYPE a_total counter\n\
                    a_total{code=\"200\",url=\"http://x/{y}\"} 3 1700000000123\n\
                    a_total{code=\"5\\\"0\\\\0\\n\" , } +Inf\n\
                    # some comment\n\
                    \n\
                    # TYPE h histogram\n\
                    h_bucket{le=\"0.5\"} 1\n\
                    h_bucket{le=\"+Inf\"} 2\n\
                    h_sum 0.75\n\
                    h_count 2\n\
                    # TYPE s summary\n\
                    s{quantile=\"0.5\"} NaN\n\
                    s_sum 1e-05\n\
                    s_count 7\n\
                    loose_sample -1.5e+06\n\
                    # EOF\n";
        let families = parse(text).unwrap();
        let names: Vec<&str> = families.iter().map(|f| f.name.as_ref()).collect();
        assert_eq!(names, ["a_total", "h", "s", "loose_sample"]);

        let a = &families[0];
        assert_eq!(a.kind, MetricType::Counter);
        assert_eq!(a.help, "A \\ counter\nwith newline.");
        assert_eq!(
            label_pairs(&a.samples[0]),
            [("code", "200"), ("url", "http://x/{y}")]
        );
        assert_eq!(a.samples[0].timestamp_ms, Some(1_700_000_000_123));
        assert_eq!(label_pairs(&a.samples[1]), [("code", "5\"0\\0\n")]);
        assert_eq!(a.samples[1].value, f64::INFINITY);

        let h = &families[1];
        let suffixes: Vec<&str> = h.samples.iter().map(|s| s.suffix).collect();
        assert_eq!(suffixes, ["_bucket", "_bucket", "_sum", "_count"]);
        assert!(families[2].samples[0].value.is_nan());
        assert_eq!(families[2].samples[1].suffix, "_sum");
        assert_eq!(families[3].kind, MetricType::Untyped);
        assert_eq!(families[3].help, "");
        assert_eq!(families[3].samples[0].value, -1.5e6);
    }

    #[test]
    fn family_names_agree_with_the_full_parse() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 1\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n\
                    # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\ns_bucket 1\n\
                    loose 1\nloose 2\n# HELP declared_only Nothing yet.\n";
        let full: BTreeSet<String> = parse(text)
            .unwrap()
            .into_iter()
            .map(|f| f.name.into_owned())
            .collect();
        assert_eq!(family_names(text), full);
        assert_eq!(
            family_names(text).into_iter().collect::<Vec<_>>(),
            ["a_total", "declared_only", "h", "loose", "s", "s_bucket"]
        );
        // A broken line costs only itself.
        let names = family_names("# TYPE g gauge\ng{oops 1\n9bad 1\nother{a=\"b\"} 2\n");
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["g", "other"]);
    }

    #[test]
    fn declared_families_without_samples_are_kept() {
        let families = parse("# HELP g Nothing yet.\n# TYPE g gauge\n").unwrap();
        assert_eq!(families.len(), 1);
        assert!(families[0].is_empty());
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("ok 1\nbad{ 1\n", 2, "invalid label name"),
            ("x{a=\"b} 1\n", 1, "closing quote"),
            ("x{a=\"b\\t\"} 1\n", 1, "invalid escape"),
            ("x{a=\"b\",a=\"c\"} 1\n", 1, "duplicate label"),
            ("x{a=\"b\" b=\"c\"} 1\n", 1, "expected ','"),
            ("x 1 2 3\n", 1, "unexpected text"),
            ("x one\n", 1, "invalid value"),
            ("x 1 1.5\n", 1, "invalid timestamp"),
            ("x\n", 1, "no value"),
            ("9x 1\n", 1, "invalid metric name"),
            ("{a=\"b\"} 1\n", 1, "invalid metric name"),
            ("# TYPE x gauge\n# TYPE x gauge\n", 2, "second TYPE"),
            ("# HELP x a\n# HELP x b\n", 2, "second HELP"),
            ("x 1\n# TYPE x gauge\n", 2, "after its samples"),
            ("# TYPE x flux\n", 1, "unknown metric type"),
            ("# TYPE x\n", 1, "unknown metric type"),
            ("# HELP x bad \\q\n", 1, "invalid escape"),
            ("# TYPE h histogram\nh_bucket 1\n", 2, "no le label"),
            (
                "# TYPE h histogram\nh_bucket{le=\"x\"} 1\n",
                2,
                "invalid le",
            ),
            ("# TYPE h histogram\nh 1\n", 2, "without _bucket"),
            ("# TYPE s summary\ns 1\n", 2, "no quantile label"),
        ];
        for (text, line, needle) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.line, *line, "{text:?}: {err}");
            assert!(err.reason.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // Every prefix and every single-byte corruption of a valid exposition.
        let valid = "# HELP a_total Help \\\\ x.\n# TYPE a_total counter\na_total{b=\"c\\\"d\",é=\"ü\"} 1 2\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\n";
        for end in 0..=valid.len() {
            if valid.is_char_boundary(end) {
                let _ = parse(&valid[..end]);
            }
        }
        let bytes = valid.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'"', b'\\', b'{', b'}', b' ', b'\n', b'#', b'=', b',', 0xC3] {
                let mut corrupted = bytes.to_vec();
                corrupted[i] = replacement;
                let text = String::from_utf8_lossy(&corrupted);
                let _ = parse(&text);
            }
        }
    }
}
