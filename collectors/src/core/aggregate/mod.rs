//! Custom aggregation (`--aggregate`, `--aggregate-file`, `--drop-family`, `--drop-label`):
//! applied to each pass's families before `/metrics` and every sink see them, so a node with
//! hundreds of VMIs can export per-namespace series instead of per-VMI per-device ones.
//!
//! The rules are PromQL aggregations ([`rule`]) and compute what PromQL computes from the
//! un-aggregated series at the same instant ([`engine`]). One pass, in order:
//! 1. `--drop-label` removes labels from every input family ([`drop`]);
//! 2. every rule reads those families (never another rule's output) and adds one gauge
//!    family per matched metric name;
//! 3. input families read by a `drop` rule, and those `--drop-family` matches, are removed
//!    (`--drop-family` leaves the rules' outputs alone: they are what the user asked for);
//! 4. an output whose name is already taken (by an input family or an earlier output) is
//!    left out with a warning, since two families of one name break every scrape.

pub mod drop;
pub mod engine;
pub mod rule;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kubevirt_metrics_flags::ExportArgs;
use regex::Regex;

use crate::core::metric::Family;

pub use rule::{Grouping, Op, Rule, Selector};

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    /// A rule that does not parse; `origin` is `--aggregate` or `FILE:LINE`.
    #[error("{origin}: rule `{rule}`: column {column}: {message}")]
    Rule {
        origin: String,
        rule: String,
        column: usize,
        message: String,
    },
    #[error("--aggregate-file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The parsed rules; empty means the families pass through untouched.
#[derive(Debug, Clone, Default)]
pub struct Aggregation {
    rules: Vec<Rule>,
    /// `--drop-family`, all patterns in one anchored alternation.
    drop_families: Option<Regex>,
    drop_labels: Vec<String>,
    /// Output names already warned about, so a colliding rule warns once, not every pass.
    warned: Arc<Mutex<HashSet<String>>>,
}

impl Aggregation {
    pub fn from_args(args: &ExportArgs) -> Result<Self, AggregateError> {
        let mut rules = Vec::new();
        for text in &args.aggregate {
            if text.trim().is_empty() {
                continue; // `COLLECTOR_AGGREGATE="a;b;"` splits into a trailing empty rule
            }
            rules.push(parse_rule("--aggregate", text)?);
        }
        if let Some(path) = &args.aggregate_file {
            rules.extend(read_rules(path)?);
        }
        check_static_names(&rules)?;
        Ok(Self {
            rules,
            drop_families: drop_family_regex(&args.drop_families)?,
            drop_labels: drop_label_names(&args.drop_labels)?,
            warned: Arc::default(),
        })
    }

