//! Test doubles of the three node APIs, speaking the real protocols on 127.0.0.1:
//!
//! - [`LndDouble`]: a tonic server for `lnrpc.Lightning/AddInvoice` and `LookupInvoice` (the
//!   real `lnrpc` messages, the server generated in build.rs) behind TLS with a self-signed,
//!   CA-flagged certificate like LND's own, checking the `macaroon` metadata.
//! - [`ClnDouble`]: clnrest's `POST /v1/invoice` and `POST /v1/listinvoices` with the `Rune`
//!   header, `201` answers and `{code, message}` errors, over http or https.
//! - [`LnbitsDouble`]: `POST /api/v1/payments` and `GET /api/v1/payments/{hash}` with
//!   `X-Api-Key`.
//!
//! Every double issues real signed BOLT11 invoices (the dev node's signer) and can be told to
//! fail (node error) or to answer late (timeout); the test plays the payer with `pay`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use bitcoin::secp256k1::SecretKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tollway_protocol::lightning::LightningNetwork;

use super::bolt11::{self, InvoiceFields};
use super::lnrpc;
use super::tls::load_certs;
use crate::clock::unix_now;

/// The generated `lnrpc.Lightning` server (two methods).
#[allow(clippy::all, clippy::pedantic)]
pub mod lnrpc_server {
    include!(concat!(env!("OUT_DIR"), "/lnrpc.Lightning.rs"));
}

/// How a double answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// A node-side error (gRPC INTERNAL, HTTP 500 / 520).
    Fail,
    /// Answers after this long.
    Slow(Duration),
}

struct Entry {
    bolt11: String,
    preimage: [u8; 32],
    amount_msat: u64,
    description: String,
    label: String,
    expires_at: u64,
    paid: bool,
    /// LND-style cancellation.
    canceled: bool,
}

/// The invoices a double holds, and how it behaves.
pub struct Book {
    key: SecretKey,
    network: LightningNetwork,
    invoices: HashMap<[u8; 32], Entry>,
    mode: Mode,
    calls: usize,
}

pub type SharedBook = Arc<Mutex<Book>>;

impl Book {
    fn new(network: LightningNetwork) -> SharedBook {
        Arc::new(Mutex::new(Book {
            key: bolt11::random_key(),
            network,
            invoices: HashMap::new(),
            mode: Mode::Normal,
            calls: 0,
        }))
    }

    fn create(
        &mut self,
        amount_msat: u64,
        description: &str,
        expiry: u64,
        label: &str,
    ) -> [u8; 32] {
        let preimage: [u8; 32] = rand::random();
        let hash = bolt11::sha256(&preimage);
        let now = unix_now();
        let bolt11 = bolt11::sign(
            &self.key,
            self.network,
            &InvoiceFields {
                amount_msat,
                payment_hash: hash,
                payment_secret: rand::random(),
                description,
                expiry_secs: expiry,
                timestamp: now,
            },
        )
        .expect("sign");
        self.invoices.insert(
            hash,
            Entry {
                bolt11,
                preimage,
                amount_msat,
                description: description.to_owned(),
                label: label.to_owned(),
                expires_at: now + expiry,
                paid: false,
                canceled: false,
            },
        );
        hash
    }
}

/// What every double offers the test.
pub trait Double {
    fn book(&self) -> &SharedBook;

    fn set_mode(&self, mode: Mode) {
        self.book().lock().expect("lock").mode = mode;
    }

    /// The test pays an invoice: returns its preimage.
    fn pay(&self, payment_hash: &[u8; 32]) -> [u8; 32] {
        let mut b = self.book().lock().expect("lock");
        let e = b.invoices.get_mut(payment_hash).expect("known invoice");
        e.paid = true;
        e.preimage
    }

    fn cancel(&self, payment_hash: &[u8; 32]) {
        let mut b = self.book().lock().expect("lock");
        b.invoices
            .get_mut(payment_hash)
            .expect("known invoice")
            .canceled = true;
    }

    fn calls(&self) -> usize {
        self.book().lock().expect("lock").calls
    }

    /// (bolt11, amount_msat, description) of an invoice.
    fn invoice(&self, payment_hash: &[u8; 32]) -> Option<(String, u64, String)> {
        let b = self.book().lock().expect("lock");
        b.invoices
            .get(payment_hash)
            .map(|e| (e.bolt11.clone(), e.amount_msat, e.description.clone()))
    }
}

