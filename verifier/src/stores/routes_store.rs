//! The live route table. The verifier owns it: `tollway.yaml`'s `routes:` (watched, reloaded
//! when the file changes) with the admin API's changes on top (stored in the ledger database,
//! re-applied at start and after each reload).
//!
//! Every change builds a complete candidate table and validates it with the rules of
//! `tollway check` ([`Config::validate_routes`]) and the filter's compile; a refused candidate
//! changes nothing. An accepted one is swapped into [`Payments`] (so verify, settle and
//! ext_authz use the new prices at once) and then published to the filters (`Routes` RPC).
//!
//! The version is a content hash of the routes JSON the filters receive, not a counter: a
//! filter holding version X after a verifier restart is up to date exactly when the table is
//! the same.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tollway_protocol::rpc::RoutesResponse;

use crate::config::{parse_routes, Config, ConfigErrors, Problem, RawRoute, ValidRoutes};
use crate::payments::{Payments, PaymentsError};
use crate::stores::ledger::{LedgerLocation, RouteChangeLog, RouteLogError, StoredRouteChange};

/// How often `tollway.yaml` is checked for changes.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// What an admin change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Add or replace a route (body: one route).
    Put,
    /// Merge fields into a route (JSON merge patch: `null` removes a field).
    Patch,
    /// Remove a route.
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Patch => "patch",
            Op::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        match s {
            "put" => Some(Op::Put),
            "patch" => Some(Op::Patch),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One admin change: `body` is a JSON object for put and patch.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub op: Op,
    pub name: String,
    pub body: Option<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no route named {0:?}")]
    NotFound(String),
    /// The candidate table breaks a rule; the problems say where (`routes[3].price: ...`).
    #[error("{message}")]
    Invalid {
        message: String,
        problems: Vec<Problem>,
    },
    #[error("cannot store the change: {0}")]
    Store(String),
}

impl ChangeError {
    fn invalid(problems: Vec<Problem>) -> ChangeError {
        let n = problems.len();
        ChangeError::Invalid {
            message: format!(
                "the change was refused: the route table would have {n} problem{}",
                if n == 1 { "" } else { "s" }
            ),
            problems,
        }
    }

    fn bad_body(message: impl Into<String>) -> ChangeError {
        ChangeError::Invalid {
            message: message.into(),
            problems: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] RouteLogError),
    #[error("the routes of the config do not validate:\n{0}")]
    Invalid(ConfigErrors),
    #[error(transparent)]
    Payments(#[from] PaymentsError),
}

/// One validated table, as served.
#[derive(Debug)]
pub struct RouteTable {
    /// Content hash of `routes_json` (53 bits, so JSON clients read it exactly; never 0).
    pub version: u64,
    /// The routes in `tollway.yaml` shape (what the admin API lists and changes).
    pub routes: Vec<RawRoute>,
    pub valid: ValidRoutes,
    /// JSON array of `FilterConfig.routes`: the `Routes` RPC's answer, serialised once.
    pub routes_json: String,
}

impl RouteTable {
    pub fn paid_routes(&self) -> usize {
        self.valid
            .routes
            .iter()
            .filter(|r| r.price.is_some() || r.lightning.is_some())
            .count()
    }
}

/// The content hash of a routes JSON text.
pub fn version_of(routes_json: &str) -> u64 {
    let digest = Sha256::digest(routes_json.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11).max(1)
}

/// Validates `routes` as the table of `config`.
fn build(config: &Config, routes: Vec<RawRoute>) -> Result<RouteTable, ConfigErrors> {
    let valid = config.validate_routes(&routes)?;
    let routes_json = serde_json::to_string(&valid.filter.routes).map_err(|e| {
        ConfigErrors(vec![Problem {
            path: "routes".into(),
            message: format!("cannot serialise: {e}"),
            hint: None,
        }])
    })?;
    Ok(RouteTable {
        version: version_of(&routes_json),
        routes,
        valid,
        routes_json,
    })
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => {
            let mut p = p.clone();
            if let Value::Object(map) = &mut p {
                map.retain(|_, v| !v.is_null());
            }
            *t = p;
        }
    }
}

