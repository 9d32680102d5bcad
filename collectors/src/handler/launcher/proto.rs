//! Generated client code for KubeVirt's virt-launcher protocol (see `collectors/proto/` and
//! `build.rs`).

/// `kubevirt.cmd.info`: version negotiation (`CmdInfo/Info`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod info {
    tonic::include_proto!("kubevirt.cmd.info");
}

/// `kubevirt.cmd.v1`: the command service, version 1.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod cmd_v1 {
    tonic::include_proto!("kubevirt.cmd.v1");
}