    /// Rules from text, one per line (`#` comments), as `--aggregate-file` holds them.
    pub fn from_rules_text(origin: &str, text: &str) -> Result<Self, AggregateError> {
        let rules = rules_from_text(origin, text)?;
        check_static_names(&rules)?;
        Ok(Self {
            rules,
            ..Self::default()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.drop_families.is_none() && self.drop_labels.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The families after the rules, sorted by name (the order every encoder writes).
    pub fn apply(&self, families: Vec<Family>) -> Vec<Family> {
        if self.is_empty() {
            return families;
        }
        let families = if self.drop_labels.is_empty() {
            families
        } else {
            drop::drop_labels(families, &self.drop_labels)
        };
        let names = engine::metric_names(&families);
        let mut outputs = Vec::new();
        let mut dropped = vec![false; families.len()];
        for rule in &self.rules {
            let mut read = Vec::new();
            outputs.extend(engine::evaluate(rule, &families, &names, &mut read));
            if !rule.keep_input {
                for index in read {
                    dropped[index] = true;
                }
            }
        }
        let mut result: Vec<Family> = families
            .into_iter()
            .zip(dropped)
            .filter(|(family, dropped)| {
                !dropped
                    && !self
                        .drop_families
                        .as_ref()
                        .is_some_and(|re| re.is_match(&family.name))
            })
            .map(|(family, _)| family)
            .collect();
        let mut taken: HashSet<String> = result.iter().map(|f| f.name.to_string()).collect();
        for output in outputs {
            if taken.insert(output.name.to_string()) {
                result.push(output);
            } else {
                self.warn_collision(&output.name);
            }
        }
        result.sort_by(|a, b| a.name.cmp(&b.name));
        result
    }

    fn warn_collision(&self, name: &str) {
        let first = self
            .warned
            .lock()
            .map(|mut warned| warned.insert(name.to_owned()))
            .unwrap_or(false);
        if first {
            tracing::warn!(
                family = name,
                "an aggregation output has the name of another family and is left out; give the rule `as NAME`"
            );
        }
    }
}

fn parse_rule(origin: &str, text: &str) -> Result<Rule, AggregateError> {
    rule::parse(text).map_err(|e| AggregateError::Rule {
        origin: origin.to_owned(),
        rule: text.trim().to_owned(),
        column: e.column,
        message: e.message,
    })
}

fn read_rules(path: &Path) -> Result<Vec<Rule>, AggregateError> {
    let text = std::fs::read_to_string(path).map_err(|source| AggregateError::File {
        path: path.to_path_buf(),
        source,
    })?;
    rules_from_text(&path.display().to_string(), &text)
}

fn rules_from_text(origin: &str, text: &str) -> Result<Vec<Rule>, AggregateError> {
    let mut rules = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        rules.push(parse_rule(&format!("{origin}:{}", number + 1), line)?);
    }
    Ok(rules)
}

/// Two rules that would always write the same family are a mistake we can name at start-up.
fn check_static_names(rules: &[Rule]) -> Result<(), AggregateError> {
    let mut seen: HashSet<String> = HashSet::new();
    for rule in rules {
        let name = match (&rule.name, &rule.selector, &rule.grouping) {
            (Some(name), _, _) => name.clone(),
            (None, Selector::Name(metric), Grouping::By(_)) => rule.output_name(metric, Vec::new),
            _ => continue,
        };
        if !seen.insert(name.clone()) {
            return Err(AggregateError::Rule {
                origin: "aggregation rules".to_owned(),
                rule: rule.text.clone(),
                column: 1,
                message: format!("another rule already writes `{name}`; give one `as NAME`"),
            });
        }
    }
    Ok(())
}

fn drop_family_regex(patterns: &[String]) -> Result<Option<Regex>, AggregateError> {
    let patterns: Vec<&str> = patterns
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect();
    if patterns.is_empty() {
        return Ok(None);
    }
    for pattern in &patterns {
        rule::anchored(pattern).map_err(|e| AggregateError::Invalid {
            flag: "--drop-family",
            message: format!("`{pattern}` is not a valid regex: {e}"),
        })?;
    }
    let alternation = patterns
        .iter()
        .map(|p| format!("(?:{p})"))
        .collect::<Vec<_>>()
        .join("|");
    rule::anchored(&alternation)
        .map(Some)
        .map_err(|e| AggregateError::Invalid {
            flag: "--drop-family",
            message: e.to_string(),
        })
}

fn drop_label_names(labels: &[String]) -> Result<Vec<String>, AggregateError> {
    let mut names = Vec::new();
    for label in labels.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let problem = if !rule::is_label_name(label) {
            Some("is not a label name")
        } else if label == "__name__" {
            Some("cannot be dropped: it is the metric name")
        } else if matches!(label, "le" | "quantile") {
            Some("cannot be dropped: histograms and summaries need it")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(AggregateError::Invalid {
                flag: "--drop-label",
                message: format!("`{label}` {problem}"),
            });
        }
        names.push(label.to_owned());
    }
    names.sort();
    names.dedup();
    Ok(names)
}
