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

/// `ingest --server URL FILE`: validates all of FILE, asks the service for its body limit,
/// then posts FILE in bodies of at most [`request_size`] bytes, cut at line boundaries by
/// size alone, each with an idempotency key derived from the file's fingerprint, the body's
/// first line and the body's content. Nothing is sent when a line cannot fit a request; 429
/// and 503 are retried; a failure says when a re-run is safe.
pub(super) fn ingest_to_server<E: lambdaflow_operators::Event>(file: &str, url: &str, size: usize, remote: &RemoteArgs) -> Result<()> {
    if file == "-" {
        return Err(Error::Usage("ingest --server needs a FILE, not stdin: it reads it twice (to validate, then to send)".into()));
    }
    let mut client = IngestClient { url, addrs: parse_server_url(url)?, token: remote.token_file.as_deref().map(read_token).transpose()? };
    let path = PathBuf::from(file);
    if crate::input::InputFormat::from_path(&path) == Some(crate::input::InputFormat::Csv) {
        crate::input::refuse_csv::<E>(file, Some(lambdaflow_operators::Format::Csv))?;
    }
    let open = || std::fs::File::open(&path).map(|f| std::io::BufReader::with_capacity(1 << 20, f));
    let io_err = |source| Error::Io { path: path.clone(), what: "read".into(), source };
    let t = Instant::now();
    if crate::input::InputFormat::from_path(&path) != Some(crate::input::InputFormat::Parquet) {
        super::commands::refuse_csv_by_first_line::<E>(file, &mut open().map_err(io_err)?)?;
    }
    let events = crate::input::parse_each::<E>(&mut open().map_err(io_err)?, |_| Ok(()))?;
    let scan = crate::input::scan(&mut open().map_err(io_err)?).map_err(io_err)?;
    let asked = size;
    let limit = client.max_body()?;
    let mut size = request_size(asked, limit);
    if scan.min_request() > size {
        let (line, bytes) = scan.longest;
        let header = if scan.header_bytes > 0 { format!(" (with the CSV header, {})", scan.min_request()) } else { String::new() };
        let advice = match limit {
            Some(l) if request_size(usize::MAX, Some(l)) < scan.min_request() => {
                format!("the service accepts requests of at most {}: start it with a larger --max-body", format_bytes(l as u64))
            }
            _ => format!("pass --request-size {} or more", flag_bytes(scan.min_request().next_multiple_of(1024))),
        };
        return Err(Error::Usage(format!(
            "line {line} of {file} is {bytes} bytes{header}, more than a request of {} may hold; nothing was sent: {advice}",
            format_bytes(size as u64)
        )));
    }
    if size < asked.max(1024) {
        eprintln!(
            "the service accepts requests of at most {}: sending requests of up to {} (pass --request-size {} to keep this size if \
             the service's --max-body changes)",
            format_bytes(limit.unwrap_or(0) as u64),
            format_bytes(size as u64),
            flag_bytes(size)
        );
    }
    let mut bodies = crate::input::Requests::new(open().map_err(io_err)?, size);
    let (mut sent, mut duplicates, mut requests) = (0u64, 0u64, 0u64);
    // Set when the service's limit dropped during the run and the rest was cut smaller.
    let mut resized = false;
    let resume = |size: usize, resized: bool| {
        if resized {
            "the service's --max-body dropped during this run, so a re-run would cut the file differently and store the events \
             already sent again: send only the rest, or restore the service's --max-body"
                .to_string()
        } else {
            format!(
                "re-running the same command within 24 h (the service's key retention) resumes it without storing anything twice, \
                 if {file} is unchanged and requests are again cut at {} (the same --request-size{})",
                format_bytes(size as u64),
                if size < asked.max(1024) { ", and the same --max-body of the service" } else { "" }
            )
        }
    };
    while let Some(body) = bodies.next_body()? {
        let key = format!("ingest-{}-{}-{:016x}", scan.fingerprint, body.first_line, crate::keys::body_hash(&body.bytes));
        let (status, v) = match client.post(&key, &body.bytes) {
            Ok(answer) => answer,
            // The connection broke while sending: a service whose limit dropped below this
            // body closes it without reading the body.
            Err(e) => match client.max_body() {
                Ok(Some(l)) if l < body.bytes.len() => (413, serde_json::Value::Null),
                _ => {
                    return Err(Error::Unavailable(format!(
                        "request {requests} (from line {}): {e}; {sent} events were stored; {}",
                        body.first_line,
                        resume(size, resized)
                    )))
                }
            },
        };
        match (status, v) {
            (200, v) => {
                sent += v["accepted"].as_u64().unwrap_or(0);
                duplicates += u64::from(v["duplicate"] == true);
            }
            (413, _) => {
                // The service's limit dropped since it was asked (a restart): the rest, from
                // this body's first line, in requests that fit (this one stored nothing).
                let smaller = request_size(asked, client.max_body()?);
                if smaller >= body.bytes.len() || smaller < scan.min_request() {
                    return Err(Error::Unavailable(format!(
                        "request {requests} (from line {}, {}) was refused as too large (413) by a service that accepts {}; \
                         {sent} events were stored; {}",
                        body.first_line,
                        format_bytes(body.bytes.len() as u64),
                        format_bytes(smaller as u64),
                        resume(size, resized)
                    )));
                }
                eprintln!(
                    "\rthe service now accepts less than {} (413): sending the rest, from line {}, in requests of up to {}",
                    format_bytes(body.bytes.len() as u64),
                    body.first_line,
                    format_bytes(smaller as u64)
                );
                size = smaller;
                resized = true;
                bodies = crate::input::Requests::from_line(open().map_err(io_err)?, size, body.first_line);
                continue;
            }
            (401, _) => return Err(Error::Usage(format!("{url} requires a bearer token: pass --token-file FILE"))),
            (400, v) if v["line"].is_u64() => {
                let line = body.input_line(v["line"].as_u64().unwrap_or(1));
                return Err(Error::Usage(format!(
                    "the service refused line {line} of {file}: {}; {sent} events of earlier requests were stored",
                    v["error"]
                )));
            }
            (status, v) => {
                return Err(Error::Unavailable(format!(
                    "request {requests} (from line {}) got HTTP {status}: {}; {sent} events were stored; {}",
                    body.first_line,
                    v["error"],
                    resume(size, resized)
                )))
            }
        }
        requests += 1;
        eprint!("\rsent {requests} requests, {} events", thousands(sent));
    }
    eprintln!(
        "\ringested {} events of {file} into {url} in {requests} requests of up to {} ({:.2}s){}",
        thousands(events),
        format_bytes(size as u64),
        t.elapsed().as_secs_f64(),
        if duplicates > 0 { format!("; {duplicates} requests were already stored by an earlier run") } else { String::new() }
    );
    Ok(())
}