/// Counts the call and applies the mode: `Err(())` = fail now.
async fn enter(book: &SharedBook) -> Result<(), ()> {
    let mode = {
        let mut b = book.lock().expect("lock");
        b.calls += 1;
        b.mode
    };
    match mode {
        Mode::Normal => Ok(()),
        Mode::Fail => Err(()),
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
    }
}

// ------------------------------------------------------------------------------------------
// TLS

/// A self-signed certificate like LND's (`IsCA`, SANs localhost and 127.0.0.1): (PEM, DER, key).
pub fn self_signed() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let (pem, key_pem) = super::tls::tests::lnd_like_cert();
    let der = load_certs(pem.as_bytes()).expect("cert").remove(0);
    let key = rcgen::KeyPair::from_pem(&key_pem).expect("key");
    (
        pem,
        der,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn acceptor(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsAcceptor::from(Arc::new(config))
}

/// A TLS connection tonic's server accepts as incoming IO.
struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------------------------------
// LND

pub struct LndDouble {
    pub addr: SocketAddr,
    /// The server's certificate (what a client pins).
    pub cert_pem: String,
    /// The macaroon the double accepts (raw bytes; sent hex).
    pub macaroon: Vec<u8>,
    book: SharedBook,
}

impl Double for LndDouble {
    fn book(&self) -> &SharedBook {
        &self.book
    }
}

struct LndService {
    book: SharedBook,
    macaroon_hex: String,
}

impl LndService {
    fn authorize<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        match request
            .metadata()
            .get("macaroon")
            .and_then(|v| v.to_str().ok())
        {
            Some(m) if m == self.macaroon_hex => Ok(()),
            Some(_) => Err(tonic::Status::unauthenticated(
                "verification failed: signature mismatch after caveat verification",
            )),
            None => Err(tonic::Status::unauthenticated("expected 1 macaroon, got 0")),
        }
    }
}

#[tonic::async_trait]
impl lnrpc_server::lightning_server::Lightning for LndService {
    async fn add_invoice(
        &self,
        request: tonic::Request<lnrpc::Invoice>,
    ) -> Result<tonic::Response<lnrpc::AddInvoiceResponse>, tonic::Status> {
        self.authorize(&request)?;
        if enter(&self.book).await.is_err() {
            return Err(tonic::Status::internal("unable to add invoice: db failure"));
        }
        let r = request.into_inner();
        let amount = match (r.value, r.value_msat) {
            (0, m) if m > 0 => m as u64,
            (v, 0) if v > 0 => v as u64 * 1000,
            _ => {
                return Err(tonic::Status::invalid_argument(
                    "value and value_msat are mutually exclusive",
                ))
            }
        };
        let expiry = if r.expiry == 0 {
            86_400
        } else {
            r.expiry as u64
        };
        let mut b = self.book.lock().expect("lock");
        let hash = b.create(amount, &r.memo, expiry, "");
        let bolt11 = b.invoices[&hash].bolt11.clone();
        Ok(tonic::Response::new(lnrpc::AddInvoiceResponse {
            r_hash: hash.to_vec(),
            payment_request: bolt11,
            add_index: b.invoices.len() as u64,
            payment_addr: vec![0; 32],
        }))
    }

    async fn lookup_invoice(
        &self,
        request: tonic::Request<lnrpc::PaymentHash>,
    ) -> Result<tonic::Response<lnrpc::Invoice>, tonic::Status> {
        self.authorize(&request)?;
        if enter(&self.book).await.is_err() {
            return Err(tonic::Status::internal(
                "unable to look up invoice: db failure",
            ));
        }
        let hash: [u8; 32] = request
            .into_inner()
            .r_hash
            .try_into()
            .map_err(|_| tonic::Status::invalid_argument("payment hash must be 32 bytes"))?;
        let b = self.book.lock().expect("lock");
        let Some(e) = b.invoices.get(&hash) else {
            return Err(tonic::Status::not_found("unable to locate invoice"));
        };
        let state = if e.paid {
            lnrpc::InvoiceState::Settled
        } else if e.canceled {
            lnrpc::InvoiceState::Canceled
        } else {
            lnrpc::InvoiceState::Open
        };
        Ok(tonic::Response::new(lnrpc::Invoice {
            memo: e.description.clone(),
            r_preimage: e.preimage.to_vec(),
            r_hash: hash.to_vec(),
            value: (e.amount_msat / 1000) as i64,
            value_msat: e.amount_msat as i64,
            settled: e.paid,
            payment_request: e.bolt11.clone(),
            expiry: 600,
            state: state as i32,
            amt_paid_msat: if e.paid { e.amount_msat as i64 } else { 0 },
            ..lnrpc::Invoice::default()
        }))
    }
}

