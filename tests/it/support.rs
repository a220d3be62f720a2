//! Test helpers: a temporary database, an in-process engine with a manual or system
//! clock, a scripted HTTP provider, waiting on conditions with a deadline, and the real
//! binary as a child process.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use errand::clock::{SharedClock, SystemClock};
use errand::config::Config;
use errand::engine::Engine;
use errand::spec::NewJob;
use errand::store::{jobs, Store};

/// Waits until `f` holds, checking every 10 ms, failing the test after `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Step {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay_ms: u64,
}

impl Step {
    pub fn status(status: u16) -> Step {
        Step {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay_ms: 0,
        }
    }
    pub fn json(status: u16, body: &str) -> Step {
        Step {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string(),
            delay_ms: 0,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Step {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delay(mut self, ms: u64) -> Step {
        self.delay_ms = ms;
        self
    }
}

/// A request the provider received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted HTTP provider on 127.0.0.1:0: each path answers its queued steps in order,
/// then its default (200 `{"ok":true}` unless set). A thread per connection with
/// keep-alive, written on std::net: tiny_http 0.12's task pool can leave a connection
/// that arrives in a burst waiting until another keep-alive connection closes.
pub struct MockProvider {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    scripts: Arc<Mutex<HashMap<String, VecDeque<Step>>>>,
    defaults: Arc<Mutex<HashMap<String, Step>>>,
    stop: Arc<AtomicBool>,
    /// Requests answered so far (a request seen but not answered is in flight).
    pub answered: Arc<std::sync::atomic::AtomicUsize>,
    /// The most requests that were in flight at once.
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub port: u16,
}

#[derive(Clone)]
struct MockState {
    seen: Arc<Mutex<Vec<Seen>>>,
    scripts: Arc<Mutex<HashMap<String, VecDeque<Step>>>>,
    defaults: Arc<Mutex<HashMap<String, Step>>>,
    stop: Arc<AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve_connection(stream: std::net::TcpStream, st: MockState) {
    use std::io::{BufRead, BufReader, Write};
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_or(true, |n| n == 0) {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).map_or(true, |n| n == 0) {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
            return;
        }
        let path = target.split('?').next().unwrap_or("").to_string();
        let mut seen = st.seen.lock().unwrap();
        let in_flight = seen.len() + 1 - st.answered.load(Ordering::SeqCst);
        st.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
        seen.push(Seen {
            method,
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
        });
        drop(seen);
        let step = st
            .scripts
            .lock()
            .unwrap()
            .get_mut(&path)
            .and_then(|q| q.pop_front())
            .or_else(|| st.defaults.lock().unwrap().get(&path).cloned())
            .unwrap_or_else(|| Step::json(200, r#"{"ok":true}"#));
        if step.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(step.delay_ms));
        }
        let mut resp = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            step.status,
            reason(step.status),
            step.body.len()
        );
        for (k, v) in &step.headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&step.body);
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
        st.answered.fetch_add(1, Ordering::SeqCst);
        if st.stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

impl MockProvider {
    pub fn start() -> MockProvider {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
        let port = listener.local_addr().expect("addr").port();
        let st = MockState {
            seen: Arc::default(),
            scripts: Arc::default(),
            defaults: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            answered: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        };
        let accept_state = st.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if accept_state.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = conn {
                    let st = accept_state.clone();
                    std::thread::spawn(move || serve_connection(stream, st));
                }
            }
        });
        MockProvider {
            seen: st.seen,
            scripts: st.scripts,
            defaults: st.defaults,
            stop: st.stop,
            answered: st.answered,
            max_in_flight: st.max_in_flight,
            port,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Queues answers for `path`.
    pub fn script(&self, path: &str, steps: Vec<Step>) {
        self.scripts
            .lock()
            .unwrap()
            .entry(path.to_string())
            .or_default()
            .extend(steps);
    }

    /// The answer for `path` once its script is used up.
    pub fn default_for(&self, path: &str, step: Step) {
        self.defaults.lock().unwrap().insert(path.to_string(), step);
    }

    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests(path).len()
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock the accept loop.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A temporary directory with a database and a configuration.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub store: Arc<Store>,
    pub config: Config,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        Self::with_config("")
    }

    /// With a TOML configuration (the tick is made fast unless set).
    pub fn with_config(toml: &str) -> TestEnv {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::from_toml(toml).expect("config");
        if !toml.contains("tick_ms") {
            config.tick_ms = 50;
        }
        config.workers = config.workers.min(8);
        config.db = dir.path().join("errand.db");
        let store = Arc::new(Store::open(&config.db, config.synchronous).expect("open"));
        TestEnv { dir, store, config }
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.db.clone()
    }

    /// Starts an engine on the system clock.
    pub fn engine(&self) -> Engine {
        self.engine_with_clock(Arc::new(SystemClock))
    }

    pub fn engine_with_clock(&self, clock: SharedClock) -> Engine {
        Engine::start(self.store.clone(), Arc::new(self.config.clone()), clock).expect("engine")
    }

    /// Inserts a job now.
    pub fn insert(&self, job: &NewJob) -> i64 {
        let now = errand::clock::Clock::now_ms(&SystemClock);
        self.store
            .write(|tx| jobs::insert(tx, job, now))
            .expect("insert")
            .id
    }

    /// Stores `secret` for (account, provider), sent as `Authorization: Bearer <secret>`.
    pub fn put_bearer(&self, account: &str, provider: &str, secret: &str) {
        self.store
            .write(|tx| {
                errand::store::accounts::put_credential(
                    tx,
                    account,
                    provider,
                    secret,
                    "Authorization",
                    "Bearer {secret}",
                    1,
                )
            })
            .expect("put credential");
    }

    pub fn job(&self, id: i64) -> errand::job::Job {
        jobs::get(&self.store.read().expect("read"), id).expect("job")
    }

    pub fn state(&self, id: i64) -> String {
        self.job(id).state.as_str().to_string()
    }

    pub fn count_sql(&self, sql: &str) -> i64 {
        self.store
            .read()
            .expect("read")
            .query_row(sql, [], |r| r.get(0))
            .expect("count")
    }
}

/// A job with a fast exponential backoff, so retries happen within a test.
pub fn fast_job(account: &str, url: &str) -> NewJob {
    let mut j = NewJob::get(account, url);
    j.backoff = Some(errand::backoff::Backoff {
        initial_ms: 50,
        multiplier: 2.0,
        max_ms: 200,
    });
    j
}

/// The path of the built `errand` binary.
pub fn errand_bin() -> &'static str {
    env!("CARGO_BIN_EXE_errand")
}

