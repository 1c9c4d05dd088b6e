//! Generates the tonic server and client for `tollway.v1.Payments` from the hand-written prost
//! messages in `tollway_protocol::rpc` (there is no .proto file: the Rust structs are the contract),
//! and a server for LND's `lnrpc.Lightning` (two methods, the messages of
//! `src/rails/lightning/lnrpc.rs`) that only the tests' LND double uses.

use tonic_prost_build::manual::{Builder, Method, Service};

fn typed_method(name: &str, route: &str, input: String, output: String) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path("tonic_prost::ProstCodec")
        .build()
}

fn method(name: &str, route: &str, input: &str, output: &str) -> Method {
    typed_method(
        name,
        route,
        format!("tollway_protocol::rpc::{input}"),
        format!("tollway_protocol::rpc::{output}"),
    )
}

fn lnrpc_method(name: &str, route: &str, input: &str, output: &str) -> Method {
    typed_method(
        name,
        route,
        format!("crate::rails::lightning::lnrpc::{input}"),
        format!("crate::rails::lightning::lnrpc::{output}"),
    )
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
        .method(method(
            "challenge",
            "Challenge",
            "ChallengeRequest",
            "ChallengeResponse",
        ))
        .method(method("claim", "Claim", "ClaimRequest", "ClaimResponse"))
        .method(method(
            "routes",
            "Routes",
            "RoutesRequest",
            "RoutesResponse",
        ))
        .method(method(
            "purchased",
            "Purchased",
            "PurchasedRequest",
            "PurchasedResponse",
        ))
        .build();
    Builder::new().compile(&[payments]);

    let lightning = Service::builder()
        .name("Lightning")
        .package("lnrpc")
        .method(lnrpc_method(
            "add_invoice",
            "AddInvoice",
            "Invoice",
            "AddInvoiceResponse",
        ))
        .method(lnrpc_method(
            "lookup_invoice",
            "LookupInvoice",
            "PaymentHash",
            "Invoice",
        ))
        .build();
    Builder::new().build_client(false).compile(&[lightning]);
    println!("cargo:rerun-if-changed=build.rs");
}
