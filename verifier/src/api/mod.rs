//! What the verifier serves: the filter's gRPC API and Envoy's services on `verifier.grpc`
//! ([`grpc`], [`ext_authz`], [`rds`]; TLS with `verifier.tls`), on `verifier.http` the
//! operations endpoints ([`http`], plaintext), and on `verifier.admin` the admin API ([`admin`];
//! TLS with `verifier.tls`). Both HTTP listeners run on [`listener`].

pub mod admin;
pub mod ext_authz;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod rds;
