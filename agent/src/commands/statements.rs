//! `statements verify`: a closed statement (a file, or fetched from the billing API) is
//! verified against the vendor key of the agent's license, then this agent's line is
//! compared with the reports and receipts the agent holds (`crate::statement_check`).

use super::{CmdResult, CommandError, Output, runtime, usage};
use crate::agent::Agent;
use crate::statement_check::{self, Period};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tally_proto::statement::StatementError;

/// The environment variable holding the billing API token. Never a flag: a process's
/// arguments are visible to every user of the machine (`ps`, `/proc/PID/cmdline`).
pub const API_TOKEN_ENV: &str = "TALLY_API_TOKEN";

/// Largest statement document accepted (a statement has one line per agent).
pub(super) const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// Where the statement comes from.
pub enum StatementSource {
    /// A statement document saved earlier.
    File(PathBuf),
    /// `GET {api}/v1/statements/{customer}/{month}`, the customer being the license's.
    Fetch(String),
}

/// How to reach the billing API (for fetched statements and the audit's evidence).
pub struct BillingApi {
    /// `--api` / `TALLY_API_URL`.
    pub url: Option<String>,
    /// The billing API token, from [`API_TOKEN_ENV`] only (never a flag). Never printed or
    /// logged (this type has no `Debug`).
    pub token: Option<String>,
    /// `--ca`: CA certificates (PEM) trusted besides the public roots; by default the CA
    /// given to `init`, if any.
    pub ca: Option<PathBuf>,
}

impl BillingApi {
    /// `ca` filled in with the CA `init` stored, when none was given.
    pub(super) fn with_default_ca(self, agent: &Agent) -> BillingApi {
        BillingApi {
            ca: self.ca.or_else(|| super::stored_tls(&agent.store).ca),
            ..self
        }
    }
}

