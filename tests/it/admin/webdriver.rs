//! A minimal W3C WebDriver client over chromedriver's HTTP JSON protocol, with ureq: enough
//! to navigate, find, click, type, read text and run a script in headless Chromium.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{free_port, wait_for};

/// The key W3C uses for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session driven through chromedriver; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
    agent: ureq::Agent,
}

fn first_existing(paths: &[&str]) -> Option<String> {
    paths
        .iter()
        .find(|p| Path::new(p).exists())
        .map(|p| p.to_string())
}

/// What a browser test does before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Chromium and chromedriver are installed: run.
    Run,
    /// One is missing on a developer's machine: skip, loudly.
    Skip,
    /// One is missing under CI: fail, so a broken CI image cannot pass by skipping.
    Fail,
}

/// True when the `CI` variable says this is a CI run: set to anything but empty, `0`
/// or `false` (CI services set `CI=true`; `CI=false` opts a machine out).
pub fn is_ci(ci: Option<&std::ffi::OsStr>) -> bool {
    ci.and_then(|v| v.to_str())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Decides whether a browser test runs, skips or fails: pure, so the rule that CI never
/// skips is tested without uninstalling the browser.
pub fn plan(ci: Option<&std::ffi::OsStr>, browser_present: bool) -> Plan {
    match (browser_present, is_ci(ci)) {
        (true, _) => Plan::Run,
        (false, true) => Plan::Fail,
        (false, false) => Plan::Skip,
    }
}

impl Browser {
    /// Starts chromedriver and a browser session. When Chromium or chromedriver is
    /// missing: panics under CI (see [`plan`]: the test must fail there), else returns
    /// None after saying loudly that the browser test is skipped.
    pub fn start(test: &str) -> Option<Browser> {
        let driver_bin = first_existing(&["/usr/bin/chromedriver"]);
        let chrome_bin = first_existing(&["/usr/lib/chromium/chromium", "/usr/bin/chromium"]);
        let present = driver_bin.is_some() && chrome_bin.is_some();
        let (driver_bin, chrome_bin) = match (plan(std::env::var_os("CI").as_deref(), present), driver_bin, chrome_bin) {
            (Plan::Run, Some(d), Some(c)) => (d, c),
            (Plan::Fail, ..) => panic!("{test}: /usr/bin/chromium or /usr/bin/chromedriver is missing and CI is set; .ci/run installs them (apt-get install chromium chromium-driver)"),
            _ => {
                eprintln!("\n!!!!! SKIPPING BROWSER TEST {test}: chromium/chromedriver not installed (apt-get install chromium chromium-driver); set CI=1 to make this a failure !!!!!\n");
                return None;
            }
        };
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
            agent,
        };
        wait_for(30, "chromedriver to be ready", || {
            b.agent
                .get(format!("{}/status", b.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true))
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome_bin,
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-component-update",
                         "--no-first-run", "--disable-dev-shm-usage", "--window-size=1200,900",
                         format!("--user-data-dir={}", b._profile.path().display())]
            }
        }}});
        let v = b.raw("POST", "/session", Some(caps));
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {v}"))
            .to_string();
        Some(b)
    }

    fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut r = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.unwrap_or_else(|| json!({})).to_string()),
        }
        .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = r.status().as_u16();
        let v: Value = r
            .body_mut()
            .read_to_string()
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        assert!(status < 400, "webdriver {method} {path} -> {status}: {v}");
        v
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        self.raw(method, &p, body)["value"].clone()
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current address.
    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The page's HTML as the browser has it.
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Element ids matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        self.cmd(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The first element matching `css`, waiting up to 10 s for it to appear.
    pub fn find(&self, css: &str) -> String {
        let mut found = None;
        wait_for(10, &format!("element {css}"), || {
            found = self.find_all(css).into_iter().next();
            found.is_some()
        });
        found.unwrap_or_default()
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    /// Types `text` into the first element matching `css`.
    pub fn fill(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.cmd("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Runs an async script: its last argument is the callback that ends it.
    pub fn exec_async(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/timeouts", Some(json!({"script": 60_000})));
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn a_missing_browser_fails_under_ci_and_skips_elsewhere() {
    use std::ffi::OsStr;
    let ci = |v: &'static str| Some(OsStr::new(v));
    assert_eq!(plan(ci("true"), false), Plan::Fail);
    assert_eq!(plan(ci("1"), false), Plan::Fail);
    assert_eq!(plan(ci("TRUE"), false), Plan::Fail);
    assert_eq!(plan(ci("woodpecker"), false), Plan::Fail);
    assert_eq!(plan(None, false), Plan::Skip);
    assert_eq!(plan(ci(""), false), Plan::Skip);
    assert_eq!(plan(ci("0"), false), Plan::Skip);
    assert_eq!(plan(ci("false"), false), Plan::Skip);
    for v in [None, ci("true"), ci("false")] {
        assert_eq!(plan(v, true), Plan::Run, "{v:?}");
    }
}