/// The candidate route list after `change`.
fn apply(routes: &[RawRoute], change: &Change) -> Result<Vec<RawRoute>, ChangeError> {
    let index = routes.iter().position(|r| r.name == change.name);
    let mut out = routes.to_vec();
    let body = || -> Result<serde_json::Map<String, Value>, ChangeError> {
        let Some(Value::Object(map)) = &change.body else {
            return Err(ChangeError::bad_body(
                "the body must be a JSON object: one route in tollway.yaml shape",
            ));
        };
        match map.get("name") {
            None => {}
            Some(Value::String(n)) if *n == change.name => {}
            Some(_) => {
                return Err(ChangeError::bad_body(format!(
                    "the body's name must be {:?} (the name in the URL) or left out; routes are not renamed",
                    change.name
                )))
            }
        }
        Ok(map.clone())
    };
    match change.op {
        Op::Put => {
            let mut map = body()?;
            map.insert("name".into(), Value::String(change.name.clone()));
            let at = index.unwrap_or(out.len());
            let route = RawRoute::from_json(Value::Object(map), at)
                .map_err(|p| ChangeError::invalid(vec![p]))?;
            match index {
                Some(i) => out[i] = route,
                None => out.push(route),
            }
        }
        Op::Patch => {
            let i = index.ok_or_else(|| ChangeError::NotFound(change.name.clone()))?;
            let patch = Value::Object(body()?);
            let mut merged = out[i].to_json();
            merge_patch(&mut merged, &patch);
            if let Value::Object(m) = &mut merged {
                m.insert("name".into(), Value::String(change.name.clone()));
            }
            out[i] = RawRoute::from_json(merged, i).map_err(|p| ChangeError::invalid(vec![p]))?;
        }
        Op::Delete => {
            let i = index.ok_or_else(|| ChangeError::NotFound(change.name.clone()))?;
            out.remove(i);
        }
    }
    Ok(out)
}

/// A stored change, decoded.
fn decode(stored: &StoredRouteChange) -> Option<Change> {
    let op = Op::parse(&stored.op)?;
    let body = match &stored.body_json {
        Some(text) => Some(serde_json::from_str(text).ok()?),
        None => None,
    };
    Some(Change {
        op,
        name: stored.name.clone(),
        body,
    })
}

/// `file` with every stored change that still validates on top; the others are skipped with a
/// warning.
fn replay(
    config: &Config,
    file: &[RawRoute],
    changes: &[StoredRouteChange],
) -> Result<RouteTable, ConfigErrors> {
    let mut table = build(config, file.to_vec())?;
    for stored in changes {
        let Some(change) = decode(stored) else {
            tracing::warn!(seq = stored.seq, op = %stored.op, route = %stored.name, "stored route change is unreadable; skipped");
            continue;
        };
        let candidate = match apply(&table.routes, &change) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(seq = stored.seq, op = change.op.as_str(), route = %change.name, error = %e, "stored route change no longer applies; skipped");
                continue;
            }
        };
        match build(config, candidate) {
            Ok(t) => table = t,
            Err(e) => {
                let problems: Vec<String> = e.0.iter().map(ToString::to_string).collect();
                tracing::warn!(seq = stored.seq, op = change.op.as_str(), route = %change.name, ?problems, "stored route change no longer validates; skipped");
            }
        }
    }
    Ok(table)
}

struct Sources {
    /// The file's `routes:` last loaded.
    file: Vec<RawRoute>,
    /// The other sections of the file last seen (to warn once when they change).
    static_seen: serde_yaml::Value,
}

