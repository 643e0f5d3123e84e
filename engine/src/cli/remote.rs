//! Commands that answer through a service holding the data directory, `ingest --server`,
//! and the small HTTP/1.1 client they use.

use super::*;

/// What to say to `ingest` when the directory is held: send the file to the service.
pub(super) fn ingest_advice(dir: &Path, file: &str) -> String {
    match read_holder(dir).and_then(|h| h.addr) {
        Some(addr) => format!("stop it first, or send the file to it: `ingest --server http://{addr} {file}`"),
        None => "try again when it has finished".into(),
    }
}

/// `ingest --server URL FILE`: validates all of FILE, then posts it in bodies of at most
/// `size` bytes with idempotency keys derived from the file's fingerprint, the size and the
/// body's index. A 413 halves the size and starts over (nothing was stored: the first body
/// is the largest); 429 and 503 are retried; a failure says how to resume.
pub(super) fn ingest_to_server<E: lambdaflow_operators::Event>(file: &str, url: &str, size: usize, remote: &RemoteArgs) -> Result<()> {
    if file == "-" {
        return Err(Error::Usage("ingest --server needs a FILE, not stdin: it reads it twice (to validate, then to send)".into()));
    }
    let addr = parse_server_url(url)?;
    let token = remote.token_file.as_deref().map(read_token).transpose()?;
    let path = PathBuf::from(file);
    let open = || std::fs::File::open(&path).map(|f| std::io::BufReader::with_capacity(1 << 20, f));
    let io_err = |source| Error::Io { path: path.clone(), what: "read".into(), source };
    let t = Instant::now();
    let events = crate::input::parse_each::<E>(&mut open().map_err(io_err)?, |_| Ok(()))?;
    let fp = crate::input::fingerprint(&mut open().map_err(io_err)?).map_err(io_err)?;
    let mut size = size.max(1024);
    'sizes: loop {
        let mut bodies = crate::input::Requests::new(open().map_err(io_err)?, size);
        let (mut sent, mut duplicates, mut index) = (0u64, 0u64, 0u64);
        while let Some(body) = bodies.next_body()? {
            let key = format!("ingest-{fp}-{size}-{index}");
            match post_body(addr, token.as_deref(), &key, &body.bytes)? {
                (200, v) => {
                    sent += v["accepted"].as_u64().unwrap_or(0);
                    duplicates += u64::from(v["duplicate"] == true);
                }
                (413, _) if index == 0 && size > 1024 => {
                    size /= 2;
                    eprintln!("the service refused {} requests (413): trying {}", format_bytes(2 * size as u64), format_bytes(size as u64));
                    continue 'sizes;
                }
                (401, _) => return Err(Error::Usage(format!("{url} requires a bearer token: pass --token-file FILE"))),
                (400, v) if v["line"].is_u64() => {
                    let line = v["line"].as_u64().unwrap_or(1) + body.first_line - 1 - u64::from(bodies_have_header(&body.bytes));
                    return Err(Error::Usage(format!("the service refused line {line} of {file}: {}", v["error"])));
                }
                (status, v) => {
                    return Err(Error::Unavailable(format!(
                        "request {index} (from line {}) got HTTP {status}: {}; {sent} events were stored; run the same command \
                         again to resume (requests already stored are not stored twice)",
                        body.first_line, v["error"]
                    )))
                }
            }
            index += 1;
            eprint!("\rsent {index} requests, {} events", thousands(sent));
        }
        eprintln!(
            "\ringested {} events of {file} into {url} in {index} requests of up to {} ({:.2}s){}",
            thousands(events),
            format_bytes(size as u64),
            t.elapsed().as_secs_f64(),
            if duplicates > 0 { format!("; {duplicates} requests were already stored by an earlier run") } else { String::new() }
        );
        return Ok(());
    }
}

/// Whether a request body starts with a CSV header (its first line is not a JSON object).
pub(super) fn bodies_have_header(body: &[u8]) -> bool {
    !body.trim_ascii_start().starts_with(b"{")
}

/// Posts one body, retrying while the service says it is busy (429, 503) or the connection
/// fails, for up to two minutes.
pub(super) fn post_body(addr: std::net::SocketAddr, token: Option<&str>, key: &str, body: &[u8]) -> Result<(u16, serde_json::Value)> {
    let headers = [("Content-Type", "application/x-ndjson"), ("Idempotency-Key", key)];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pause = Duration::from_millis(100);
    loop {
        let outcome = http_request(addr, "POST", "/v1/events", token, &headers, body);
        let retry = match &outcome {
            Ok((429 | 503, _)) => true,
            Ok(_) => false,
            Err(_) => true,
        };
        if !retry || Instant::now() >= deadline {
            let (status, bytes) = outcome
                .map_err(|e| Error::Unavailable(format!("posting to http://{addr} failed: {e}; run the same command again to resume")))?;
            let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes) }));
            return Ok((status, v));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// How a command reaches the data: it holds the directory itself, or a service holding it
/// answers for it.
pub(super) enum Access {
    Local(DirLock),
    Remote(Service),
}

/// Takes the data directory's lock, or, when a service (`serve`, `cluster`, `demo`) holds it,
/// the way to ask that service instead. Anything else holding it is waited for at most `wait`.
pub(super) fn access(dir: &Path, command: &str, wait: Duration, remote: &RemoteArgs) -> Result<Access> {
    let busy = match DirLock::try_acquire(dir, command, wait, true)? {
        Ok(lock) => return Ok(Access::Local(lock)),
        Err(busy) => busy,
    };
    match busy.holder {
        Some(holder) if holder.addr.is_some() => Ok(Access::Remote(Service::new(holder, remote)?)),
        _ => Err(busy_error(dir, &busy, wait, "try again when it has finished")),
    }
}

