//! A minimal HTTP/1.1 client (keep-alive, Content-Length bodies) and a handle on a
//! `lambdaflow serve` process, for the service's integration tests and the bench.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the server closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"))
    }
}

/// `GET /v1/status`, which must answer 200, as JSON.
pub fn status(c: &mut Client) -> serde_json::Value {
    let r = c.get("/v1/status").expect("status");
    assert_eq!(r.status, 200, "status: {}", r.text());
    r.json()
}

/// One keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    pub token: Option<String>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, stream: None, token: None }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request("GET", path, &[], b"")
    }

    pub fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
        self.request("POST", path, headers, body)
    }

    /// Sends one request; reconnects once if a kept-alive connection was closed.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
        // (try_request forgets a failed connection, so remember whether this one was reused:
        // the server closes kept-alive connections that stay idle past its header timeout.)
        let reused = self.stream.is_some();
        match self.try_request(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.stream = None;
                self.try_request(method, path, headers, body)
            }
            Err(e) => Err(e),
        }
    }

    fn try_request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.stream = Some(BufReader::new(s));
        }
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.addr, body.len());
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if path.starts_with("/v1/events") && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            head.push_str("Content-Type: application/x-ndjson\r\n");
        }
        head.push_str("\r\n");
        let result = (|| {
            let r = self.stream.as_mut().expect("connected");
            let mut out = Vec::with_capacity(head.len() + body.len());
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(body);
            r.get_mut().write_all(&out)?;
            read_response(r)
        })();
        match &result {
            Ok(resp) if resp.closes() => self.stream = None,
            Err(_) => self.stream = None,
            _ => {}
        }
        result
    }
}

/// Reads one response from a client connection: a close before it is an error.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    read_raw_response(r, false)?.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"))
}

/// Reads one response (skipping interim `1xx` ones); `Ok(None)` when the server closed
/// first. `head`: the request was a HEAD, so there is no body. The body is framed by
/// chunked encoding, `Content-Length`, or the end of the connection.
pub fn read_raw_response(r: &mut impl BufRead, head: bool) -> std::io::Result<Option<Response>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let read_line = |r: &mut dyn BufRead| -> std::io::Result<Vec<u8>> {
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        Ok(line)
    };
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let status: u16 =
            text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(&format!("bad status line {text:?}")))?;
        let mut headers = Vec::new();
        loop {
            let l = read_line(r)?;
            if l.is_empty() {
                return Err(bad("eof in headers"));
            }
            let l = String::from_utf8_lossy(&l).trim_end().to_string();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut resp = Response { status, headers, body: Vec::new() };
        if head || status == 204 || status == 304 {
            return Ok(Some(resp));
        }
        if resp.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                let l = read_line(r)?;
                let n = usize::from_str_radix(String::from_utf8_lossy(&l).trim(), 16).map_err(|_| bad("bad chunk size"))?;
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                resp.body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = resp.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            resp.body.resize(n, 0);
            r.read_exact(&mut resp.body)?;
        } else {
            r.read_to_end(&mut resp.body)?;
        }
        return Ok(Some(resp));
    }
}

/// A `lambdaflow serve` child process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `lambdaflow --data DATA -w 2 serve --listen 127.0.0.1:0 EXTRA...` and waits
    /// until it listens.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lambdaflow"));
        cmd.arg("--data").arg(data).args(["-w", "2", "serve", "--listen", "127.0.0.1:0"]).args(extra);
        Server::spawn(cmd)
    }

    /// Starts `cmd` (a `lambdaflow ... serve` command line, perhaps wrapped) and waits until it
    /// prints the address it listens on.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn lambdaflow serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        if let Some(addr) = rest.split_whitespace().next().and_then(|a| a.parse::<SocketAddr>().ok()) {
                            let _ = tx.send(addr);
                        }
                    }
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                return Server { child, addr, log };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("lambdaflow serve exited with {status} before listening:\n{}", log.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "lambdaflow serve did not listen within 120 s:\n{}", log.lock().unwrap());
        }
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
