//! The public status page in its three forms: HTML (`GET /status`), JSON (the same URL
//! with `Accept: application/json`) and an Atom feed of the incidents (`GET /status.atom`,
//! RFC 4287). Built from a [`super::StatusBoard`]'s components and incidents; no token, and
//! nothing about any customer.

use super::{Component, ComponentState};
use crate::store::Incident;
use serde_json::{Value, json};
use tally_proto::time::{Instant, rfc3339};

/// Everything one rendering needs.
pub struct StatusView {
    pub components: Vec<ComponentState>,
    /// Newest first.
    pub incidents: Vec<Incident>,
    pub now: Instant,
    /// Names this deployment in the feed's ids (the collector key id): ids stay the same
    /// across collectors and restarts, and differ between deployments.
    pub deployment: String,
}

/// Minimal escaping for text in HTML and XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3 h 5 min", "42 s".
fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

fn incident_title(i: &Incident) -> String {
    let what = Component::title_of(&i.component);
    match i.closed_at {
        Some(_) => format!("{what}: down (resolved)"),
        None => format!("{what}: down"),
    }
}

fn incident_text(i: &Incident, now: Instant) -> String {
    let span = match i.closed_at {
        Some(c) => format!(
            "Down from {} to {} ({}).",
            rfc3339(i.opened_at),
            rfc3339(c),
            duration((c - i.opened_at).num_seconds())
        ),
        None => format!(
            "Down since {} ({} so far).",
            rfc3339(i.opened_at),
            duration((now - i.opened_at).num_seconds())
        ),
    };
    if i.detail.is_empty() {
        span
    } else {
        format!("{span} {}", i.detail)
    }
}

/// The id of an incident in the feed: the store's id, or (not recorded yet) the component
/// and its start.
fn entry_id(v: &StatusView, i: &Incident) -> String {
    if i.id > 0 {
        format!("urn:tally:status:{}:incident:{}", v.deployment, i.id)
    } else {
        format!(
            "urn:tally:status:{}:incident:{}:{}",
            v.deployment,
            i.component,
            i.opened_at.timestamp()
        )
    }
}

pub fn json(v: &StatusView) -> Value {
    json!({
        "status": if v.components.iter().any(|c| c.state == super::State::Down) { "degraded" } else { "operational" },
        "checked_at": rfc3339(v.now),
        "components": v.components.iter().map(|c| json!({
            "component": c.component.name(),
            "title": c.component.title(),
            "state": c.state.as_str(),
            "since": c.since.map(rfc3339),
        })).collect::<Vec<_>>(),
        "incidents": v.incidents.iter().map(|i| json!({
            "id": (i.id > 0).then_some(i.id),
            "component": i.component,
            "title": incident_title(i),
            "detail": i.detail,
            "opened_at": rfc3339(i.opened_at),
            "closed_at": i.closed_at.map(rfc3339),
        })).collect::<Vec<_>>(),
    })
}

pub fn html(v: &StatusView, stylesheet: Option<&str>) -> String {
    let overall = if v.components.iter().any(|c| c.state == super::State::Down) {
        "Some components are down"
    } else {
        "All components are working"
    };
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Service status</title>\n",
    );
    if let Some(css) = stylesheet {
        out.push_str(&format!(
            "<link rel=\"stylesheet\" href=\"{}\">\n",
            esc(css)
        ));
    }
    out.push_str(
        "<link rel=\"alternate\" type=\"application/atom+xml\" title=\"Incidents\" href=\"/status.atom\">\n\
         </head>\n<body class=\"status-page\">\n<main>\n<h1>Service status</h1>\n",
    );
    out.push_str(&format!(
        "<p id=\"overall\">{overall} <small>(checked {})</small></p>\n",
        esc(&rfc3339(v.now))
    ));
    out.push_str("<table id=\"components\">\n<thead><tr><th>Component</th><th>State</th></tr></thead>\n<tbody>\n");
    for c in &v.components {
        let since = c
            .since
            .map(|s| format!(" since {}", esc(&rfc3339(s))))
            .unwrap_or_default();
        out.push_str(&format!(
            "<tr data-component=\"{}\"><td>{}</td><td class=\"state-{}\">{}{since}</td></tr>\n",
            c.component.name(),
            esc(c.component.title()),
            c.state.as_str(),
            c.state.as_str(),
        ));
    }
    out.push_str(&format!(
        "</tbody>\n</table>\n<h2>Incidents in the last {} days</h2>\n",
        super::HISTORY_DAYS
    ));
    if v.incidents.is_empty() {
        out.push_str("<p id=\"no-incidents\">No incidents.</p>\n");
    } else {
        out.push_str("<ul id=\"incidents\">\n");
        for i in &v.incidents {
            out.push_str(&format!(
                "<li data-component=\"{}\" data-open=\"{}\"><strong>{}</strong> {}</li>\n",
                esc(&i.component),
                i.closed_at.is_none(),
                esc(&incident_title(i)),
                esc(&incident_text(i, v.now)),
            ));
        }
        out.push_str("</ul>\n");
    }
    out.push_str(
        "<p><a href=\"/status.atom\">Subscribe to incidents (Atom)</a></p>\n</main>\n</body>\n</html>\n",
    );
    out
}

