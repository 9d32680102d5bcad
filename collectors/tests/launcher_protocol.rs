//! Our `.proto` files against KubeVirt's launcher protocol, field by field.
//!
//! The reference is `testdata/launcher-protocol/` (written from KubeVirt's own definitions,
//! per release), never our own protos or generated code: a wrong type, number, name or label
//! on our side fails here. Our files are parsed with `protox`, as `build.rs` does.

#![allow(clippy::unwrap_used)]

#[path = "support/launcher_fixture.rs"]
mod launcher_fixture;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use launcher_fixture::{Field, Method, NEWEST, Protocol, wire_of};
use protox::prost_reflect::prost_types::{
    FieldDescriptorProto, FileDescriptorSet, field_descriptor_proto::Label,
    field_descriptor_proto::Type,
};

/// Items an older release lacks, and why that is fine (see the fixture README).
const ABSENT_IN_OLDER_RELEASES: [(&str, &str); 2] = [
    ("v1.5", "message kubevirt.cmd.v1.DirtyRateStatsResponse"),
    ("v1.5", "method kubevirt.cmd.v1.Cmd/GetDomainDirtyRateStats"),
];

const RELEASES: [&str; 5] = ["v1.5", "v1.6", "v1.7", "v1.8", "v1.9"];

fn our_descriptors() -> FileDescriptorSet {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    protox::compile(["cmd/info/info.proto", "cmd/v1/cmd.proto"], [&root]).unwrap()
}

fn proto_type(field: &FieldDescriptorProto) -> String {
    match field.r#type() {
        Type::Message | Type::Enum => field.type_name().to_owned(),
        other => other
            .as_str_name()
            .trim_start_matches("TYPE_")
            .to_lowercase(),
    }
}

fn label(field: &FieldDescriptorProto) -> &'static str {
    match field.label() {
        Label::Repeated => "repeated",
        Label::Required => "required",
        Label::Optional if field.proto3_optional() => "proto3-optional",
        Label::Optional => "singular",
    }
}

/// Our protocol, in the fixture's terms.
fn ours() -> Protocol {
    let mut protocol = Protocol::default();
    for file in our_descriptors().file {
        assert_eq!(file.syntax(), "proto3", "{}", file.name());
        let package = file.package().to_owned();
        assert!(
            file.enum_type.is_empty(),
            "{}: KubeVirt's messages we use have no enums",
            file.name()
        );
        for message in &file.message_type {
            assert!(message.nested_type.is_empty() && message.enum_type.is_empty());
            let fields = message
                .field
                .iter()
                .map(|f| {
                    let packed = f.options.as_ref().and_then(|o| o.packed);
                    assert!(packed.is_none(), "{}: no explicit [packed]", f.name());
                    let proto_type = proto_type(f);
                    let label = label(f);
                    Field {
                        name: f.name().to_owned(),
                        number: u32::try_from(f.number()).unwrap(),
                        wire: wire_of(&proto_type, label).to_owned(),
                        proto_type,
                        label: label.to_owned(),
                    }
                })
                .collect();
            protocol
                .messages
                .insert(format!("{package}.{}", message.name()), fields);
        }
        for service in &file.service {
            for method in &service.method {
                assert!(
                    !method.client_streaming() && !method.server_streaming(),
                    "{}: KubeVirt's methods are unary",
                    method.name()
                );
                protocol.methods.insert(Method {
                    service: format!("{package}.{}", service.name()),
                    method: method.name().to_owned(),
                    input: method.input_type().to_owned(),
                    output: method.output_type().to_owned(),
                });
            }
        }
    }
    protocol
}

fn describe(field: &Field) -> String {
    format!(
        "{} = {} ({}, wire {}, {})",
        field.name, field.number, field.proto_type, field.wire, field.label
    )
}

