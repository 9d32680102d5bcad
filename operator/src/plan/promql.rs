//! The metric names a PromQL expression reads: which series a backported rule needs, and (in
//! the e2e checks) which series a shipped alert or dashboard query asks for. A small scanner,
//! not a parser: strings, label matchers `{...}`, ranges `[...]`, numbers and durations,
//! Grafana variables, keywords and the label lists after `by`/`without`/`on`/`ignoring`/
//! `group_left`/`group_right` are skipped; an identifier followed by `(` is a function.

use std::collections::BTreeSet;

/// Aggregation operators: followed by `by (...)`/`without (...)` or by `(`.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesized label list.
const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Other words that are never series names.
const WORDS: [&str; 8] = [
    "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
];

/// The series names a PromQL expression reads (selectors only; label matchers, label
/// lists, strings, durations, function names and Grafana variables are skipped).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '{', '}');
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '$' {
            // A Grafana variable (`$namespace`, `${namespace}`, `$__rate_interval`).
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '{', '}');
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers, and durations such as `5m` after `offset`.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let opens = chars.get(next) == Some(&'(');
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if opens {
                    i = skip_group(&chars, next, '(', ')');
                }
            } else if AGGREGATIONS.contains(&lower.as_str())
                || WORDS.contains(&lower.as_str())
                || opens
            {
                // An operator or a function call: not a series.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Index after the string starting at `start` (its quote), honouring backslash escapes.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    i
}

/// Index after the group opened at `start`, skipping strings and nested groups.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_metric_names_only() {
        let expr = r#"sum by (namespace, name) (rate(kubevirt_vmi_cpu_usage_seconds_total{namespace=~"$namespace", name!="a}b"}[$__rate_interval] offset 5m))
            / on(name) group_left(node) count without (le) (kubevirt_vmi_info) > 0.8 or vector(0)
            and up{job='x'} unless histogram_quantile(0.9, rate(x_bucket[5m])) * cluster:kubevirt_virt_handler_up:sum
            + ${other} * $plain"#;
        let names: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(
            names,
            [
                "cluster:kubevirt_virt_handler_up:sum",
                "kubevirt_vmi_cpu_usage_seconds_total",
                "kubevirt_vmi_info",
                "up",
                "x_bucket"
            ]
        );
    }
}