pub fn atom(v: &StatusView) -> String {
    let updated = v
        .incidents
        .iter()
        .map(|i| i.closed_at.unwrap_or(i.opened_at))
        .max()
        .unwrap_or(v.now);
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <feed xmlns=\"http://www.w3.org/2005/Atom\">\n\
         <id>urn:tally:status:{}</id>\n\
         <title>Service status: incidents</title>\n\
         <updated>{}</updated>\n\
         <author><name>Tally collector</name></author>\n",
        esc(&v.deployment),
        rfc3339(updated)
    );
    for i in &v.incidents {
        out.push_str(&format!(
            "<entry>\n<id>{}</id>\n<title>{}</title>\n<published>{}</published>\n\
             <updated>{}</updated>\n<content type=\"text\">{}</content>\n</entry>\n",
            esc(&entry_id(v, i)),
            esc(&incident_title(i)),
            rfc3339(i.opened_at),
            rfc3339(i.closed_at.unwrap_or(i.opened_at)),
            esc(&incident_text(i, v.now)),
        ));
    }
    out.push_str("</feed>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{State, StatusBoard};

    #[test]
    fn text_is_escaped_and_durations_read_well() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(3 * 3600 + 5 * 60 + 1), "3 h 5 min");
        assert_eq!(duration(2 * 86_400 + 3600), "2 d 1 h");
    }

    #[test]
    fn an_open_and_a_resolved_incident_in_every_form() {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let board = StatusBoard::default();
        let v = StatusView {
            components: board.components(),
            incidents: vec![
                Incident {
                    id: 0,
                    component: "backups".into(),
                    detail: String::new(),
                    opened_at: t(100),
                    closed_at: None,
                },
                Incident {
                    id: 7,
                    component: "store".into(),
                    detail: "<b>".into(),
                    opened_at: t(0),
                    closed_at: Some(t(65)),
                },
            ],
            now: t(160),
            deployment: "0011223344556677".into(),
        };
        assert!(v.components.iter().all(|c| c.state != State::Down));
        let j = json(&v);
        assert_eq!(j["status"], "operational");
        assert_eq!(j["incidents"][0]["id"], Value::Null);
        assert_eq!(j["incidents"][1]["id"], 7);
        assert_eq!(j["incidents"][1]["title"], "Data store: down (resolved)");
        let h = html(&v, None);
        assert!(h.contains("&lt;b&gt;") && !h.contains("<b>"), "{h}");
        assert!(h.contains("Down from") && h.contains("(1 min)"), "{h}");
        assert!(
            h.contains("Down since") && h.contains("(1 min so far)"),
            "{h}"
        );
        let a = atom(&v);
        assert!(a.contains("<id>urn:tally:status:0011223344556677:incident:7</id>"));
        assert!(
            a.contains("<id>urn:tally:status:0011223344556677:incident:backups:1800000100</id>")
        );
        assert!(a.contains("<updated>2027-01-15T08:01:40Z</updated>"), "{a}");
    }
}
