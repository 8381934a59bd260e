//! Real `gundb node` processes for tests: started on 127.0.0.1 with ports chosen by the
//! system, talked to over HTTP, killed with SIGKILL or stopped with SIGTERM, and always
//! killed when dropped (also when a test fails). Plus a TCP proxy whose link can be cut.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a node gets to start, or a condition to come true.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// What a node wrote to stderr, line by line, with a signal for waiters.
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Log {
    /// Waits until a line contains `pattern`; false after `timeout`.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> bool {
        self.wait_for_count(pattern, 1, timeout)
    }

    /// Waits until `count` lines contain `pattern`; false after `timeout`.
    pub fn wait_for_count(&self, pattern: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if lines.iter().filter(|line| line.contains(pattern)).count() >= count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lines = self.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }
}

/// One `gundb node` process.
pub struct Node {
    pub name: String,
    child: Child,
    /// Where peers connect.
    pub peers: SocketAddr,
    /// Where the HTTP API listens.
    pub http: SocketAddr,
    pub data: PathBuf,
    pub log: Arc<Log>,
    agent: ureq::Agent,
}

/// How to start a node.
pub struct Start<'a> {
    pub name: &'a str,
    pub data: &'a Path,
    pub secret_file: &'a Path,
    /// `127.0.0.1:0` for a port chosen by the system.
    pub listen: SocketAddr,
    pub peers: &'a [SocketAddr],
}

impl Node {
    /// Starts a node and waits for its ready line.
    pub fn start(start: Start<'_>) -> Node {
        Self::start_with(start, &[])
    }

    /// Starts a node with `extra` arguments and waits for its ready line.
    pub fn start_with(start: Start<'_>, extra: &[&std::ffi::OsStr]) -> Node {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_gundb")), start, extra)
    }

    /// Starts a node allowed at most `files` open file descriptors (`ulimit -n`).
    pub fn start_limited(start: Start<'_>, files: u32) -> Node {
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(format!("ulimit -n {files} && exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_gundb"));
        Self::spawn(shell, start, &[])
    }

    fn spawn(mut command: Command, start: Start<'_>, extra: &[&std::ffi::OsStr]) -> Node {
        command
            .arg("node")
            .arg("--data")
            .arg(start.data)
            .arg("--listen")
            .arg(start.listen.to_string())
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--secret-file")
            .arg(start.secret_file)
            .args(["--hello-ms", "500"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for peer in start.peers {
            command.arg("--peer").arg(peer.to_string());
        }
        let mut child = command.spawn().expect("gundb node starts");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().unwrap();
        let to_log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                to_log.lines.lock().unwrap().push(line);
                to_log.grew.notify_all();
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (ready, on_ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = ready.send(line);
            }
            for _ in lines {} // keep the pipe drained
        });
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
        let mut node = Node {
            name: start.name.to_owned(),
            child,
            peers: start.listen,
            http: start.listen,
            data: start.data.to_owned(),
            log,
            agent,
        };
        let line = on_ready.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("node {} did not start", node.name));
        node.peers = field(&line, "peers=");
        node.http = field(&line, "http=");
        node
    }

    /// Appends a patch to `stream`: the answer's JSON on 201, the status code otherwise
    /// (0 when there was no answer at all).
    pub fn post(&self, stream: &str, body: &str) -> Result<Value, u16> {
        let url = format!("http://{}/streams/{stream}/events", self.http);
        match self.agent.post(&url).send_string(body) {
            Ok(response) if response.status() == 201 => Ok(response.into_json().unwrap()),
            Ok(response) => Err(response.status()),
            Err(ureq::Error::Status(code, _)) => Err(code),
            Err(_) => Err(0),
        }
    }

    /// GETs `path`: the status code and the body as JSON (null when it is not JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get_text(path);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// GETs `path`: the status code and the body.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.http);
        let response = match self.agent.get(&url).call() {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("node {}: GET {path}: {error}", self.name),
        };
        let status = response.status();
        let mut body = String::new();
        response.into_reader().take(64 << 20).read_to_string(&mut body).unwrap();
        (status, body)
    }

    /// The JSON of a GET that must succeed.
    pub fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "node {}: GET {path}: {body}", self.name);
        body
    }

    /// Sends `body` raw: the response's status code.
    pub fn post_raw(&self, path: &str, body: &[u8]) -> u16 {
        let url = format!("http://{}{path}", self.http);
        match self.agent.post(&url).send_bytes(body) {
            Ok(response) => response.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(error) => panic!("node {}: POST {path}: {error}", self.name),
        }
    }

    /// All events of `stream`, in canonical order, read in pages of `limit`.
    pub fn history(&self, stream: &str, limit: u32) -> Vec<Value> {
        let mut events = Vec::new();
        let mut path = format!("/streams/{stream}/events?limit={limit}");
        loop {
            let page = self.get_ok(&path);
            events.extend(page["events"].as_array().unwrap().iter().cloned());
            if !page["more"].as_bool().unwrap() {
                return events;
            }
            path = format!("/streams/{stream}/events?limit={limit}&after={}", page["next"].as_str().unwrap());
        }
    }

    /// The summary of the node's frontier from `/health`: its lanes, events and digest.
    pub fn frontier(&self) -> Value {
        let health = self.get_ok("/health");
        json!({ "lanes": health["lanes"], "events": health["events"], "digest": health["digest"] })
    }

    /// SIGKILL: the process dies at once, without any chance to clean up.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGSTOP: the process stops running (a long pause, a stalled VM) until resumed.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a paused process runs again.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(signal).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill {signal} {}", self.child.id());
    }

    /// SIGTERM, then waits for the process to stop on its own.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success(), "kill -TERM {}", self.child.id());
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node {} did not stop on SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- last log lines of node {} ---", self.name);
            for line in self.log.tail(40) {
                eprintln!("{line}");
            }
        }
    }
}

fn field(line: &str, name: &str) -> SocketAddr {
    let at = line.find(name).unwrap_or_else(|| panic!("{name} in {line:?}")) + name.len();
    line[at..].split_whitespace().next().unwrap().parse().unwrap()
}

/// Polls `condition` every 50 ms until it holds; panics with `what` after [`PATIENCE`].
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP proxy in front of `target` whose link can be cut (every connection through it
/// closed, new ones refused) and restored.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Connections carried since the start.
    pub connections: Arc<AtomicU64>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let (cut_, open_, connections_) = (Arc::clone(&cut), Arc::clone(&open), Arc::clone(&connections));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut_.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let Ok(server) = TcpStream::connect(target) else { continue };
                connections_.fetch_add(1, Ordering::SeqCst);
                let mut open = open_.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Proxy { addr, cut, open, connections }
    }

    /// Closes every connection through the proxy and refuses new ones until restored.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 64 << 10];
        while let Ok(n @ 1..) = from.read(&mut buffer) {
            if to.write_all(&buffer[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
