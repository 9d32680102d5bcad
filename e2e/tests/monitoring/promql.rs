//! The metric names a PromQL expression reads, for checks that every query and rule we ship
//! asks for a series somebody serves. A small scanner, not a parser: it skips strings, label
//! matchers `{...}`, ranges `[...]`, numbers, Grafana variables (`$x`, `${x}`), keywords and
//! the label lists after `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`; an
//! identifier followed by `(` is a function. What is left are metric names.

use std::collections::BTreeSet;

const AGGREGATIONS: &[&str] = &[
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
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OTHER_KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// Every metric name `expr` selects, sorted.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_until(&chars, i, '}');
        } else if c == '[' {
            i = skip_until(&chars, i, ']');
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_until(&chars, i, '}');
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = next_non_space(&chars, i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if let Some(open) = next.filter(|&n| chars[n] == '(') {
                    i = skip_until(&chars, open, ')');
                }
            } else if lower == "offset" {
                // The duration after it is skipped as a number.
            } else if AGGREGATIONS.contains(&lower.as_str())
                || OTHER_KEYWORDS.contains(&lower.as_str())
                || next.is_some_and(|n| chars[n] == '(')
            {
                // An operator or a function.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn next_non_space(chars: &[char], from: usize) -> Option<usize> {
    (from..chars.len()).find(|&j| !chars[j].is_whitespace())
}

/// Index after the string starting at `start` (backslash escapes honoured).
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

/// Index after the first `close` from `start`, skipping strings on the way.
fn skip_until(chars: &[char], start: usize, close: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

#[test]
fn scanner_finds_metric_names_only() {
    let expr = r#"sum by (namespace, name) (rate(kubevirt_vmi_cpu_usage_seconds_total{namespace=~"$namespace", name!="a}b"}[$__rate_interval] offset 5m))
        / on(name) group_left(node) count without (le) (kubevirt_vmi_info) > 0.8 or vector(0)
        and up{job='x'} unless histogram_quantile(0.9, rate(x_bucket[5m])) * cluster:kubevirt_virt_handler_up:sum"#;
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
