//! A real headless Chromium (Debian's `chromium`, installed on first use by
//! `scripts/test-deps.sh`), driven over the Chrome DevTools Protocol: a few CDP commands
//! over one WebSocket are all the UI tests need (navigate, evaluate JavaScript, capture a
//! screenshot, allow downloads, collect the page's errors), so this small client stands in
//! for a driver crate. The browser runs in its own temporary profile and is killed when
//! dropped.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
    /// Events kept since `watch_errors` (none before), drained by `errors`.
    events: Option<Vec<Value>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts headless Chromium on `about:blank` and attaches to its page.
    pub async fn start() -> Browser {
        let chromium = crate::deps::require("chromium");
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it chose into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ws = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_string();
        let (socket, _) = tokio_tungstenite::connect_async(ws)
            .await
            .expect("CDP socket");
        let mut b = Browser {
            child,
            socket,
            next_id: 1,
            events: None,
            _profile: profile,
        };
        b.call("Page.enable", json!({})).await;
        b.call("Runtime.enable", json!({})).await;
        b
    }

    /// Sends one CDP command and waits for its answer (events in between are skipped, or
    /// kept for `errors` once `watch_errors` was called).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(msg.to_string()))
            .await
            .expect("CDP send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} in 60 s"))
                .expect("CDP socket closed")
                .expect("CDP read");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("CDP JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            if let Some(events) = &mut self.events
                && v.get("method").is_some()
            {
                events.push(v);
            }
        }
    }

    /// From now on, keeps what `errors` reports: console errors, uncaught exceptions, and
    /// requests that failed or were answered 4xx/5xx (a missing favicon among them).
    pub async fn watch_errors(&mut self) {
        self.events.get_or_insert_with(Vec::new);
        self.call("Network.enable", json!({})).await;
        self.call("Log.enable", json!({})).await;
    }

    /// The errors seen since the last call (or since `watch_errors`), one line each, with
    /// the URL where there is one.
    pub async fn errors(&mut self) -> Vec<String> {
        // One round trip, so that everything the page did before this call has arrived.
        self.eval("true").await;
        let events = self.events.as_mut().map(std::mem::take).unwrap_or_default();
        let mut urls = HashMap::new();
        let mut out = Vec::new();
        for e in events {
            let p = &e["params"];
            match e["method"].as_str().unwrap_or("") {
                "Network.requestWillBeSent" => {
                    urls.insert(p["requestId"].to_string(), p["request"]["url"].to_string());
                }
                "Network.responseReceived"
                    if p["response"]["status"].as_u64().is_some_and(|s| s >= 400) =>
                {
                    out.push(format!(
                        "HTTP {} for {}",
                        p["response"]["status"], p["response"]["url"]
                    ));
                }
                // A request the page itself dropped (a navigation away) is no error.
                "Network.loadingFailed" if p["canceled"] != true => out.push(format!(
                    "request failed ({}): {}",
                    p["errorText"],
                    urls.get(&p["requestId"].to_string())
                        .map_or("?", String::as_str)
                )),
                "Log.entryAdded" if p["entry"]["level"] == "error" => out.push(format!(
                    "console error: {} {}",
                    p["entry"]["text"], p["entry"]["url"]
                )),
                "Runtime.consoleAPICalled" if p["type"] == "error" => {
                    out.push(format!("console.error: {}", p["args"]));
                }
                "Runtime.exceptionThrown" => out.push(format!(
                    "uncaught: {}",
                    p["exceptionDetails"]["exception"]["description"]
                )),
                _ => {}
            }
        }
        out
    }

    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `condition` (a JavaScript expression) is truthy, up to 30 s.
    pub async fn wait_for(&mut self, condition: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": format!("!!({condition})"), "returnByValue": true}),
                )
                .await;
            if v["result"]["value"] == true {
                return;
            }
            if Instant::now() > deadline {
                let body = self.eval("document.body.innerText").await;
                panic!("timed out waiting for {condition}; the page says: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The visible text of the element `selector` (`None` if there is none).
    pub async fn text(&mut self, selector: &str) -> Option<String> {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); return e ? e.textContent : null; }})()"
        ))
        .await
        .as_str()
        .map(str::to_string)
    }

    /// Writes a PNG of the page to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Lets the page download files into `dir`.
    pub async fn allow_downloads(&mut self, dir: &Path) {
        self.call(
            "Browser.setDownloadBehavior",
            json!({"behavior": "allow", "downloadPath": dir.to_str().unwrap()}),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to 30 s for a file to appear in `dir` whose name starts with `prefix` and that
/// Chromium has finished writing; returns its path.
pub async fn downloaded(dir: &Path, prefix: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = std::fs::read_dir(dir).ok().and_then(|rd| {
            rd.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.starts_with(prefix) && !n.ends_with(".crdownload")
            })
        }) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no download {prefix}* in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
