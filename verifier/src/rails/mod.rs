//! The payment rails the verifier talks to: x402 facilitators ([`facilitator`], with
//! [`cdp_jwt`] for the hosted one), EVM chains for reconciliation ([`chain`]), and Lightning
//! ([`l402`] on top of the node backends in [`lightning`]).

pub mod cdp_jwt;
pub mod chain;
pub mod facilitator;
pub mod invoices;
pub mod l402;
pub mod lightning;
