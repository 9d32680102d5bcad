//! KubeVirt's launcher protocol as written down in `testdata/launcher-protocol/` from
//! KubeVirt's own definitions (see the README there): the reference both the conformance
//! test and the fake launcher's encoder work from, so neither depends on `collectors/proto`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The newest release in the fixture; what the fake launcher speaks unless told otherwise.
pub const NEWEST: &str = "v1.9";

/// One field of a message, as KubeVirt declares it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Field {
    pub name: String,
    pub number: u32,
    /// `uint32`, `string`, `bool`, `int64`, ... or a message's full name (`.pkg.Message`).
    pub proto_type: String,
    /// `varint`, `len` or `packed-varint`.
    pub wire: String,
    /// `singular`, `proto3-optional` or `repeated`.
    pub label: String,
}

/// One unary gRPC method.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Method {
    pub service: String,
    pub method: String,
    pub input: String,
    pub output: String,
}

impl Method {
    /// The HTTP/2 path gRPC sends it on.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// The protocol of one release: messages (full name without the leading dot → fields) and
/// methods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protocol {
    pub messages: BTreeMap<String, Vec<Field>>,
    pub methods: BTreeSet<Method>,
}

impl Protocol {
    pub fn message(&self, name: &str) -> &[Field] {
        self.messages
            .get(name)
            .unwrap_or_else(|| panic!("KubeVirt has no message {name} in this release"))
    }

    pub fn field(&self, message: &str, field: &str) -> &Field {
        self.message(message)
            .iter()
            .find(|f| f.name == field)
            .unwrap_or_else(|| panic!("KubeVirt's {message} has no field {field}"))
    }
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/launcher-protocol")
        .join(name)
}

/// Rows of a TSV file after its header line, comments skipped, keyed by header names.
fn rows(name: &str) -> Vec<BTreeMap<String, String>> {
    let path = fixture_path(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty());
    let header: Vec<&str> = lines.next().expect("header line").split('\t').collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert_eq!(cells.len(), header.len(), "{name}: row {line:?}");
            header
                .iter()
                .zip(cells)
                .map(|(h, c)| ((*h).to_owned(), c.to_owned()))
                .collect()
        })
        .collect()
}

/// Every release in the fixture, each with its protocol.
pub fn releases() -> BTreeMap<String, Protocol> {
    let mut out: BTreeMap<String, Protocol> = BTreeMap::new();
    for row in rows("messages.tsv") {
        let protocol = out.entry(row["release"].clone()).or_default();
        let fields = protocol.messages.entry(row["message"].clone()).or_default();
        if row["field"] != "-" {
            fields.push(Field {
                name: row["field"].clone(),
                number: row["number"].parse().expect("field number"),
                proto_type: row["type"].clone(),
                wire: row["wire"].clone(),
                label: row["label"].clone(),
            });
        }
    }
    for row in rows("services.tsv") {
        out.entry(row["release"].clone())
            .or_default()
            .methods
            .insert(Method {
                service: row["service"].clone(),
                method: row["method"].clone(),
                input: row["input"].clone(),
                output: row["output"].clone(),
            });
    }
    out
}

/// The protocol of one release.
pub fn release(name: &str) -> Protocol {
    releases()
        .remove(name)
        .unwrap_or_else(|| panic!("no release {name} in testdata/launcher-protocol"))
}

/// The wire type a field of `proto_type` and `label` has when KubeVirt's Go encoder writes
/// it (proto3 packs repeated scalars).
pub fn wire_of(proto_type: &str, label: &str) -> &'static str {
    let scalar = match proto_type {
        "bool" | "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" | "enum" => "varint",
        "fixed64" | "sfixed64" | "double" => "i64",
        "fixed32" | "sfixed32" | "float" => "i32",
        _ => "len",
    };
    match (label, scalar) {
        ("repeated", "len") => "len",
        ("repeated", other) => match other {
            "varint" => "packed-varint",
            "i64" => "packed-i64",
            _ => "packed-i32",
        },
        (_, scalar) => scalar,
    }
}
