//! Generates the tonic server and client for `tollway.v1.Payments` from the hand-written prost
//! messages in `tollway_protocol::rpc` (there is no .proto file: the Rust structs are the contract).

use tonic_prost_build::manual::{Builder, Method, Service};

fn method(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("tollway_protocol::rpc::{input}"))
        .output_type(format!("tollway_protocol::rpc::{output}"))
        .codec_path("tonic_prost::ProstCodec")
        .build()
}

fn main() {
    let payments = Service::builder()
        .name("Payments")
        .package("tollway.v1")
        .method(method(
            "verify",
            "Verify",
            "VerifyRequest",
            "VerifyResponse",
        ))
        .method(method(
            "settle",
            "Settle",
            "SettleRequest",
            "SettleResponse",
        ))
        .method(method(
            "release",
            "Release",
            "ReleaseRequest",
            "ReleaseResponse",
        ))
        .build();
    Builder::new().compile(&[payments]);
    println!("cargo:rerun-if-changed=build.rs");
}
