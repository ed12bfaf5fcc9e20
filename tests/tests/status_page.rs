//! The public status page (`GET /status`, `GET /status.atom`) of two `tally-collector serve`
//! processes on one PostgreSQL database: no token needed and nothing about any customer on
//! it; when PostgreSQL is stopped both show the store (and ingest and the billing API, which
//! depend on it) down with an open incident, while still serving the page; when it is back
//! the incident is written to the store and closed, and both collectors show the same one
//! incident. The feed is read with an independent Atom parser.

use serde_json::Value;
use std::time::{Duration, Instant};
use tally_tests::cluster::Cluster;
use tally_tests::pg::PgServer;

async fn status(c: &Cluster, i: usize) -> Value {
    let r = reqwest::Client::new()
        .get(format!("http://{}/status", c.procs[i].http))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn text(c: &Cluster, i: usize, path: &str) -> (u16, String, String) {
    let r = reqwest::get(format!("http://{}{path}", c.procs[i].http))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

fn state(s: &Value, component: &str) -> String {
    s["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == component)
        .unwrap_or_else(|| panic!("{component} not on the page: {s}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn store_incidents(s: &Value) -> Vec<Value> {
    s["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["component"] == "store")
        .cloned()
        .collect()
}

/// Polls collector `i`'s status until `done` holds (up to 60 s).
async fn until(c: &Cluster, i: usize, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(c, i).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "collector {i}: {what}: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_is_one_incident_on_every_collector() {
    let pg = PgServer::start();
    let url = pg.fresh_database().await;
    let c = Cluster::new(url, 2);
    // A customer whose name must appear nowhere on the public page.
    c.customer_with_license(&["api.convert"]);

    for i in 0..2 {
        let s = until(&c, i, "all up", |s| state(s, "store") == "up").await;
        assert_eq!(s["status"], "operational", "{s}");
        assert_eq!(state(&s, "ingest"), "up");
        assert_eq!(state(&s, "billing_api"), "up");
        assert_eq!(state(&s, "webhook"), "off");
        assert_eq!(state(&s, "backups"), "off");
        assert!(store_incidents(&s).is_empty(), "{s}");
    }

    pg.stop("fast");
    for i in 0..2 {
        let s = until(&c, i, "store down", |s| {
            state(s, "store") == "down" && !store_incidents(s).is_empty()
        })
        .await;
        assert_eq!(s["status"], "degraded");
        assert_eq!(state(&s, "ingest"), "down");
        assert_eq!(state(&s, "billing_api"), "down");
        let open = store_incidents(&s);
        assert_eq!(open.len(), 1, "{s}");
        assert!(open[0]["closed_at"].is_null(), "{s}");
        // Not written yet: the store is what is down.
        assert!(open[0]["id"].is_null(), "{s}");
        // The page itself keeps working, in every form.
        let (code, ct, html) = text(&c, i, "/status").await;
        assert_eq!(code, 200);
        assert!(ct.starts_with("text/html"), "{ct}");
        assert!(
            html.contains("Data store") && html.contains("state-down"),
            "{html}"
        );
        let (code, _, feed) = text(&c, i, "/status.atom").await;
        assert_eq!(code, 200);
        let parsed = feed_rs::parser::parse(feed.as_bytes()).expect("a valid feed");
        assert_eq!(parsed.entries.len(), 1, "{feed}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start_again();

    let mut seen = Vec::new();
    for i in 0..2 {
        let s = until(&c, i, "store back, incident recorded and closed", |s| {
            let inc = store_incidents(s);
            state(s, "store") == "up"
                && inc.len() == 1
                && inc[0]["id"].is_i64()
                && !inc[0]["closed_at"].is_null()
        })
        .await;
        assert_eq!(s["status"], "operational", "{s}");
        seen.push(store_incidents(&s).remove(0));
    }
    // Wait until both collectors have written what they saw, then compare: one incident,
    // the same on both.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = store_incidents(&status(&c, 0).await);
    let b = store_incidents(&status(&c, 1).await);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a, b, "both collectors show the same history");
    let opened = chrono::DateTime::parse_from_rfc3339(a[0]["opened_at"].as_str().unwrap()).unwrap();
    let closed = chrono::DateTime::parse_from_rfc3339(a[0]["closed_at"].as_str().unwrap()).unwrap();
    assert!(closed - opened >= chrono::Duration::seconds(2), "{a:?}");

    for i in 0..2 {
        let (code, ct, feed) = text(&c, i, "/status.atom").await;
        assert_eq!(code, 200);
        assert!(ct.starts_with("application/atom+xml"), "{ct}");
        let parsed = feed_rs::parser::parse(feed.as_bytes()).expect("a valid Atom feed");
        assert_eq!(parsed.entries.len(), 1, "{feed}");
        let e = &parsed.entries[0];
        assert_eq!(
            e.id,
            format!(
                "urn:tally:status:{}:incident:{}",
                tally_proto::keys::key_id(&c.vendor_key.to_bytes()),
                a[0]["id"]
            )
        );
        let title = e.title.as_ref().unwrap().content.clone();
        assert_eq!(title, "Data store: down (resolved)");
        assert!(e.published.is_some() && e.updated.is_some());
        let (_, _, html) = text(&c, i, "/status").await;
        assert!(
            html.contains("Data store: down (resolved)") && !html.contains("state-down"),
            "{html}"
        );
        for page in [&feed, &html] {
            assert!(
                !page.contains("Acme"),
                "a customer on the public page: {page}"
            );
        }
    }
}
