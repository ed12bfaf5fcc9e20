//! `customers cancel` on a real collector process: the customer's agents, licenses and
//! tokens stop working at once; with `--now` everything of it is purged and only audit
//! entries with counts remain; another customer's totals are unchanged, before and after.

use serde_json::Value;
use tally_proto::pb;
use tally_proto::receipt::Outcome;
use tally_tests::{CollectorProcess, Deployment, TestAgent, collector_cmd, collector_json};

struct Tenant {
    customer: String,
    license: String,
    agent: TestAgent,
    token: String,
}

fn tenant(d: &Deployment, name: &str) -> Tenant {
    let customer = collector_json(&d.cdata, &["customers", "add", name])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let lic = d.issue_backdated_license(&customer, "api.convert");
    let agent = TestAgent::new(lic["license_id"].as_str().unwrap());
    d.add_agent_key(lic["license_id"].as_str().unwrap(), &agent);
    let role = format!("customer:{customer}");
    let token = collector_json(&d.cdata, &["tokens", "create", "--role", &role])["token"]
        .as_str()
        .unwrap()
        .to_string();
    Tenant {
        customer,
        license: lic["license_id"].as_str().unwrap().to_string(),
        agent,
        token,
    }
}

async fn submit(d: &Deployment, t: &mut Tenant, n: u64, q: u64) -> Vec<(Outcome, String)> {
    let c = &d.collector;
    let key = d.receipt_key;
    let reports = (0..n)
        .map(|_| t.agent.next(&[("api.convert", q)]).1)
        .collect();
    let resp = tally_tests::connect(c.grpc)
        .await
        .submit(pb::SubmitRequest { reports })
        .await
        .unwrap()
        .into_inner();
    tally_tests::receipts(resp, &key)
        .into_iter()
        .map(|b| (b.outcome, b.reason))
        .collect()
}

