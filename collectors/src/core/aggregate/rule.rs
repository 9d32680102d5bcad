//! The aggregation rule language: the PromQL aggregation expressions operators already write,
//! plus an output name and whether the input stays exported.
//!
//! ```text
//! rule      = op [grouping] "(" selector ")" [grouping] ["as" NAME] ["keep" | "drop"]
//! op        = sum | avg | min | max | count                (case-insensitive, as in PromQL)
//! grouping  = ("by" | "without") "(" [label {"," label} [","]] ")"
//! selector  = METRIC_NAME | "{" "__name__" ("=" | "=~") STRING "}"
//! ```
//!
//! A `#` outside a string ends the rule (comments in `--aggregate-file`). Regexes are
//! anchored as PromQL anchors them (`^(?:re)$`); strings are quoted with `"`, `'` or
//! backticks, with Go's escapes in the first two, so a rule can be pasted from a PromQL query.

use std::fmt;

use regex::Regex;

/// An aggregation operator, computed exactly as PromQL 2.x does (see `engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Sum,
    Avg,
    Min,
    Max,
    Count,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::Count => "count",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "sum" => Self::Sum,
            "avg" => Self::Avg,
            "min" => Self::Min,
            "max" => Self::Max,
            "count" => Self::Count,
            _ => return None,
        })
    }
}

/// Which labels the output keeps. Label lists are sorted and without duplicates: the output's
/// labels are sorted by name, as Prometheus keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouping {
    /// Only these labels (`sum(x)` is `By(vec![])`).
    By(Vec<String>),
    /// Every label but these (and the metric name).
    Without(Vec<String>),
}

impl fmt::Display for Grouping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, labels) = match self {
            Self::By(labels) => ("by", labels),
            Self::Without(labels) => ("without", labels),
        };
        write!(f, "{word} ({})", labels.join(", "))
    }
}

/// Which series a rule reads, by their metric name as Prometheus stores it (the family name
/// plus `_bucket`/`_sum`/`_count` for histograms and summaries).
#[derive(Debug, Clone)]
pub enum Selector {
    Name(String),
    /// The pattern as written, and its anchored compilation.
    Regex(String, Regex),
}

impl Selector {
    pub fn matches(&self, metric: &str) -> bool {
        match self {
            Self::Name(name) => name == metric,
            Self::Regex(_, regex) => regex.is_match(metric),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Regex(pattern, _) => write!(f, "{{__name__=~{pattern:?}}}"),
        }
    }
}

/// One parsed `--aggregate` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule as the user wrote it, for messages.
    pub text: String,
    pub op: Op,
    pub grouping: Grouping,
    pub selector: Selector,
    /// `as NAME`; `None` means the recording-rule convention (see [`Rule::output_name`]).
    pub name: Option<String>,
    /// `keep` (the default) or `drop`: whether the input families are still exported.
    pub keep_input: bool,
}

impl Rule {
    /// The PromQL expression this rule computes for one input metric.
    pub fn expression(&self, metric: &str) -> String {
        format!("{} {} ({metric})", self.op.as_str(), self.grouping)
    }

    /// The output name for one input metric: `as NAME`, or the recording-rule convention
    /// `level:metric:operation`, where level is the output's labels joined by `_`: the `by`
    /// labels, or for `without` the labels left (`output_labels`, from the data). An empty
    /// level gives `:metric:operation`, as kube-prometheus names its whole-scope rules.
    pub fn output_name<'a>(
        &self,
        metric: &str,
        output_labels: impl FnOnce() -> Vec<&'a str>,
    ) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let level = match &self.grouping {
            Grouping::By(labels) => labels.join("_"),
            Grouping::Without(_) => output_labels().join("_"),
        };
        format!("{level}:{metric}:{}", self.op.as_str())
    }
}

/// Where and why a rule did not parse. `column` counts characters from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

pub fn parse(text: &str) -> Result<Rule, ParseError> {
    Parser::new(text).rule()
}

