//! What the verifier serves: the filter's gRPC API and Envoy's services on `verifier.grpc`
//! ([`grpc`], [`ext_authz`], [`rds`]), and on `verifier.http` the operations endpoints
//! ([`http`]) and the admin API ([`admin`]).

pub mod admin;
pub mod ext_authz;
pub mod grpc;
pub mod http;
pub mod rds;