/// Runs `errand ARGS` in `dir`, returning (exit code, stdout, stderr).
pub fn run_cli(dir: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(errand_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("ERRAND_DB")
        .env_remove("ERRAND_CONFIG")
        .env_remove("ERRAND_API_TOKEN")
        .env_remove("ERRAND_LISTEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn errand");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `errand serve` child process, killed on drop.
pub struct ServeProcess {
    pub child: Child,
    pub addr: String,
    pub stderr_log: PathBuf,
}

impl ServeProcess {
    /// Starts `errand serve` on `db` with extra args and env; waits for /healthz.
    pub fn start(dir: &Path, db: &Path, extra: &[&str], env: &[(&str, &str)]) -> ServeProcess {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join(format!("serve-{port}.log"));
        let mut cmd = Command::new(errand_bin());
        cmd.arg("serve")
            .arg("--db")
            .arg(db)
            .arg("--listen")
            .arg(&addr)
            .args(extra)
            .current_dir(dir)
            .env_remove("ERRAND_API_TOKEN")
            .env("ERRAND_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn serve");
        let p = ServeProcess {
            child,
            addr: addr.clone(),
            stderr_log: log,
        };
        wait_for(20, "errand serve to answer /healthz", || {
            http_get(&format!("http://{addr}/healthz")).is_some_and(|(s, _)| s == 200)
        });
        p
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("errand serve did not exit within {secs}s");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(70)))
        .build()
        .new_agent()
}

/// GET `url`: Some((status, body)) or None when nothing answered.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let mut r = agent().get(url).call().ok()?;
    let status = r.status().as_u16();
    Some((status, r.body_mut().read_to_string().unwrap_or_default()))
}

/// A full answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Any request: method, url, headers, body.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(body.unwrap_or("").as_bytes().to_vec()).unwrap();
    let mut r = agent()
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = r
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}