/// The most answers the service returns for one request (its `limit` bound).
pub(super) const REMOTE_LIMIT_MAX: usize = 100_000;

/// A service that holds the data directory, asked over HTTP on the address it recorded.
pub(super) struct Service {
    pub(super) holder: Holder,
    pub(super) addr: std::net::SocketAddr,
    pub(super) token: Option<String>,
}

impl Service {
    pub(super) fn new(holder: Holder, remote: &RemoteArgs) -> Result<Service> {
        let addr = holder.addr.ok_or_else(|| Error::Internal("a service without an address".into()))?;
        let token = remote.token_file.as_deref().map(read_token).transpose()?;
        eprintln!("(answered by {}, which holds the data directory)", holder.describe());
        Ok(Service { holder, addr, token })
    }

    /// One request; the body parsed as JSON. Errors name the service and what to do.
    pub(super) fn call(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, serde_json::Value)> {
        let who = self.holder.describe();
        let (status, body) = http_request(self.addr, method, path, self.token.as_deref(), &[], body)
            .map_err(|e| Error::Unavailable(format!("{who} holds the data directory, but asking it failed: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&body) }));
        if status == 401 {
            let hint = if self.token.is_some() {
                "the token in --token-file is not the service's"
            } else {
                "pass --token-file FILE (the file given to `serve --token-file`)"
            };
            return Err(Error::Usage(format!("{who} requires a bearer token: {hint}")));
        }
        Ok((status, v))
    }

    /// A GET that must succeed.
    pub(super) fn get(&self, path: &str) -> Result<serde_json::Value> {
        match self.call("GET", path, b"")? {
            (200, v) => Ok(v),
            (status, v) => Err(remote_error(status, &v)),
        }
    }

    pub(super) fn query(
        &self,
        view: &str,
        key: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        limit: usize,
    ) -> Result<serde_json::Value> {
        let path = match key {
            Some(k) => format!("/v1/views/{}/{}", url_encode(view), url_encode(k).replace("%2F", "/")),
            None => {
                let mut p = format!("/v1/views/{}?limit={limit}", url_encode(view));
                if let Some(f) = from {
                    p += &format!("&from={}", url_encode(f));
                }
                if let Some(t) = to {
                    p += &format!("&to={}", url_encode(t));
                }
                p
            }
        };
        match self.call("GET", &path, b"")? {
            (200, v) => Ok(v),
            // A key with no events yet: no answer, with the freshness it was asked at.
            (404, v) if key.is_some() && v.get("freshness").is_some() => {
                Ok(serde_json::json!({ "view": view, "freshness": v["freshness"] }))
            }
            (status, v) => Err(remote_error(status, &v)),
        }
    }

    /// The views, each with an `example` answer (its first key's), if it has any.
    pub(super) fn views(&self) -> Result<Vec<serde_json::Value>> {
        let v = self.get("/v1/views")?;
        let mut views = v["views"].as_array().cloned().unwrap_or_default();
        for v in &mut views {
            let name = plain(&v["name"]);
            let first = self.get(&format!("/v1/views/{}?limit=1", url_encode(&name)))?;
            v["example"] = first["items"].get(0).cloned().unwrap_or_default();
        }
        Ok(views)
    }

    /// Asks the service for a batch run and waits until it has published one.
    pub(super) fn batch(&self) -> Result<()> {
        let version = |s: &serde_json::Value| s["batch"]["version"].as_u64().unwrap_or(0);
        let failed = |s: &serde_json::Value| s["batch_run"]["failed"].as_u64().unwrap_or(0);
        let before = self.get("/v1/status")?;
        match self.call("POST", "/v1/batch", b"")? {
            (202, _) => {}
            (status, v) => return Err(remote_error(status, &v)),
        }
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.get("/v1/status")?;
            if failed(&now) > failed(&before) {
                let why = now["batch_run"]["last"].to_string();
                return Err(Error::Unavailable(format!("the service's batch run failed: {why}")));
            }
            if version(&now) > version(&before) {
                let b = &now["batch"];
                eprintln!("batch v{} published by the service: {} events at cut {}", version(&now), b["events"], b["cut"]);
                return Ok(());
            }
        }
    }
}

pub(super) fn remote_error(status: u16, v: &serde_json::Value) -> Error {
    let msg = v["error"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let msg = format!("the service answered HTTP {status}: {msg}");
    match status {
        400 | 404 | 422 => Error::Usage(msg),
        _ => Error::Unavailable(msg),
    }
}

/// Percent-encodes everything but unreserved characters.
pub(super) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

/// A minimal HTTP/1.1 POST of NDJSON with an idempotency key; returns the status code.
pub(super) fn http_post(addr: std::net::SocketAddr, path: &str, key: &str, body: &[u8]) -> std::io::Result<u16> {
    let headers = [("Content-Type", "application/x-ndjson"), ("Idempotency-Key", key)];
    Ok(http_request(addr, "POST", path, None, &headers, body)?.0)
}

/// A minimal HTTP/1.1 client for a lambdaflow service on loopback: one request on its own
/// connection; returns the status code and the body.
pub(super) fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let malformed = || std::io::Error::other("malformed HTTP response");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(malformed)?;
    let mut body = response[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(malformed)?;
    }
    Ok((status, body))
}

/// Decodes a chunked transfer-encoded body.
pub(super) fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&data[..line_end]).ok()?.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}