pub struct RouteStore {
    config: Arc<Config>,
    payments: Arc<Payments>,
    log: RouteChangeLog,
    /// Held while a change is validated and swapped in: one writer at a time.
    sources: Mutex<Sources>,
    current: RwLock<Arc<RouteTable>>,
    /// The version being served, for those who push it (RDS).
    version: watch::Sender<u64>,
}

impl RouteStore {
    /// Opens the change log in `db` (the ledger database), applies the stored changes on top
    /// of the config's routes and swaps the result into `payments`.
    pub fn open(
        config: Arc<Config>,
        payments: Arc<Payments>,
        db: &LedgerLocation,
    ) -> Result<RouteStore, StoreError> {
        let log = RouteChangeLog::open(db)?;
        let changes = log.all()?;
        let table = replay(&config, &config.file_routes, &changes).map_err(StoreError::Invalid)?;
        payments.set_routes(&table.valid)?;
        tracing::info!(
            version = table.version,
            routes = table.routes.len(),
            admin_changes = changes.len(),
            "route table ready"
        );
        Ok(RouteStore {
            sources: Mutex::new(Sources {
                file: config.file_routes.clone(),
                static_seen: config.static_sections.clone(),
            }),
            config,
            payments,
            log,
            version: watch::Sender::new(table.version),
            current: RwLock::new(Arc::new(table)),
        })
    }