/// The request size `ingest --server` cuts at: `--request-size` (at least 1 KiB), or, when
/// the service's limit is smaller, that limit rounded down to a power of two (so a small
/// change of the service's --max-body keeps the same cuts).
pub(super) fn request_size(asked: usize, limit: Option<usize>) -> usize {
    let cap = limit.map_or(usize::MAX, |l| if l == 0 { 1024 } else { 1 << (usize::BITS - 1 - l.leading_zeros()) });
    asked.max(1024).min(cap)
}

/// A size as a flag takes it: `64KiB`, `4MiB`, or bytes.
fn flag_bytes(n: usize) -> String {
    match n {
        n if n > 0 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n > 0 && n % 1024 == 0 => format!("{}KiB", n >> 10),
        n => n.to_string(),
    }
}

/// `ingest --server`'s way to the service: every address the URL resolves to, tried in turn.
struct IngestClient<'a> {
    url: &'a str,
    addrs: Vec<std::net::SocketAddr>,
    token: Option<String>,
}

impl IngestClient<'_> {
    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::result::Result<(u16, serde_json::Value), HttpError> {
        let (i, status, bytes) = exchange(&self.addrs, method, path, self.token.as_deref(), headers, body)?;
        // The address that answered goes first: the others are not tried again each time.
        self.addrs[..=i].rotate_right(1);
        let v = serde_json::from_slice(&bytes).unwrap_or_else(|_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes) }));
        Ok((status, v))
    }

    /// The service's largest request body (`None` from a service that does not say). Fails at
    /// once when nothing answers at any address.
    fn max_body(&mut self) -> Result<Option<usize>> {
        let url = self.url;
        match self.request("GET", "/v1/status", &[], b"") {
            Ok((200, v)) => Ok(v["max_body_bytes"].as_u64().map(|n| n as usize)),
            Ok((401, _)) => Err(Error::Usage(format!(
                "{url} requires a bearer token: pass --token-file FILE{}",
                if self.token.is_some() { " (the token given is not the service's)" } else { "" }
            ))),
            Ok((status, v)) => Err(remote_error(status, &v)),
            Err(e @ HttpError::Connect(_)) => {
                Err(Error::Unavailable(format!("nothing answers at {url}: {e}; is the service running, and listening there?")))
            }
            Err(e) => Err(Error::Unavailable(format!("asking {url} for its status failed: {e}"))),
        }
    }

    /// Posts one body, retrying while the service says it is busy (429, 503) or cannot be
    /// reached, for up to two minutes; a connection that breaks after the request was
    /// started is retried twice.
    fn post(&mut self, key: &str, body: &[u8]) -> std::result::Result<(u16, serde_json::Value), HttpError> {
        let headers = [("Content-Type", "application/x-ndjson"), ("Idempotency-Key", key)];
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut pause = Duration::from_millis(100);
        let mut broken = 0;
        loop {
            let outcome = self.request("POST", "/v1/events", &headers, body);
            let more_time = Instant::now() < deadline;
            match outcome {
                Ok((429 | 503, _)) if more_time => {}
                Err(HttpError::Connect(_)) if more_time => {}
                Err(HttpError::Exchange(..)) if more_time && broken < 2 => broken += 1,
                other => return other,
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
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

    /// One key's answer (`{"view","freshness"}` only, when it has none yet).
    pub(super) fn point(&self, view: &str, key: &str) -> Result<serde_json::Value> {
        let path = format!("/v1/views/{}/{}", url_encode(view), url_encode(key).replace("%2F", "/"));
        match self.call("GET", &path, b"")? {
            (200, v) => Ok(v),
            // A key with no events yet: no answer, with the freshness it was asked at.
            (404, v) if v.get("freshness").is_some() => Ok(serde_json::json!({ "view": view, "freshness": v["freshness"] })),
            // The key is in error (its records did not merge to one value): the answer's error.
            (500, v) if v.get("key").is_some() && v.get("freshness").is_some() => Ok(serde_json::json!({
                "view": view, "key": v["key"], "value": null, "error": v["error"], "freshness": v["freshness"]
            })),
            (status, v) => Err(remote_error(status, &v)),
        }
    }

    /// Up to `limit` answers of a range (`{"view","items","freshness"}`), following the
    /// service's cursor (`next`) while it says there are `more`; and whether there are more
    /// than were returned. The freshness is the first page's: every answer is at least as
    /// fresh.
    pub(super) fn range(&self, view: &str, from: Option<&str>, to: Option<&str>, limit: usize) -> Result<(serde_json::Value, bool)> {
        let mut items: Vec<serde_json::Value> = Vec::new();
        let mut freshness = serde_json::Value::Null;
        let mut after: Option<String> = None;
        loop {
            let ask = (limit - items.len()).clamp(1, REMOTE_LIMIT_MAX);
            let mut p = format!("/v1/views/{}?limit={ask}", url_encode(view));
            match (&after, from) {
                (Some(a), _) => p += &format!("&after={}", url_encode(a)),
                (None, Some(f)) => p += &format!("&from={}", url_encode(f)),
                (None, None) => {}
            }
            if let Some(t) = to {
                p += &format!("&to={}", url_encode(t));
            }
            let mut page = self.get(&p)?;
            if freshness.is_null() {
                freshness = page["freshness"].take();
            }
            if let Some(got) = page["items"].as_array_mut() {
                items.append(got);
            }
            let next = page["next"].as_str().map(str::to_string);
            let more = page["more"] == true && next.is_some();
            if !more || items.len() >= limit {
                return Ok((serde_json::json!({ "view": view, "items": items, "freshness": freshness }), more));
            }
            after = next;
        }
    }

    /// A view's whole answer (`{"view","items","freshness"}`), page by page, and each page's
    /// freshness (for `export --merged`, which checks that they agree).
    pub(super) fn range_pages(&self, view: &str) -> Result<(serde_json::Value, Vec<serde_json::Value>)> {
        let mut items: Vec<serde_json::Value> = Vec::new();
        let mut pages: Vec<serde_json::Value> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut p = format!("/v1/views/{}?limit={REMOTE_LIMIT_MAX}", url_encode(view));
            if let Some(a) = &after {
                p += &format!("&after={}", url_encode(a));
            }
            let mut page = self.get(&p)?;
            pages.push(page["freshness"].take());
            if let Some(got) = page["items"].as_array_mut() {
                items.append(got);
            }
            match page["next"].as_str() {
                Some(next) if page["more"] == true => after = Some(next.to_string()),
                _ => return Ok((serde_json::json!({ "view": view, "items": items, "freshness": pages[0].clone() }), pages)),
            }
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

    /// Asks the service for a batch run and waits, at most `timeout`, for a run that started
    /// after the request (not one already in progress) to end.
    pub(super) fn batch(&self, timeout: Duration) -> Result<()> {
        let asked_ms = crate::clock::now_ms();
        let deadline = Instant::now() + timeout;
        match self.call("POST", "/v1/batch", b"")? {
            (202, v) if v["running"] == true => {
                eprintln!("a batch run is in progress: waiting for the next one, which covers this request")
            }
            (202, _) => {}
            (status, v) => return Err(remote_error(status, &v)),
        }
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.get("/v1/status")?;
            // The service and this command share the machine (and its clock): they share the
            // data directory.
            let last = &now["batch_run"]["last"];
            if last["started_ms"].as_u64().is_some_and(|s| s >= asked_ms) {
                if last["ok"] != true {
                    return Err(Error::Unavailable(format!("the service's batch run failed: {}", plain(&last["error"]))));
                }
                eprintln!("batch v{} published by the service: {} events at cut {}", last["version"], last["events"], last["cut"]);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "the service did not finish a batch run within {} (--timeout); it may still run one: see `status`",
                    format_duration(timeout)
                )));
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

/// Why an HTTP exchange failed.
#[derive(Debug)]
pub(super) enum HttpError {
    /// No address took the connection (each with its error): nothing was sent.
    Connect(Vec<(std::net::SocketAddr, std::io::Error)>),
    /// Connected, but sending the request or reading the answer failed: the service may
    /// have acted on it.
    Exchange(std::net::SocketAddr, std::io::Error),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(tried) => {
                let each: Vec<String> = tried.iter().map(|(a, e)| format!("{a}: {e}")).collect();
                write!(f, "could not connect ({})", each.join("; "))
            }
            HttpError::Exchange(a, e) => write!(f, "the connection to {a} failed during the request: {e}"),
        }
    }
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
    match exchange(&[addr], method, path, token, headers, body) {
        Ok((_, status, body)) => Ok((status, body)),
        Err(HttpError::Connect(mut tried)) => Err(tried.pop().map(|(_, e)| e).unwrap_or_else(|| std::io::Error::other("no address"))),
        Err(HttpError::Exchange(_, e)) => Err(e),
    }
}

/// One request on its own connection to the first of `addrs` that takes it; returns that
/// address's index, the status code and the body. A service that answers before reading the
/// whole body (a 413 from Content-Length) and closes is heard: its answer is read even when
/// sending the body failed.
pub(super) fn exchange(
    addrs: &[std::net::SocketAddr],
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::result::Result<(usize, u16, Vec<u8>), HttpError> {
    let mut tried = Vec::new();
    let (i, mut stream) = addrs
        .iter()
        .enumerate()
        .find_map(|(i, a)| match std::net::TcpStream::connect_timeout(a, Duration::from_secs(5)) {
            Ok(s) => Some((i, s)),
            Err(e) => {
                tried.push((*a, e));
                None
            }
        })
        .ok_or(HttpError::Connect(tried))?;
    let addr = addrs[i];
    let failed = |e| HttpError::Exchange(addr, e);
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(failed)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes()).map_err(failed)?;
    if let Err(e) = stream.write_all(body) {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        return read_response(&mut stream).map(|(status, body)| (i, status, body)).map_err(|_| failed(e));
    }
    read_response(&mut stream).map(|(status, body)| (i, status, body)).map_err(failed)
}

/// Reads a response to its end: the status code and the (de-chunked) body.
fn read_response(stream: &mut std::net::TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::Read;
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

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every resolved address is tried in turn (a service on 127.0.0.1 is reached when
    // `localhost` resolves to ::1 first), and when none takes the connection every address is
    // named and nothing is retried.
    #[test]
    fn every_address_is_tried() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let live = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = live.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            use std::io::Read;
            let (mut s, _) = live.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").expect("write");
        });
        let (i, status, body) = exchange(&[dead, addr], "GET", "/v1/status", None, &[], b"").expect("the second address answers");
        assert_eq!((i, status, body.as_slice()), (1, 200, &b"{}"[..]));
        server.join().expect("server");
        match exchange(&[dead, dead], "GET", "/", None, &[], b"") {
            Err(e @ HttpError::Connect(_)) => assert_eq!(e.to_string().matches(&dead.to_string()).count(), 2, "{e}"),
            other => panic!("{other:?}"),
        }
    }

    // Proves a service that answers 413 from Content-Length and closes without reading the
    // body is heard, rather than taken for a broken connection.
    #[test]
    fn an_answer_before_the_body_is_read_is_heard() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            use std::io::Read;
            let (mut s, _) = l.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).expect("read") == 1 {
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 15\r\n\r\n{\"error\":\"big\"}").expect("write");
            let _ = s.shutdown(std::net::Shutdown::Write);
            std::thread::sleep(Duration::from_millis(200));
        });
        let body = vec![b'x'; 64 << 20];
        let (_, status, _) = exchange(&[addr], "POST", "/v1/events", None, &[], &body).expect("the 413 is read");
        assert_eq!(status, 413);
        server.join().expect("server");
    }

    // Proves the request size is --request-size unless the service's limit is smaller, and then
    // that limit rounded down to a power of two.
    #[test]
    fn request_sizes() {
        assert_eq!(request_size(4 << 20, Some(16 << 20)), 4 << 20);
        assert_eq!(request_size(4 << 20, Some(100 << 10)), 64 << 10);
        assert_eq!(request_size(4 << 20, Some(64 << 10)), 64 << 10);
        assert_eq!(request_size(4 << 20, None), 4 << 20);
        assert_eq!(request_size(10, None), 1024);
        assert_eq!(flag_bytes(64 << 10), "64KiB");
    }
}