/// Every difference between ours and KubeVirt's `release`, one readable line each.
fn differences(ours: &Protocol, kubevirt: &Protocol, release: &str) -> Vec<String> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = ours
        .messages
        .keys()
        .chain(kubevirt.messages.keys())
        .collect();
    for name in names {
        match (ours.messages.get(name), kubevirt.messages.get(name)) {
            (Some(_), None) => out.push(format!(
                "message {name}: ours only, KubeVirt {release} has none"
            )),
            (None, Some(_)) => out.push(format!(
                "message {name}: KubeVirt {release} has it, ours is missing"
            )),
            (Some(our_fields), Some(their_fields)) => {
                let numbers: BTreeSet<u32> = our_fields
                    .iter()
                    .chain(their_fields)
                    .map(|f| f.number)
                    .collect();
                for number in numbers {
                    let our = our_fields.iter().find(|f| f.number == number);
                    let their = their_fields.iter().find(|f| f.number == number);
                    match (our, their) {
                        (Some(a), Some(b)) if a == b => {}
                        (Some(a), Some(b)) => out.push(format!(
                            "{name}: field {number} is ours {} but KubeVirt {release} {}",
                            describe(a),
                            describe(b)
                        )),
                        (Some(a), None) => out.push(format!(
                            "{name}: field {} is ours only, KubeVirt {release} has no field {number}",
                            describe(a)
                        )),
                        (None, Some(b)) => out.push(format!(
                            "{name}: KubeVirt {release} has field {}, ours is missing",
                            describe(b)
                        )),
                        (None, None) => {}
                    }
                }
            }
            (None, None) => {}
        }
    }
    for method in ours.methods.symmetric_difference(&kubevirt.methods) {
        let side = if ours.methods.contains(method) {
            format!("ours, not KubeVirt {release}")
        } else {
            format!("KubeVirt {release}, not ours")
        };
        out.push(format!(
            "method {}({}) returns ({}): {side}",
            method.path(),
            method.input,
            method.output
        ));
    }
    out
}

#[test]
fn the_fixture_covers_every_release_we_claim_and_is_self_consistent() {
    let releases = launcher_fixture::releases();
    let names: Vec<&str> = releases.keys().map(String::as_str).collect();
    assert_eq!(names, RELEASES);
    assert_eq!(*RELEASES.last().unwrap(), NEWEST);
    for (release, protocol) in &releases {
        for (message, fields) in &protocol.messages {
            let mut numbers = BTreeSet::new();
            for field in fields {
                assert!(
                    numbers.insert(field.number),
                    "{release} {message}: duplicate number"
                );
                assert_eq!(
                    field.wire,
                    wire_of(&field.proto_type, &field.label),
                    "{release} {message}.{}: the wire column contradicts type and label",
                    field.name
                );
                if field.proto_type.starts_with('.') {
                    assert!(
                        protocol.messages.contains_key(&field.proto_type[1..]),
                        "{release} {message}.{}: {} is not in the fixture",
                        field.name,
                        field.proto_type
                    );
                }
            }
        }
        for method in &protocol.methods {
            for message in [&method.input, &method.output] {
                assert!(
                    protocol.messages.contains_key(&message[1..]),
                    "{release} {}: {message} is not in the fixture",
                    method.path()
                );
            }
        }
    }
}

#[test]
fn our_protos_match_kubevirt_field_by_field() {
    let ours = ours();
    let kubevirt = launcher_fixture::release(NEWEST);
    let differences = differences(&ours, &kubevirt, NEWEST);
    assert!(
        differences.is_empty(),
        "collectors/proto differs from KubeVirt's launcher protocol:\n  {}",
        differences.join("\n  ")
    );
}

/// Older releases may lack something we declare (listed, with the reason, in the fixture
/// README), but nothing they have may differ from ours.
#[test]
fn older_releases_differ_only_by_what_they_lack() {
    let ours = ours();
    let mut absent = BTreeSet::new();
    for (release, kubevirt) in launcher_fixture::releases() {
        for difference in differences(&ours, &kubevirt, &release) {
            let lacking = difference
                .strip_suffix(&format!(": ours only, KubeVirt {release} has none"))
                .map(str::to_owned)
                .or_else(|| {
                    difference.split_once(": ours, not KubeVirt").map(|(m, _)| {
                        m.split('(')
                            .next()
                            .unwrap()
                            .replacen("method /", "method ", 1)
                    })
                });
            match lacking {
                Some(item) => {
                    absent.insert((release.clone(), item));
                }
                None => panic!("KubeVirt {release} conflicts with ours: {difference}"),
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ABSENT_IN_OLDER_RELEASES
        .iter()
        .map(|(r, i)| ((*r).to_owned(), (*i).to_owned()))
        .collect();
    assert_eq!(absent, expected);
}

/// The version negotiation field, spelled out: the one that once was `repeated string`.
#[test]
fn cmd_versions_are_packed_uint32() {
    let ours = ours();
    let field = ours
        .messages
        .get("kubevirt.cmd.info.CmdInfoResponse")
        .and_then(|fields| fields.iter().find(|f| f.number == 1))
        .unwrap();
    let kubevirt = launcher_fixture::release(NEWEST);
    assert_eq!(
        field,
        kubevirt.field("kubevirt.cmd.info.CmdInfoResponse", "supportedCmdVersions")
    );
    let by_release: BTreeMap<String, Field> = launcher_fixture::releases()
        .into_iter()
        .map(|(r, p)| {
            let f = p
                .field("kubevirt.cmd.info.CmdInfoResponse", "supportedCmdVersions")
                .clone();
            (r, f)
        })
        .collect();
    assert!(by_release.values().all(|f| f == field), "{by_release:#?}");
}
