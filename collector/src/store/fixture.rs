//! Seeding a store with a customer, a license and an enrolled agent, and making that
//! agent's reports, through the `Store` trait only: what the conformance suite, the store
//! benchmark and store unit tests all need, in one place. Reports are real encoded
//! `UsageReport`s; their signatures are not made (a store never checks them).

use super::{AuthenticReport, NewLicense, Store, StoreResult};
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use tally_proto::Digest;
use tally_proto::license::{License, LicensedMetric};
use tally_proto::report::{Counter, Report};

/// A customer with one license and one enrolled agent, and that agent's chain so far.
pub struct Fixture {
    pub customer_id: String,
    pub license_id: String,
    pub agent_id: String,
    pub key: SigningKey,
    /// The next seq [`Fixture::next`] will use.
    pub seq: u64,
    /// The digest the next report chains to.
    pub prev: Option<Digest>,
}

/// What to seed.
pub struct Seed<'a> {
    /// Customer name, and the license id (must be unique in the store).
    pub name: &'a str,
    pub license_id: &'a str,
    /// (metric, monthly limit)
    pub metrics: &'a [(&'a str, Option<u64>)],
    /// The license is valid from `now - 60 days` to `now + 365 days`.
    pub now: DateTime<Utc>,
}

impl Fixture {
    /// Issues another license to this fixture's customer, with the term given (no agent).
    #[allow(clippy::too_many_arguments)]
    pub async fn issue_license(
        &self,
        store: &dyn Store,
        license_id: &str,
        metrics: &[(&str, Option<u64>)],
        not_before: DateTime<Utc>,
        not_after: DateTime<Utc>,
        grace_secs: u64,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let license = License {
            license_id: license_id.into(),
            customer_id: self.customer_id.clone(),
            metrics: metrics
                .iter()
                .map(|(m, limit)| LicensedMetric {
                    metric: m.to_string(),
                    limit: *limit,
                })
                .collect(),
            not_before,
            not_after,
            grace_secs,
            collector_endpoint: "http://127.0.0.1:1".into(),
        };
        let signed = license.sign(&tally_proto::keys::generate());
        store
            .issue_license(
                NewLicense {
                    license,
                    signed: prost::Message::encode_to_vec(&signed),
                    token_hash: rand_hash(),
                    enrollments: 1,
                    token_expires: now,
                    alerts: Vec::new(),
                },
                now,
            )
            .await
    }

    /// Adds the customer, issues the license and enrolls a fresh agent key on it.
    pub async fn seed(store: &dyn Store, s: Seed<'_>) -> StoreResult<Fixture> {
        let customer = store.add_customer(s.name.into(), s.now).await?;
        let license = License {
            license_id: s.license_id.into(),
            customer_id: customer.id.clone(),
            metrics: s
                .metrics
                .iter()
                .map(|(m, limit)| LicensedMetric {
                    metric: m.to_string(),
                    limit: *limit,
                })
                .collect(),
            not_before: s.now - Duration::days(60),
            not_after: s.now + Duration::days(365),
            grace_secs: 86_400,
            collector_endpoint: "http://127.0.0.1:1".into(),
        };
        let signed = license.sign(&tally_proto::keys::generate());
        store
            .issue_license(
                NewLicense {
                    license,
                    signed: prost::Message::encode_to_vec(&signed),
                    token_hash: rand_hash(),
                    enrollments: 1,
                    token_expires: s.now,
                    alerts: Vec::new(),
                },
                s.now,
            )
            .await?;
        let f = Fixture {
            customer_id: customer.id,
            license_id: s.license_id.into(),
            agent_id: String::new(),
            key: tally_proto::keys::generate(),
            seq: 1,
            prev: None,
        };
        f.enroll_new_agent(store, s.now).await
    }

    /// The same customer and license with another, freshly enrolled agent (seq 1).
    pub async fn enroll_new_agent(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
    ) -> StoreResult<Fixture> {
        let key = tally_proto::keys::generate();
        let agent_id = store
            .add_agent(self.license_id.clone(), key.verifying_key().to_bytes(), now)
            .await?;
        Ok(Fixture {
            customer_id: self.customer_id.clone(),
            license_id: self.license_id.clone(),
            agent_id,
            key,
            seq: 1,
            prev: None,
        })
    }

    /// A report of this agent with any seq and `prev_digest` (for forks and broken chains).
    pub fn report(
        &self,
        seq: u64,
        prev: Option<Digest>,
        window_start: DateTime<Utc>,
        window_secs: i64,
        counters: &[(&str, u64)],
    ) -> AuthenticReport {
        let window_end = window_start + Duration::seconds(window_secs);
        let report = Report {
            license_id: self.license_id.clone(),
            agent_key: self.key.verifying_key().to_bytes(),
            seq,
            prev_digest: prev,
            window_start,
            window_end,
            counters: counters
                .iter()
                .map(|(m, q)| Counter {
                    metric: m.to_string(),
                    quantity: *q,
                })
                .collect(),
            created_at: window_end,
            agent_version: "tally-fixture".into(),
        };
        let bytes = report.encode();
        AuthenticReport {
            digest: Digest::of(&bytes),
            bytes,
            signature: vec![0; 64],
            report,
            agent_id: self.agent_id.clone(),
        }
    }

    /// The agent's next report in its chain (seq and `prev_digest` advance).
    pub fn next(
        &mut self,
        window_start: DateTime<Utc>,
        window_secs: i64,
        counters: &[(&str, u64)],
    ) -> AuthenticReport {
        let r = self.report(self.seq, self.prev, window_start, window_secs, counters);
        self.seq += 1;
        self.prev = Some(r.digest);
        r
    }
}

/// A distinct enrollment-token hash per license (the store keys tokens by hash).
fn rand_hash() -> [u8; 32] {
    let mut h = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut h);
    h
}