/// `statements verify`: verifies the statement's signature with the vendor key of the
/// stored license and checks this agent's line against its own reports and receipts.
///
/// When the line differs, the differences are printed on stdout (one line each, or with
/// `json_out` the one JSON document) before the error is returned, so that the `error:`
/// line on stderr and exit code 1 follow them.
pub async fn statements_verify(
    agent: &Agent,
    source: StatementSource,
    api: BillingApi,
    json_out: bool,
) -> CmdResult {
    let api = api.with_default_ca(agent);
    let (bytes, origin, fetched_month) = match &source {
        StatementSource::File(path) => {
            let b = std::fs::read(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            (b, path.display().to_string(), None)
        }
        StatementSource::Fetch(month) => {
            let (b, origin) = fetch(agent, month, &api).await?;
            // Online anyway: follow any newer keyring first, so a statement key revoked
            // since this agent last looked is judged by the revocation.
            agent.refresh_keyrings().await;
            (b, origin, Some(month.as_str()))
        }
    };
    // A document given as a file that is not a statement is bad input (exit 2); one the API
    // answered, and any signature problem, is a failure (exit 1).
    let malformed = |m: String| match source {
        StatementSource::File(_) => usage(format!("{origin}: {m}")),
        StatementSource::Fetch(_) => runtime(format!("{origin}: {m}")),
    };
    // `Agent::load` verified the stored license with the stored collector key, so this is
    // the license's `vendor_key`. `verify` parses strictly (a repeated key is malformed)
    // and checks the arithmetic after the signature.
    let statement = agent.verify_statement(&bytes).await.map_err(|e| match e {
        StatementError::Malformed(_) => malformed(e.to_string()),
        e => runtime(format!("{origin}: {e}")),
    })?;
    let customer = &agent.license.customer_id;
    if &statement.customer != customer {
        return Err(runtime(format!(
            "{origin}: the statement is for customer {}, but this agent's license is for {customer}",
            statement.customer
        )));
    }
    if let Some(month) = fetched_month
        && statement.period != month
    {
        return Err(runtime(format!(
            "{origin}: asked for {month}, the API answered the statement of {}",
            statement.period
        )));
    }
    if !statement.closed {
        return Err(runtime(format!("{origin}: the statement is not closed")));
    }
    let closed_at = tally_proto::time::parse_instant(&statement.closed_at)
        .map_err(|e| runtime(format!("{origin}: closed_at: {e}")))?;
    let period =
        Period::of_month(&statement.period, closed_at.timestamp_micros()).ok_or_else(|| {
            runtime(format!(
                "{origin}: period {:?} is not YYYY-MM",
                statement.period
            ))
        })?;

    let key_id = tally_proto::keys::key_id(&agent.signing_key().verifying_key().to_bytes());
    // This agent's line names the key that signed its reports: the current key, or an
    // earlier one of this agent's if it rotated since.
    let history = agent.key_history().map_err(runtime)?;
    let line = history
        .keys()
        .iter()
        .rev()
        .find_map(|(k, _)| statement.agent_line(&tally_proto::keys::key_id(k)));
    let held = agent
        .store
        .held_reports(
            period.start,
            period.end,
            line.map_or(&[][..], |l| l.seqs.as_slice()),
            &|r: &tally_proto::pb::Receipt| agent.keys.verify_receipt(r, None),
        )
        .map_err(runtime)?;
    let check = statement_check::check(period, line, &held);

    let agent_id = line.map(|l| l.agent_id.clone());
    let shown_agent = agent_id
        .clone()
        .unwrap_or_else(|| format!("with key id {key_id}"));
    let (first, last) = (check.expected.first(), check.expected.last());
    let notes = check.notes();
    let doc = json!({
        "matches": check.matches(),
        "customer": statement.customer,
        "period": statement.period,
        "closed_at": statement.closed_at,
        "agent_id": agent_id,
        "key_id": key_id,
        "reports": check.expected.len(),
        "first_seq": first,
        "last_seq": last,
        "differences": check.differences.iter().map(|d| d.to_json()).collect::<Vec<Value>>(),
        "notes": notes,
    });
    let note_lines: String = notes.iter().map(|n| format!("note: {n}\n")).collect();
    let header = format!("statement {} {}", statement.customer, statement.period);
    if check.matches() {
        let seqs = match (first, last) {
            (Some(a), Some(b)) => format!(", seq {a}..{b}"),
            _ => String::new(),
        };
        let text = if line.is_none() {
            format!(
                "{header}: no line for agent {shown_agent}, and none expected by my receipts (0 reports)\n"
            )
        } else {
            format!(
                "{header}: agent {shown_agent} line matches my receipts ({} reports{seqs})\n",
                check.expected.len()
            )
        };
        return Ok(Output::new(doc, text + &note_lines));
    }
    if json_out {
        println!("{doc}");
    } else {
        for d in &check.differences {
            println!("{d}");
        }
        print!("{note_lines}");
    }
    let k = check.differences.len();
    Err(runtime(format!(
        "the statement differs from my receipts in {k} place{} ({header}, agent {shown_agent})",
        if k == 1 { "" } else { "s" }
    )))
}

/// GETs the statement of `month` for the license's customer; returns the body and a name
/// for messages (the URL, which holds no secret).
pub(super) async fn fetch(
    agent: &Agent,
    month: &str,
    api: &BillingApi,
) -> Result<(Vec<u8>, String), CommandError> {
    if Period::of_month(month, 0).is_none() {
        return Err(usage(format!(
            "--fetch {:?}: not a month (YYYY-MM)",
            month.chars().take(32).collect::<String>()
        )));
    }
    let path = format!("/v1/statements/{}/{month}", agent.license.customer_id);
    get_api(api, &path, MAX_STATEMENT_BYTES).await
}

/// GETs `path` from the billing API at `api` with the bearer `token`, reading at most
/// `max_bytes`; returns the body and the URL (which holds no secret) for messages. Only
/// https, or plain http to this machine: the token must not cross a network in clear.
/// `ca`: a PEM file of CA certificates trusted besides the public roots (a private CA).
pub(super) async fn get_api(
    api: &BillingApi,
    path: &str,
    max_bytes: usize,
) -> Result<(Vec<u8>, String), CommandError> {
    let ca = api.ca.as_deref();
    let token = api.token.as_deref();
    let api = api
        .url
        .as_deref()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| usage("the billing API's URL is needed: --api URL or TALLY_API_URL"))?
        .trim_end_matches('/');
    let url = reqwest::Url::parse(api).map_err(|e| usage(format!("--api {api}: {e}")))?;
    let loopback = matches!(
        url.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    match url.scheme() {
        "https" => {}
        // The token would cross the network in clear text: only on this machine.
        "http" if loopback => {}
        "http" => {
            return Err(usage(format!(
                "--api {api}: plain http:// sends the API token in clear text; use https:// \
                 (or http:// to this machine only)"
            )));
        }
        _ => return Err(usage(format!("--api {api}: must be an https:// URL"))),
    }
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        usage(format!(
            "the billing API token is needed in {API_TOKEN_ENV} (never on the command line)"
        ))
    })?;
    let target = format!("{api}{path}");
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)
            .map_err(|e| usage(format!("--ca {}: cannot read: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| usage(format!("--ca {}: not PEM certificates: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(usage(format!(
                "--ca {}: holds no certificate",
                ca.display()
            )));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    let client = builder
        .build()
        .map_err(|e| runtime(format!("HTTP client: {e}")))?;
    let mut resp = client
        .get(&target)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| runtime(format!("{target}: cannot reach the billing API: {e}")))?;
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| runtime(format!("{target}: reading the answer: {e}")))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(runtime(format!(
                "{target}: the answer is larger than {max_bytes} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        let message = tally_proto::json::parse(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(printable))
            .unwrap_or_else(|| "no error message".into());
        return Err(runtime(format!("{target}: HTTP {status}: {message}")));
    }
    Ok((body, target))
}

/// The server's text made safe for a terminal: no control characters, at most 300 chars.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::{AgentFiles, DataDir};
    use crate::store::AgentStore;
    use chrono::TimeZone;
    use ed25519_dalek::SigningKey;
    use tally_proto::Digest;
    use tally_proto::license::{License, LicensedMetric};
    use tally_proto::receipt::{Outcome, ReceiptBody};
    use tally_proto::statement::{AgentLine, Line, Quantity, Statement, merkle_root};

    const OCT_5: i64 = 1_791_194_400; // 2026-10-05T10:00:00Z

    /// An initialized agent directory (no collector involved) whose two October reports
    /// were receipted ACCEPTED by `vendor`, and the honest statement of October.
    async fn setup(dir: &std::path::Path) -> (Agent, SigningKey, Statement) {
        let vendor = tally_proto::keys::generate();
        let license = License {
            license_id: "lic_1".into(),
            customer_id: "cus_1".into(),
            metrics: vec![LicensedMetric {
                metric: "api.convert".into(),
                limit: None,
            }],
            not_before: chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            not_after: chrono::Utc.with_ymd_and_hms(2027, 12, 31, 0, 0, 0).unwrap(),
            grace_secs: 0,
            collector_endpoint: "http://127.0.0.1:1".into(),
        };
        let dd = DataDir::new(dir);
        let key = tally_proto::keys::generate();
        tally_proto::keys::write_new(&dd.key(), &key).unwrap();
        {
            let store = AgentStore::open(&dd.db()).unwrap();
            let signed = prost::Message::encode_to_vec(&license.sign(&vendor));
            store.set_meta("license", signed).await.unwrap();
            store
                .set_meta("collector_key", vendor.verifying_key().to_bytes().to_vec())
                .await
                .unwrap();
        }
        let agent = super::super::load(&dd, 3600, Vec::new(), Default::default()).unwrap();
        for (i, q) in [(0, 3), (1, 4)] {
            let e = crate::store::Event {
                metric: "api.convert".into(),
                quantity: q,
                idempotency_key: None,
            };
            let t = OCT_5 + i * 3600;
            agent
                .store
                .record(vec![e], t + 5, agent.windows)
                .await
                .unwrap();
            agent
                .store
                .close_windows(key.clone(), "lic_1".into(), t + 3601, agent.windows, false)
                .await
                .unwrap();
        }
        let reports = agent.store.reports_since(1).unwrap();
        assert_eq!(reports.len(), 2);
        let receipts = reports
            .iter()
            .map(|r| {
                let body = ReceiptBody {
                    report_digest: r.digest,
                    outcome: Outcome::Accepted,
                    reason: String::new(),
                    detail: String::new(),
                    received_at: chrono::DateTime::from_timestamp(OCT_5 + 3 * 3600, 0).unwrap(),
                    lease_until: None,
                    credits: vec![],
                };
                let raw = body.sign(&vendor);
                (body, raw)
            })
            .collect();
        agent.store.store_receipts(receipts).await.unwrap();
        let digests: Vec<Digest> = reports.iter().map(|r| r.digest).collect();
        let statement = Statement {
            customer: "cus_1".into(),
            period: "2026-10".into(),
            closed: true,
            closed_at: "2026-11-03T00:00:00Z".into(),
            key_id: tally_proto::keys::key_id(&vendor.verifying_key().to_bytes()),
            lines: vec![Line {
                metric: "api.convert".into(),
                used: 7,
                limit: None,
                overage: 0,
            }],
            adjustments: vec![],
            agents: vec![AgentLine {
                agent_id: "agt_1".into(),
                key_id: tally_proto::keys::key_id(&key.verifying_key().to_bytes()),
                key_ids: Vec::new(),
                license_id: "lic_1".into(),
                first_seq: 1,
                last_seq: 2,
                reports: 2,
                seqs: vec![(1, 2)],
                quantities: vec![Quantity {
                    metric: "api.convert".into(),
                    quantity: 7,
                }],
                root: merkle_root(&digests).to_hex(),
            }],
        };
        (agent, vendor, statement)
    }

    fn no_api() -> BillingApi {
        BillingApi {
            url: None,
            token: None,
            ca: None,
        }
    }

    fn file(dir: &std::path::Path, doc: &[u8]) -> StatementSource {
        let p = dir.join("statement.json");
        std::fs::write(&p, doc).unwrap();
        StatementSource::File(p)
    }

    #[tokio::test]
    async fn a_statement_file_is_verified_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (agent, vendor, statement) = setup(dir.path()).await;
        let doc = statement.sign(&vendor);
        let out = statements_verify(&agent, file(dir.path(), &doc), no_api(), false)
            .await
            .unwrap();
        assert_eq!(
            out.text,
            "statement cus_1 2026-10: agent agt_1 line matches my receipts (2 reports, seq 1..2)\n"
        );
        assert_eq!(out.json["matches"], json!(true));

        // One quantity changed (and the total with it, so the bill adds up), signed again:
        // one difference, exit 1.
        let mut changed = statement.clone();
        changed.agents[0].quantities[0].quantity = 8;
        changed.lines[0].used = 8;
        let e = statements_verify(
            &agent,
            file(dir.path(), &changed.sign(&vendor)),
            no_api(),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string()
                .starts_with("the statement differs from my receipts in 1 place ("),
            "{e}"
        );

        // Tampered, another vendor's key, not a statement.
        let tampered = String::from_utf8(doc.clone())
            .unwrap()
            .replace("\"quantity\":7", "\"quantity\":6");
        let e = statements_verify(
            &agent,
            file(dir.path(), tampered.as_bytes()),
            no_api(),
            false,
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("statement signature"), "{e}");
        let other = tally_proto::keys::generate();
        let mut foreign = statement.clone();
        foreign.key_id = tally_proto::keys::key_id(&other.verifying_key().to_bytes());
        let e = statements_verify(
            &agent,
            file(dir.path(), &foreign.sign(&other)),
            no_api(),
            false,
        )
        .await
        .unwrap_err();
        assert!(
            e.exit_code() == 1 && e.to_string().contains("but the vendor key is"),
            "{e}"
        );
        let e = statements_verify(
            &agent,
            file(dir.path(), b"{\"a\":1,\"a\":2}"),
            no_api(),
            false,
        )
        .await
        .unwrap_err();
        assert!(
            e.exit_code() == 2 && e.to_string().contains("duplicate"),
            "{e}"
        );
    }

    /// A billing API stand-in: the statement for the right token, a JSON 401 otherwise.
    async fn api(doc: Vec<u8>) -> String {
        use axum::http::{HeaderMap, StatusCode, Uri};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move |uri: Uri, h: HeaderMap| {
            let doc = doc.clone();
            async move {
                let auth = h.get("authorization").and_then(|v| v.to_str().ok());
                if auth != Some("Bearer tok-secret") {
                    let e = json!({"error": {"code": "unauthorized", "message": "bad token"}});
                    return (StatusCode::UNAUTHORIZED, e.to_string().into_bytes());
                }
                if uri.path() != "/v1/statements/cus_1/2026-10" {
                    return (StatusCode::NOT_FOUND, b"{}".to_vec());
                }
                (StatusCode::OK, doc)
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_statement_is_fetched_with_the_token_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let (agent, vendor, statement) = setup(dir.path()).await;
        let url = api(statement.sign(&vendor)).await;
        let with = |token: Option<&str>| BillingApi {
            url: Some(url.clone() + "/"),
            token: token.map(str::to_string),
            ca: None,
        };
        let fetch = |month: &str| StatementSource::Fetch(month.into());
        let out = statements_verify(&agent, fetch("2026-10"), with(Some("tok-secret")), true)
            .await
            .unwrap();
        assert_eq!(out.json["matches"], json!(true));
        assert_eq!(out.json["reports"], json!(2));

        let e = statements_verify(&agent, fetch("2026-10"), with(Some("tok-wrong")), false)
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string().ends_with("HTTP 401 Unauthorized: bad token")
                && !e.to_string().contains("tok-wrong"),
            "{e}"
        );
        let e = statements_verify(&agent, fetch("2026-10"), with(None), false)
            .await
            .unwrap_err();
        assert!(
            e.exit_code() == 2 && e.to_string().contains(API_TOKEN_ENV),
            "{e}"
        );
        let e = statements_verify(&agent, fetch("2026-13"), with(Some("tok-secret")), false)
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        // The token never crosses the network in clear text: plain http:// only to here.
        let remote = BillingApi {
            url: Some("http://billing.example.com".into()),
            token: Some("tok-secret".into()),
            ca: None,
        };
        let e = statements_verify(&agent, fetch("2026-10"), remote, false)
            .await
            .unwrap_err();
        assert!(
            e.exit_code() == 2 && e.to_string().contains("clear text"),
            "{e}"
        );
    }
}
