//! Generates the gRPC client for KubeVirt's virt-launcher command protocol (`proto/`).
//! `protox` parses the `.proto` files in-process, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    launcher_protocol()
}

fn launcher_protocol() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: [&str; 2] = ["proto/cmd/info/info.proto", "proto/cmd/v1/cmd.proto"];
    println!("cargo:rerun-if-changed=proto");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    // Client only: the tests' fake virt-launcher encodes its replies from KubeVirt's own
    // protocol facts (testdata/launcher-protocol/), never from these files.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