impl LndDouble {
    pub async fn start(network: LightningNetwork) -> Self {
        let (cert_pem, cert, key) = self_signed();
        let macaroon: Vec<u8> = [&[0x02u8, 0x01][..], &rand::random::<[u8; 16]>()].concat();
        let book = Book::new(network);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tls = acceptor(cert, key, &[b"h2"]);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsIo, std::io::Error>>(16);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A client refusing our certificate ends the handshake: drop it.
                    if let Ok(stream) = tls.accept(tcp).await {
                        let _ = tx.send(Ok(TlsIo(stream))).await;
                    }
                });
            }
        });
        let service = LndService {
            book: book.clone(),
            macaroon_hex: hex::encode(&macaroon),
        };
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(lnrpc_server::lightning_server::LightningServer::new(
                    service,
                ))
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
        });
        Self {
            addr,
            cert_pem,
            macaroon,
            book,
        }
    }
}

// ------------------------------------------------------------------------------------------
// Core Lightning (clnrest)

pub struct ClnDouble {
    /// Base URL (`http://…` or `https://…`).
    pub url: String,
    pub rune: String,
    /// The https server's certificate.
    pub cert_pem: Option<String>,
    book: SharedBook,
}

impl Double for ClnDouble {
    fn book(&self) -> &SharedBook {
        &self.book
    }
}

#[derive(Clone)]
struct RestState {
    book: SharedBook,
    secret: String,
}

fn cln_error(status: StatusCode, code: i64, message: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "code": code, "message": message })))
}

fn cln_auth(s: &RestState, headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    match headers.get("rune").and_then(|v| v.to_str().ok()) {
        None => Err(cln_error(
            StatusCode::FORBIDDEN,
            1501,
            "Not authorized: Missing rune",
        )),
        Some(r) if r == s.secret => Ok(()),
        Some(_) => Err(cln_error(
            StatusCode::UNAUTHORIZED,
            1502,
            "Not authorized: Invalid rune",
        )),
    }
}

async fn cln_invoice(
    State(s): State<RestState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Err(e) = cln_auth(&s, &headers) {
        return e;
    }
    if enter(&s.book).await.is_err() {
        return cln_error(StatusCode::INTERNAL_SERVER_ERROR, -1, "Internal error");
    }
    let (Some(amount), Some(label), Some(description)) = (
        body["amount_msat"].as_u64(),
        body["label"].as_str(),
        body["description"].as_str(),
    ) else {
        return cln_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32602,
            "missing required parameter",
        );
    };
    let expiry = body["expiry"].as_u64().unwrap_or(604_800);
    let mut b = s.book.lock().expect("lock");
    if b.invoices.values().any(|e| e.label == label) {
        return cln_error(StatusCode::INTERNAL_SERVER_ERROR, 900, "Duplicate label");
    }
    let hash = b.create(amount, description, expiry, label);
    let e = &b.invoices[&hash];
    (
        StatusCode::CREATED,
        Json(json!({
            "payment_hash": hex::encode(hash),
            "expires_at": e.expires_at,
            "bolt11": e.bolt11,
            "payment_secret": hex::encode([0u8; 32]),
            "created_index": b.invoices.len(),
        })),
    )
}

async fn cln_listinvoices(
    State(s): State<RestState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Err(e) = cln_auth(&s, &headers) {
        return e;
    }
    if enter(&s.book).await.is_err() {
        return cln_error(StatusCode::INTERNAL_SERVER_ERROR, -1, "Internal error");
    }
    let wanted = body["payment_hash"].as_str().and_then(super::hash_from_hex);
    let b = s.book.lock().expect("lock");
    let now = unix_now();
    let invoices: Vec<Value> = wanted
        .and_then(|h| b.invoices.get(&h).map(|e| (h, e)))
        .map(|(h, e)| {
            let status = if e.paid {
                "paid"
            } else if e.expires_at <= now {
                "expired"
            } else {
                "unpaid"
            };
            let mut v = json!({
                "label": e.label,
                "bolt11": e.bolt11,
                "payment_hash": hex::encode(h),
                "amount_msat": e.amount_msat,
                "status": status,
                "description": e.description,
                "expires_at": e.expires_at,
                "created_index": 1,
            });
            if e.paid {
                v["pay_index"] = json!(1);
                v["amount_received_msat"] = json!(e.amount_msat);
                v["paid_at"] = json!(now);
                v["payment_preimage"] = json!(hex::encode(e.preimage));
            }
            v
        })
        .into_iter()
        .collect();
    (StatusCode::CREATED, Json(json!({ "invoices": invoices })))
}