/// Prometheus metric names: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prometheus label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A regex anchored at both ends, as PromQL's `=~` and our `--drop-family` match.
pub fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Open,
    Close,
    OpenBrace,
    CloseBrace,
    Comma,
    Equal,
    EqualTilde,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Self::Word(w) => format!("`{w}`"),
            Self::Str(s) => format!("string {s:?}"),
            Self::Open => "`(`".into(),
            Self::Close => "`)`".into(),
            Self::OpenBrace => "`{`".into(),
            Self::CloseBrace => "`}`".into(),
            Self::Comma => "`,`".into(),
            Self::Equal => "`=`".into(),
            Self::EqualTilde => "`=~`".into(),
            Self::End => "the end of the rule".into(),
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    chars: Vec<char>,
    pos: usize,
    /// Column (1-based) of the token last returned by `next`.
    column: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            chars: text.chars().collect(),
            pos: 0,
            column: 1,
        }
    }

    fn error<T>(&self, column: usize, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column,
            message: message.into(),
        })
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
        self.column = self.pos + 1;
        let Some(&c) = self.chars.get(self.pos) else {
            return Ok(Token::End);
        };
        self.pos += 1;
        Ok(match c {
            '#' => {
                self.pos = self.chars.len();
                Token::End
            }
            '(' => Token::Open,
            ')' => Token::Close,
            '{' => Token::OpenBrace,
            '}' => Token::CloseBrace,
            ',' => Token::Comma,
            '=' if self.chars.get(self.pos) == Some(&'~') => {
                self.pos += 1;
                Token::EqualTilde
            }
            '=' => Token::Equal,
            '"' | '\'' | '`' => Token::Str(self.string(c)?),
            c if c.is_ascii_alphanumeric() || c == '_' || c == ':' => {
                let start = self.pos - 1;
                while self
                    .chars
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                {
                    self.pos += 1;
                }
                Token::Word(self.chars[start..self.pos].iter().collect())
            }
            other => return self.error(self.column, format!("unexpected character `{other}`")),
        })
    }

    /// The rest of a string opened by `quote`; Go's escapes except in backticks.
    fn string(&mut self, quote: char) -> Result<String, ParseError> {
        let start = self.column;
        let mut out = String::new();
        loop {
            let Some(&c) = self.chars.get(self.pos) else {
                return self.error(start, "unterminated string");
            };
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' if quote != '`' => {
                    let Some(&escaped) = self.chars.get(self.pos) else {
                        return self.error(start, "unterminated string");
                    };
                    self.pos += 1;
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '\\' | '"' | '\'' => escaped,
                        other => {
                            return self.error(
                                self.pos - 1,
                                format!("unknown escape `\\{other}` (write `\\\\{other}` for a regex escape)"),
                            );
                        }
                    });
                }
                c => out.push(c),
            }
        }
    }

    fn expect(&mut self, wanted: Token) -> Result<(), ParseError> {
        let got = self.next()?;
        if got == wanted {
            Ok(())
        } else {
            self.error(
                self.column,
                format!("expected {}, found {}", wanted.describe(), got.describe()),
            )
        }
    }

    fn rule(&mut self) -> Result<Rule, ParseError> {
        let op = match self.next()? {
            Token::Word(word) => match Op::parse(&word) {
                Some(op) => op,
                None => {
                    return self.error(
                        self.column,
                        format!("unknown operation `{word}`: sum, avg, min, max or count"),
                    );
                }
            },
            Token::End => return self.error(self.column, "empty rule"),
            other => {
                return self.error(
                    self.column,
                    format!(
                        "expected an operation (sum, avg, min, max, count), found {}",
                        other.describe()
                    ),
                );
            }
        };
        let mut token = self.next()?;
        let mut grouping = None;
        if let Token::Word(word) = &token {
            grouping = Some(self.grouping(word)?);
            token = self.next()?;
        }
        if token != Token::Open {
            return self.error(
                self.column,
                format!(
                    "expected `(` and a metric selector, found {}",
                    token.describe()
                ),
            );
        }
        let selector = self.selector()?;
        self.expect(Token::Close)?;
        token = self.next()?;
        if let Token::Word(word) = &token
            && matches!(word.to_ascii_lowercase().as_str(), "by" | "without")
        {
            if grouping.is_some() {
                return self.error(self.column, "a second `by`/`without` clause");
            }
            grouping = Some(self.grouping(word)?);
            token = self.next()?;
        }
        let mut name = None;
        if matches!(&token, Token::Word(w) if w.eq_ignore_ascii_case("as")) {
            name = Some(self.output_name(&selector)?);
            token = self.next()?;
        }
        let mut keep_input = true;
        if let Token::Word(word) = &token {
            match word.to_ascii_lowercase().as_str() {
                "keep" => {}
                "drop" => keep_input = false,
                _ => {
                    return self.error(
                        self.column,
                        format!("expected `as NAME`, `keep` or `drop`, found `{word}`"),
                    );
                }
            }
            token = self.next()?;
        }
        if token != Token::End {
            return self.error(
                self.column,
                format!("unexpected {} after the rule", token.describe()),
            );
        }
        Ok(Rule {
            text: self.text.trim().to_owned(),
            op,
            grouping: grouping.unwrap_or(Grouping::By(Vec::new())),
            selector,
            name,
            keep_input,
        })
    }

    fn grouping(&mut self, word: &str) -> Result<Grouping, ParseError> {
        let by = match word.to_ascii_lowercase().as_str() {
            "by" => true,
            "without" => false,
            _ => {
                return self.error(
                    self.column,
                    format!("expected `by`, `without` or `(`, found `{word}`"),
                );
            }
        };
        self.expect(Token::Open)?;
        let mut labels = Vec::new();
        loop {
            match self.next()? {
                Token::Close => break,
                Token::Word(label) => {
                    if !is_label_name(&label) {
                        return self.error(self.column, format!("`{label}` is not a label name"));
                    }
                    if label == "__name__" {
                        return self.error(
                            self.column,
                            "`__name__` cannot be grouped: the output has its own name",
                        );
                    }
                    labels.push(label);
                    match self.next()? {
                        Token::Comma => {}
                        Token::Close => break,
                        other => {
                            return self.error(
                                self.column,
                                format!("expected `,` or `)`, found {}", other.describe()),
                            );
                        }
                    }
                }
                other => {
                    return self.error(
                        self.column,
                        format!("expected a label name or `)`, found {}", other.describe()),
                    );
                }
            }
        }
        labels.sort();
        labels.dedup();
        Ok(if by {
            Grouping::By(labels)
        } else {
            Grouping::Without(labels)
        })
    }

    fn selector(&mut self) -> Result<Selector, ParseError> {
        match self.next()? {
            Token::Word(name) if is_metric_name(&name) => {
                let at = self.pos;
                if self.next()? == Token::OpenBrace {
                    return self.error(
                        self.column,
                        "label matchers are not supported: select by metric name only",
                    );
                }
                self.pos = at;
                Ok(Selector::Name(name))
            }
            Token::OpenBrace => self.name_matcher(),
            other => self.error(
                self.column,
                format!(
                    "expected a metric name or `{{__name__=~\"...\"}}`, found {}",
                    other.describe()
                ),
            ),
        }
    }

    /// `{__name__="name"}` or `{__name__=~"regex"}`, after the `{`.
    fn name_matcher(&mut self) -> Result<Selector, ParseError> {
        match self.next()? {
            Token::Word(label) if label == "__name__" => {}
            other => {
                return self.error(
                    self.column,
                    format!(
                        "only a `__name__` matcher is supported, found {}",
                        other.describe()
                    ),
                );
            }
        }
        let regex = match self.next()? {
            Token::Equal => false,
            Token::EqualTilde => true,
            other => {
                return self.error(
                    self.column,
                    format!("expected `=` or `=~`, found {}", other.describe()),
                );
            }
        };
        let value = match self.next()? {
            Token::Str(value) => value,
            other => {
                return self.error(
                    self.column,
                    format!("expected a quoted string, found {}", other.describe()),
                );
            }
        };
        let value_column = self.column;
        match self.next()? {
            Token::CloseBrace => {}
            Token::Comma => {
                return self.error(
                    self.column,
                    "label matchers are not supported: select by metric name only",
                );
            }
            other => {
                return self.error(
                    self.column,
                    format!("expected `}}`, found {}", other.describe()),
                );
            }
        }
        if !regex {
            if !is_metric_name(&value) {
                return self.error(value_column, format!("`{value}` is not a metric name"));
            }
            return Ok(Selector::Name(value));
        }
        match anchored(&value) {
            Ok(compiled) => Ok(Selector::Regex(value, compiled)),
            Err(e) => self.error(value_column, format!("invalid regex: {e}")),
        }
    }

    fn output_name(&mut self, selector: &Selector) -> Result<String, ParseError> {
        let name = match self.next()? {
            Token::Word(name) => name,
            other => {
                return self.error(
                    self.column,
                    format!(
                        "expected a metric name after `as`, found {}",
                        other.describe()
                    ),
                );
            }
        };
        if !is_metric_name(&name) {
            return self.error(self.column, format!("`{name}` is not a metric name"));
        }
        if matches!(selector, Selector::Regex(..)) {
            return self.error(
                self.column,
                "`as NAME` needs an exact metric name: a regex selector may match several \
                 metrics, each aggregated and named on its own",
            );
        }
        Ok(name)
    }
}