/// (status, total usage) of a customer as its own token sees it.
async fn usage(c: &CollectorProcess, token: &str) -> (u16, u64) {
    let r = reqwest::Client::new()
        .get(format!("http://{}/v1/usage?granularity=month", c.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or_default();
    let total = v["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|x| x["quantity"].as_u64().unwrap()).sum())
        .unwrap_or(0);
    (status, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_now_revokes_and_purges_one_customer_only() {
    let d = Deployment::new(&["api.convert"], None);
    let mut a = tenant(&d, "Cancelled Corp");
    let mut b = tenant(&d, "Staying Corp");
    let c = &d.collector;
    assert!(
        submit(&d, &mut a, 10, 3)
            .await
            .iter()
            .all(|(o, _)| *o == Outcome::Accepted)
    );
    assert!(
        submit(&d, &mut b, 10, 5)
            .await
            .iter()
            .all(|(o, _)| *o == Outcome::Accepted)
    );
    assert_eq!(usage(c, &a.token).await, (200, 30));
    assert_eq!(usage(c, &b.token).await, (200, 50));

    let out = collector_json(
        &d.cdata,
        &["customers", "cancel", &a.customer, "--now", "--yes"],
    );
    assert_eq!(out["revoked"]["licenses"], 1, "{out}");
    assert_eq!(out["revoked"]["agents"], 1, "{out}");
    assert_eq!(out["revoked"]["tokens"], 1, "{out}");
    assert_eq!(out["purged"]["reports"], 10, "{out}");
    // Its license file went with it; the other customer's stays.
    let file = |t: &Tenant| {
        d.cdata
            .join("licenses")
            .join(format!("{}.license", t.license))
    };
    assert!(
        !file(&a).exists(),
        "the purged customer's license file is left"
    );
    assert!(file(&b).exists());

    // The other customer: unchanged, and still working.
    assert_eq!(usage(c, &b.token).await, (200, 50));
    assert!(
        submit(&d, &mut b, 2, 5)
            .await
            .iter()
            .all(|(o, _)| *o == Outcome::Accepted)
    );
    assert_eq!(usage(c, &b.token).await, (200, 60));
    // The cancelled one: its token no longer works, its agent is unknown, it is not listed.
    assert_eq!(usage(c, &a.token).await.0, 401);
    let refused = submit(&d, &mut a, 1, 3).await;
    assert_eq!(
        refused,
        vec![(Outcome::Refused, "unknown_agent".to_string())]
    );
    let customers = collector_json(&d.cdata, &["customers", "list"]);
    assert!(
        customers
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["id"] != a.customer.as_str()),
        "{customers}"
    );
    // Only the audit entries remain, with the counts.
    let audit = collector_json(&d.cdata, &["audit", "list"]);
    let purge = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "customers purge" && e["target"] == a.customer.as_str())
        .unwrap_or_else(|| panic!("no purge entry: {audit}"));
    assert!(
        purge["outcome"].as_str().unwrap().contains("reports=10"),
        "{purge}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_later_revokes_at_once_and_keeps_the_data_until_the_purge() {
    let d = Deployment::new(&["api.convert"], None);
    let mut a = tenant(&d, "Leaving Corp");
    let c = &d.collector;
    submit(&d, &mut a, 4, 2).await;
    let out = collector_json(
        &d.cdata,
        &["customers", "cancel", &a.customer, "--purge-after", "30d"],
    );
    assert!(out["purged"].is_null(), "{out}");
    // Revoked at once: the agent is refused, nothing more is counted.
    assert_eq!(
        submit(&d, &mut a, 1, 2).await,
        vec![(Outcome::Refused, "agent_revoked".to_string())]
    );
    // Kept until the purge: the vendor still sees the usage and the cancellation.
    let admin_usage = usage(c, &d.admin).await;
    assert_eq!(admin_usage, (200, 8));
    let customers = collector_json(&d.cdata, &["customers", "list"]);
    let row = customers
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == a.customer.as_str())
        .unwrap();
    assert!(row["cancelled_at"].is_string(), "{row}");
    // Bad input changes nothing.
    for (args, needle) in [
        (
            vec!["customers", "cancel", a.customer.as_str()],
            "already cancelled",
        ),
        (vec!["customers", "cancel", "cus_nope"], "not found"),
        (
            vec![
                "customers",
                "cancel",
                a.customer.as_str(),
                "--now",
                "--yes",
                "--purge-after",
                "1d",
            ],
            "exclude each other",
        ),
        (
            vec!["customers", "cancel", a.customer.as_str(), "--now"],
            "add --yes to confirm",
        ),
        (
            vec![
                "customers",
                "cancel",
                a.customer.as_str(),
                "--purge-after",
                "soon",
            ],
            "--purge-after",
        ),
    ] {
        let (code, _, err) = collector_cmd(&d.cdata, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    assert_eq!(usage(c, &d.admin).await, (200, 8));
}

/// A purge run by another collector node (on a shared database) removes the licenses from
/// the store but can only delete its own node's license files: every node's lifecycle
/// sweep then removes the files of licenses the store no longer has, and no other file.
#[tokio::test(flavor = "multi_thread")]
async fn each_node_removes_the_files_of_licenses_purged_elsewhere() {
    use tally_collector::datadir::CollectorFiles as _;
    let c = tally_tests::InProcessCollector::start().await;
    let gone = c.add_customer("Gone").await;
    let kept = c.add_customer("Kept").await;
    let (gone_license, _) = c.issue_license(&gone, &["api.convert"]).await;
    let (kept_license, _) = c.issue_license(&kept, &["api.convert"]).await;
    let dir = c.ctx.dir.licenses();
    let file = |id: &str| dir.join(format!("{id}.license"));
    let stranger = dir.join("notes.txt");
    std::fs::write(&stranger, "not a license file").unwrap();
    assert!(file(&gone_license).exists() && file(&kept_license).exists());

    // The other node cancels and purges (it has no access to this node's files).
    let now = c.now();
    c.ctx
        .store
        .cancel_customer(gone.clone(), now, now)
        .await
        .unwrap();
    let purged = tally_collector::lifecycle::purge_due(c.ctx.store.as_ref(), now, "other", None)
        .await
        .unwrap();
    assert_eq!(purged.len(), 1);
    assert!(file(&gone_license).exists(), "this node still has the file");

    let removed = tally_collector::lifecycle::sweep_license_files(c.ctx.store.as_ref(), &dir)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!file(&gone_license).exists());
    assert!(file(&kept_license).exists(), "a live license's file stays");
    assert!(
        stranger.exists(),
        "files that are not license files are not ours"
    );
    // Nothing more to do the second time.
    assert_eq!(
        tally_collector::lifecycle::sweep_license_files(c.ctx.store.as_ref(), &dir)
            .await
            .unwrap(),
        0
    );
    c.stop().await;
}