    /// The table being served.
    pub fn current(&self) -> Arc<RouteTable> {
        match self.current.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Wakes on every new table.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The `Routes` answer: the table, or nothing new when the filter has `known_version`.
    pub fn routes_response(&self, known_version: u64) -> RoutesResponse {
        let t = self.current();
        RoutesResponse {
            version: t.version,
            routes_json: if known_version == t.version {
                String::new()
            } else {
                t.routes_json.clone()
            },
        }
    }

    fn install(&self, table: RouteTable) -> Result<u64, PaymentsError> {
        let version = table.version;
        // Payments first: a filter that sees the new version finds the verifier ready for it.
        self.payments.set_routes(&table.valid)?;
        let table = Arc::new(table);
        match self.current.write() {
            Ok(mut c) => *c = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
        self.version.send_replace(version);
        Ok(version)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sources> {
        match self.sources.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Validates and applies an admin change, stores it, and answers the new version.
    pub fn change(&self, change: Change) -> Result<u64, ChangeError> {
        let _sources = self.lock();
        let current = self.current();
        let candidate = apply(&current.routes, &change)?;
        let table = build(&self.config, candidate).map_err(|e| ChangeError::invalid(e.0))?;
        let body = change.body.as_ref().map(Value::to_string);
        let seq = self
            .log
            .append(change.op.as_str(), &change.name, body.as_deref())
            .map_err(|e| ChangeError::Store(e.to_string()))?;
        let version = match self.install(table) {
            Ok(v) => v,
            Err(e) => {
                if let Err(e) = self.log.remove(seq) {
                    tracing::error!(error = %e, seq, "cannot forget a route change that was not applied");
                }
                return Err(ChangeError::Store(e.to_string()));
            }
        };
        if change.op != Op::Patch {
            // A replace or delete makes the route's earlier changes moot.
            if let Err(e) = self.log.forget_before(&change.name, seq) {
                tracing::warn!(error = %e, route = %change.name, "cannot compact the route change log");
            }
        }
        tracing::info!(
            op = change.op.as_str(),
            route = %change.name,
            version,
            previous = current.version,
            "admin route change applied"
        );
        Ok(version)
    }

    /// Reloads the routes from the text of `tollway.yaml`: validated alone, then with the
    /// admin changes on top. Answers the new version, or `None` when the table is unchanged.
    /// An invalid file changes nothing.
    pub fn reload(&self, text: &str) -> Result<Option<u64>, ConfigErrors> {
        let (file, static_sections) = parse_routes(text)?;
        let mut sources = self.lock();
        if static_sections != sources.static_seen {
            if static_sections != self.config.static_sections {
                tracing::warn!(
                    "tollway.yaml changed outside routes:; only routes are reloaded live, restart the verifier for the rest"
                );
            }
            sources.static_seen = static_sections;
        }
        // The file alone must be valid: a broken file is ignored, not patched up by the
        // admin changes.
        build(&self.config, file.clone())?;
        let changes = self.log.all().map_err(|e| {
            ConfigErrors(vec![Problem {
                path: "route_changes".into(),
                message: e.to_string(),
                hint: None,
            }])
        })?;
        let table = replay(&self.config, &file, &changes)?;
        sources.file = file;
        let previous = self.current().version;
        if table.version == previous {
            return Ok(None);
        }
        let routes = table.routes.len();
        let version = self.install(table).map_err(|e| {
            ConfigErrors(vec![Problem {
                path: "routes".into(),
                message: e.to_string(),
                hint: None,
            }])
        })?;
        tracing::info!(
            version,
            previous,
            routes,
            "routes reloaded from tollway.yaml"
        );
        Ok(Some(version))
    }
}

/// Polls `path` every [`FILE_POLL`] and reloads the routes when its content changes, until
/// `stop` turns true. A file that cannot be read or does not validate is logged and ignored.
pub async fn watch_file(store: Arc<RouteStore>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut last: Option<[u8; 32]> = None;
    let mut read_failing = false;
    let mut tick = tokio::time::interval(FILE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                if !read_failing {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the config to watch it; the route table keeps serving");
                    read_failing = true;
                }
                continue;
            }
        };
        read_failing = false;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if last == Some(digest) {
            continue;
        }
        last = Some(digest);
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                tracing::warn!(path = %path.display(), "config is not UTF-8; ignored");
                continue;
            }
        };
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.reload(&text)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let problems: Vec<String> = e.0.iter().map(ToString::to_string).collect();
                tracing::warn!(path = %path.display(), ?problems, "changed config refused; the route table keeps serving");
            }
            Err(e) => tracing::error!(error = %e, "route reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rails::facilitator::fake::dead_url;
    use crate::testkit::{config_text, leased_harness, Harness};
    use serde_json::json;

    fn put(name: &str, body: Value) -> Change {
        Change {
            op: Op::Put,
            name: name.into(),
            body: Some(body),
        }
    }

    fn patch(name: &str, body: Value) -> Change {
        Change {
            op: Op::Patch,
            name: name.into(),
            body: Some(body),
        }
    }

    fn delete(name: &str) -> Change {
        Change {
            op: Op::Delete,
            name: name.into(),
            body: None,
        }
    }

    fn names(h: &Harness) -> Vec<String> {
        h.store
            .current()
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    /// The atomic amount the payments core charges for `route` (first offer).
    fn charged(h: &Harness, route: &str) -> Option<u128> {
        h.payments
            .compiled()
            .route(route)
            .and_then(|r| r.paid.as_ref())
            .map(|p| p.offers[0].amount.get())
    }

    fn problems(e: ChangeError) -> Vec<String> {
        match e {
            ChangeError::Invalid { problems, .. } => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn add_replace_patch_disable_delete() {
        let h = leased_harness(&dead_url().await);
        let v0 = h.store.current().version;
        assert_eq!(names(&h), ["quote", "echo", "ticker", "room", "free"]);

        // Add: served at once, by the table and by payments.
        let v1 = h
            .store
            .change(put(
                "report",
                json!({"path": "/api/report/[id]", "methods": ["GET"], "price": "0.005"}),
            ))
            .expect("put");
        assert_ne!(v1, v0);
        assert_eq!(h.store.current().version, v1);
        assert_eq!(names(&h).last().map(String::as_str), Some("report"));
        let compiled = h.payments.compiled();
        let m = compiled
            .table
            .find("x", "GET", "/api/report/7")
            .expect("match");
        assert_eq!(compiled.routes[m.index].name, "report");
        assert_eq!(charged(&h, "report"), Some(5000));
        assert!(h.payments.routes().compiled.route("report").is_some());

        // Replace: the whole route (the old methods are gone).
        h.store
            .change(put(
                "report",
                json!({"path": "/api/report/[id]", "price": "0.006"}),
            ))
            .expect("replace");
        assert_eq!(charged(&h, "report"), Some(6000));
        assert_eq!(
            h.store.current().routes.last().expect("route").methods,
            None
        );

        // Patch: re-priced, same place in the table.
        h.store
            .change(patch("quote", json!({"price": "0.05"})))
            .expect("patch");
        assert_eq!(charged(&h, "quote"), Some(50_000));
        assert_eq!(names(&h)[0], "quote");
        // A free route made paid: `free` removed with null (merge patch).
        h.store
            .change(patch("free", json!({"free": null, "price": "0.001"})))
            .expect("patch free");
        assert_eq!(charged(&h, "free"), Some(1000));

        // Disable: kept in the table (so no broader route serves it), refused.
        h.store
            .change(patch("echo", json!({"disabled": true})))
            .expect("disable");
        let t = h.store.current();
        let echo = t
            .valid
            .filter
            .routes
            .iter()
            .find(|r| r.name == "echo")
            .expect("echo");
        assert!(echo.disabled);
        assert!(h.payments.compiled().route("echo").expect("echo").disabled);
        assert!(t.routes_json.contains("\"disabled\":true"));
        h.store
            .change(patch("echo", json!({"disabled": false})))
            .expect("enable");
        assert!(!h.payments.compiled().route("echo").expect("echo").disabled);

        // Delete.
        h.store.change(delete("report")).expect("delete");
        assert!(!names(&h).contains(&"report".to_owned()));
        assert!(h.payments.compiled().route("report").is_none());

        // Unknown routes.
        assert!(matches!(
            h.store.change(delete("nope")),
            Err(ChangeError::NotFound(_))
        ));
        assert!(matches!(
            h.store.change(patch("nope", json!({"price": "1"}))),
            Err(ChangeError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn invalid_changes_are_refused_and_the_old_table_serves() {
        let h = leased_harness(&dead_url().await);
        let before = h.store.current().version;
        let cases: Vec<(Change, &str)> = vec![
            (
                put("bad", json!({"path": "/api/bad", "price": "abc"})),
                "routes[5].price: \"abc\" is not a price",
            ),
            (
                put("bad", json!({"path": "/api/bad", "price": 0.5})),
                "routes[5].price: 0.5 is a YAML number",
            ),
            (
                put(
                    "bad",
                    json!({"path": "/api/bad", "price": "0.1", "rails": ["nope"]}),
                ),
                "routes[5].rails[0]: unknown rail \"nope\"",
            ),
            (
                put(
                    "bad",
                    json!({"path": "/api/quote", "methods": ["GET"], "price": "0.1"}),
                ),
                "routes[5]: matches exactly the same requests as route \"quote\"",
            ),
            (
                put(
                    "bad",
                    json!({"path": "/api/bad", "price": "0.1", "pricee": "1"}),
                ),
                "routes[5].pricee: unknown field `pricee`",
            ),
            (
                patch("quote", json!({"price": "-1"})),
                "routes[0].price: \"-1\" is not a price",
            ),
            (
                patch("ticker", json!({"lease": {"seconds": 0}})),
                "routes[2].lease.seconds: 0 is out of range",
            ),
            (
                patch("ticker", json!({"upstream_path": "/v1/[nope]"})),
                "routes[2].upstream_path: \"/v1/[nope]\": `[nope]` is not captured",
            ),
            (
                put("bad name", json!({"path": "/api/x", "free": true})),
                "routes[5].name: \"bad name\" is not a route name",
            ),
        ];
        for (change, expected) in cases {
            let what = format!("{change:?}");
            let ps = problems(h.store.change(change).expect_err(&what));
            assert!(
                ps.iter().any(|p| p.starts_with(expected)),
                "{what}: expected {expected:?} in {ps:#?}"
            );
            assert_eq!(h.store.current().version, before, "{what}");
        }
        // A body that is not a route, or renames one.
        for change in [
            put("x", json!([1, 2])),
            put("x", json!({"name": "y", "path": "/x", "free": true})),
        ] {
            let e = h.store.change(change).expect_err("refused");
            assert!(
                matches!(&e, ChangeError::Invalid { problems, .. } if problems.is_empty()),
                "{e:?}"
            );
        }
        assert_eq!(h.store.current().version, before);
        assert_eq!(charged(&h, "quote"), Some(1000));
        // Nothing refused was stored.
        assert!(h.store.log.all().expect("log").is_empty());
    }

    #[tokio::test]
    async fn version_is_a_content_hash() {
        let h = leased_harness(&dead_url().await);
        let t = h.store.current();
        assert_eq!(t.version, version_of(&t.routes_json));
        assert!(t.version > 0 && t.version < (1 << 53));
        let v0 = t.version;
        let v1 = h
            .store
            .change(put("x", json!({"path": "/x", "free": true})))
            .expect("put");
        assert_ne!(v0, v1);
        // Back to the same content: back to the same version.
        assert_eq!(h.store.change(delete("x")).expect("delete"), v0);
        // Another store over the same config (a restart without changes) agrees.
        let dir = tempfile::tempdir().expect("tmp");
        let other = RouteStore::open(
            Arc::new(h.config.clone()),
            h.payments.clone(),
            &LedgerLocation::Sqlite(dir.path().join("other.db")),
        )
        .expect("store");
        assert_eq!(other.current().version, v0);
        assert_eq!(other.current().routes_json, t.routes_json);
    }

    #[tokio::test]
    async fn changes_survive_a_restart() {
        let h = leased_harness(&dead_url().await);
        let db = crate::testkit::sqlite_at(h.dir.path());
        h.store
            .change(put("new", json!({"path": "/api/new", "price": "0.003"})))
            .expect("put");
        h.store
            .change(patch(
                "quote",
                json!({"price": "0.04", "description": "dearer"}),
            ))
            .expect("patch");
        h.store
            .change(patch("quote", json!({"disabled": true})))
            .expect("patch");
        h.store.change(delete("echo")).expect("delete");
        let want = h.store.current();

        let reopened =
            RouteStore::open(Arc::new(h.config.clone()), h.payments.clone(), &db).expect("open");
        let got = reopened.current();
        assert_eq!(got.version, want.version);
        assert_eq!(got.routes, want.routes);
        assert_eq!(charged(&h, "quote"), Some(40_000));

        // A stored change that no longer validates on the file (here: the file now has a route
        // on /api/new) is skipped; the rest still applies.
        let dir = tempfile::tempdir().expect("tmp");
        let text = crate::testkit::leased_config_text(&dead_url().await, dir.path()).replace(
            "  - name: free\n",
            "  - name: other\n    path: /api/new\n    free: true\n  - name: free\n",
        );
        let config = Config::parse(&text, crate::config::Secrets::Resolve).expect("valid");
        let store = RouteStore::open(Arc::new(config), h.payments.clone(), &db).expect("open");
        let t = store.current();
        assert!(t.routes.iter().all(|r| r.name != "new"));
        assert!(t.routes.iter().all(|r| r.name != "echo"));
        let quote = t.routes.iter().find(|r| r.name == "quote").expect("quote");
        assert!(quote.disabled);
    }

    #[tokio::test]
    async fn replace_and_delete_compact_the_log() {
        let h = leased_harness(&dead_url().await);
        for price in ["0.01", "0.02", "0.03"] {
            h.store
                .change(patch("quote", json!({ "price": price })))
                .expect("patch");
        }
        h.store
            .change(put(
                "quote",
                json!({"path": "/api/quote", "methods": ["GET"], "price": "0.5"}),
            ))
            .expect("put");
        let log = h.store.log.all().expect("log");
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].op, "put");
    }

    #[tokio::test]
    async fn file_reload() {
        let h = leased_harness(&dead_url().await);
        let dir = tempfile::tempdir().expect("tmp");
        let url = dead_url().await;
        let text = crate::testkit::leased_config_text(&url, dir.path());
        // The same routes (another dead url would change the offers? no: facilitators are not
        // in the routes): unchanged.
        let v0 = h.store.current().version;
        h.store
            .change(patch("echo", json!({"disabled": true})))
            .expect("admin change");
        let v_admin = h.store.current().version;

        let repriced = text.replace("price: \"0.001\"", "price: \"0.007\"");
        let v1 = h.store.reload(&repriced).expect("valid").expect("changed");
        assert_ne!(v1, v_admin);
        assert_eq!(charged(&h, "quote"), Some(7000));
        // The admin change is re-applied on top of the new file.
        assert!(h.payments.compiled().route("echo").expect("echo").disabled);
        // Same text again: nothing to do.
        assert_eq!(h.store.reload(&repriced).expect("valid"), None);

        // A broken file is refused; the table keeps serving.
        let broken = repriced.replace("price: \"0.007\"", "price: 0.007");
        let e = h.store.reload(&broken).expect_err("invalid");
        assert!(e.0[0].to_string().starts_with("routes[0].price"), "{e}");
        assert_eq!(h.store.current().version, v1);
        let e = h.store.reload("routes: [").expect_err("not yaml");
        assert!(!e.0.is_empty());
        assert_eq!(h.store.current().version, v1);

        // A change outside routes: is not applied (restart needed), the routes still are.
        let other = repriced
            .replace("timeout_ms: 1000", "timeout_ms: 2000")
            .replace("price: \"0.007\"", "price: \"0.001\"");
        assert!(h.store.reload(&other).expect("valid").is_some());
        assert_eq!(charged(&h, "quote"), Some(1000));
        // Back to the original file and no admin change: the original version.
        h.store
            .change(patch("echo", json!({"disabled": null})))
            .expect("enable");
        h.store.reload(&text).expect("valid");
        assert_eq!(h.store.current().version, v0);
    }

    #[tokio::test]
    async fn watches_the_file() {
        let h = leased_harness(&dead_url().await);
        let dir = tempfile::tempdir().expect("tmp");
        let text = crate::testkit::leased_config_text(&dead_url().await, dir.path());
        let path = dir.path().join("tollway.yaml");
        std::fs::write(&path, &text).expect("write");
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(watch_file(h.store.clone(), path.clone(), stop_rx));
        let v0 = h.store.current().version;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(h.store.current().version, v0, "same file, same table");

        std::fs::write(&path, text.replace("price: \"0.002\"", "price: \"0.009\"")).expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while h.store.current().version == v0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_ne!(h.store.current().version, v0, "reloaded");
        assert_eq!(charged(&h, "echo"), Some(9000));

        let _ = stop_tx.send(true);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stops")
            .expect("join");
    }

    #[tokio::test]
    async fn routes_answer() {
        let h = leased_harness(&dead_url().await);
        let t = h.store.current();
        let fresh = h.store.routes_response(0);
        assert_eq!(fresh.version, t.version);
        let routes: Vec<tollway_protocol::filter_config::RouteConfig> =
            serde_json::from_str(&fresh.routes_json).expect("routes json");
        assert_eq!(routes, t.valid.filter.routes);
        let same = h.store.routes_response(t.version);
        assert_eq!(same.version, t.version);
        assert!(same.routes_json.is_empty());
        let stale = h.store.routes_response(t.version ^ 1);
        assert_eq!(stale.routes_json, t.routes_json);
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "lease": {"seconds": 60}});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "lease": {"renewal": {"window_seconds": 5}}, "n": {"x": null}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "lease": {"seconds": 60, "renewal": {"window_seconds": 5}}, "n": {}})
        );
        let _ = config_text;
    }
}
