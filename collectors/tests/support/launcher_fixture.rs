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

/// A value to put in a field, in KubeVirt's terms; the field's type and wire type come from
/// the fixture.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Bool(bool),
    Str(String),
    List(Vec<Value>),
    Message(Vec<(&'static str, Value)>),
}

/// Encodes `message` of `protocol` with `values` (field name → value), the way KubeVirt's Go
/// encoder does: field numbers and wire types from the fixture, proto3 zero values left
/// out, repeated scalars packed. Panics when a value does not fit the fixture's type: that
/// is a mistake in the test script, not in the code under test.
pub fn encode(protocol: &Protocol, message: &str, values: &[(&str, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in values {
        let field = protocol.field(message, name);
        let wire = wire_of(&field.proto_type, &field.label);
        assert_eq!(field.wire, wire, "{message}.{name}: fixture wire column");
        if field.label == "repeated" {
            let Value::List(items) = value else {
                panic!("{message}.{name} is repeated; the script gave {value:?}")
            };
            if let Some(scalar) = wire.strip_prefix("packed-") {
                if items.is_empty() {
                    continue;
                }
                let mut packed = Vec::new();
                for item in items {
                    scalar_payload(protocol, message, field, scalar, item, &mut packed);
                }
                key(&mut out, field.number, 2);
                varint(&mut out, packed.len() as u64);
                out.extend(packed);
            } else {
                for item in items {
                    one(protocol, message, field, wire, item, &mut out);
                }
            }
        } else if !is_zero(value) || field.label == "proto3-optional" {
            one(protocol, message, field, wire, value, &mut out);
        }
    }
    out
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Uint(v) => *v == 0,
        Value::Int(v) => *v == 0,
        Value::Bool(v) => !v,
        Value::Str(v) => v.is_empty(),
        Value::List(v) => v.is_empty(),
        Value::Message(_) => false,
    }
}

fn wire_code(wire: &str) -> u64 {
    match wire {
        "varint" => 0,
        "i64" => 1,
        "len" => 2,
        "i32" => 5,
        other => panic!("no wire type {other}"),
    }
}

/// One record: key, then the payload.
fn one(
    protocol: &Protocol,
    message: &str,
    field: &Field,
    wire: &str,
    value: &Value,
    out: &mut Vec<u8>,
) {
    key(out, field.number, wire_code(wire));
    scalar_payload(protocol, message, field, wire, value, out);
}

/// The payload of one value of `field` without its key.
fn scalar_payload(
    protocol: &Protocol,
    message: &str,
    field: &Field,
    wire: &str,
    value: &Value,
    out: &mut Vec<u8>,
) {
    let mismatch = || -> ! {
        panic!(
            "{message}.{} is {} in the fixture; the script gave {value:?}",
            field.name, field.proto_type
        )
    };
    match (field.proto_type.as_str(), value) {
        ("bool", Value::Bool(v)) => varint(out, u64::from(*v)),
        ("uint32" | "uint64", Value::Uint(v)) => varint(out, *v),
        // Negative int32/int64 go out sign-extended to ten bytes, as in Go.
        ("int32" | "int64", Value::Int(v)) => varint(out, *v as u64),
        ("fixed32", Value::Uint(v)) => out.extend(u32::try_from(*v).unwrap().to_le_bytes()),
        ("fixed64", Value::Uint(v)) => out.extend(v.to_le_bytes()),
        ("string", Value::Str(v)) => {
            varint(out, v.len() as u64);
            out.extend(v.as_bytes());
        }
        (nested, Value::Message(fields)) if nested.starts_with('.') => {
            let body = encode(protocol, &nested[1..], fields);
            varint(out, body.len() as u64);
            out.extend(body);
        }
        _ => mismatch(),
    }
    let expected = match field.proto_type.as_str() {
        "fixed32" => "i32",
        "fixed64" => "i64",
        "string" => "len",
        t if t.starts_with('.') => "len",
        _ => "varint",
    };
    assert_eq!(wire, expected, "{message}.{}", field.name);
}

fn key(out: &mut Vec<u8>, number: u32, wire: u64) {
    varint(out, (u64::from(number) << 3) | wire);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Protocol {
    /// The same protocol with one field of another type and label: a launcher that does
    /// not speak KubeVirt's protocol as the fixture has it.
    pub fn retyped(mut self, message: &str, field: &str, proto_type: &str, label: &str) -> Self {
        let fields = self.messages.get_mut(message).unwrap();
        let field = fields.iter_mut().find(|f| f.name == field).unwrap();
        field.proto_type = proto_type.to_owned();
        field.label = label.to_owned();
        field.wire = wire_of(proto_type, label).to_owned();
        self
    }
}