impl ClnDouble {
    /// Over http, or https with a self-signed certificate when `tls`.
    pub async fn start(network: LightningNetwork, tls: bool) -> Self {
        let book = Book::new(network);
        let rune = format!("rune-{}", hex::encode(rand::random::<[u8; 8]>()));
        let app = Router::new()
            .route("/v1/invoice", post(cln_invoice))
            .route("/v1/listinvoices", post(cln_listinvoices))
            .with_state(RestState {
                book: book.clone(),
                secret: rune.clone(),
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        if !tls {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            return Self {
                url: format!("http://{addr}"),
                rune,
                cert_pem: None,
                book,
            };
        }
        let (cert_pem, cert, key) = self_signed();
        let tls = acceptor(cert, key, &[b"http/1.1"]);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tls = tls.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Self {
            url: format!("https://localhost:{}", addr.port()),
            rune,
            cert_pem: Some(cert_pem),
            book,
        }
    }
}

// ------------------------------------------------------------------------------------------
// LNbits

pub struct LnbitsDouble {
    pub url: String,
    pub key: String,
    book: SharedBook,
}

impl Double for LnbitsDouble {
    fn book(&self) -> &SharedBook {
        &self.book
    }
}

fn detail(status: StatusCode, text: &str) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "detail": text })))
}

fn lnbits_auth(s: &RestState, headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(k) if k == s.secret => Ok(()),
        _ => Err(detail(StatusCode::UNAUTHORIZED, "Invalid key.")),
    }
}

async fn lnbits_create(
    State(s): State<RestState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Err(e) = lnbits_auth(&s, &headers) {
        return e;
    }
    // `out` defaults to true: an invoice key may not pay.
    if body["out"] != json!(false) {
        return detail(StatusCode::FORBIDDEN, "Invoice (or Admin) key required.");
    }
    if enter(&s.book).await.is_err() {
        return detail(
            StatusCode::from_u16(520).expect("520"),
            "Funding source error",
        );
    }
    let (Some(amount), Some("sat")) = (body["amount"].as_u64(), body["unit"].as_str()) else {
        return detail(StatusCode::BAD_REQUEST, "amount in sat required");
    };
    let memo = body["memo"].as_str().unwrap_or("");
    let expiry = body["expiry"].as_u64().unwrap_or(3600);
    let mut b = s.book.lock().expect("lock");
    let hash = b.create(amount * 1000, memo, expiry, "");
    let e = &b.invoices[&hash];
    (
        StatusCode::CREATED,
        Json(json!({
            "checking_id": hex::encode(hash),
            "payment_hash": hex::encode(hash),
            "wallet_id": "w",
            "amount": e.amount_msat,
            "fee": 0,
            "bolt11": e.bolt11,
            "payment_request": e.bolt11,
            "status": "pending",
            "memo": memo,
            "preimage": null,
            "extra": {},
        })),
    )
}

async fn lnbits_check(
    State(s): State<RestState>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> (StatusCode, Json<Value>) {
    if let Err(e) = lnbits_auth(&s, &headers) {
        return e;
    }
    if enter(&s.book).await.is_err() {
        return detail(
            StatusCode::from_u16(520).expect("520"),
            "Funding source error",
        );
    }
    let b = s.book.lock().expect("lock");
    let Some(e) = super::hash_from_hex(&hash).and_then(|h| b.invoices.get(&h)) else {
        return detail(StatusCode::NOT_FOUND, "Payment does not exist.");
    };
    let body = if e.paid {
        json!({ "paid": true, "preimage": hex::encode(e.preimage), "status": "success" })
    } else if e.canceled {
        json!({ "paid": false, "status": "failed" })
    } else {
        json!({ "paid": false, "preimage": null, "status": "pending" })
    };
    (StatusCode::OK, Json(body))
}

impl LnbitsDouble {
    pub async fn start(network: LightningNetwork) -> Self {
        let book = Book::new(network);
        let key = hex::encode(rand::random::<[u8; 16]>());
        let app = Router::new()
            .route("/api/v1/payments", post(lnbits_create))
            .route("/api/v1/payments/{hash}", get(lnbits_check))
            .with_state(RestState {
                book: book.clone(),
                secret: key.clone(),
            });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            key,
            book,
        }
    }
}
