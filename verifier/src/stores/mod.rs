//! State the verifier keeps: the SQLite [`ledger`], the [`replay`] guard (in memory or Redis)
//! and the live route table ([`routes_store`]).

pub mod ledger;
pub mod replay;
pub mod routes_store;
