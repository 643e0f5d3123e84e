//! Cluster mode: a job's dataflows across worker processes, over timely dataflow's own
//! cluster communication (one TCP connection between every two processes; records are
//! exchanged by key by the dataflow itself).
//!
//! A run on `N` processes of `W` threads each has `N × W` workers; worker `i` lives in
//! process `i / W`. Partition `p` of the master dataset is read by worker `p % (N × W)`,
//! wherever it lives. The log is on storage every process can read (one machine, or a
//! shared file system); only the serving process writes it, and the others follow it
//! read-only ([`crate::log::Log::open_follower`]). Output is gathered to worker 0: in a
//! batch run process 0 writes and publishes the version; in the speed layer process 0 is
//! the serving process and holds the speed tables.
//!
//! [`Peers`] is one process's view of a cluster (what `lambdaflow worker --processes N
//! --process I --hostfile F -w W` takes). [`LocalCluster`] starts the other processes of a
//! cluster on loopback, as children of this one, and watches them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{DataflowError, Error, Result};

/// How long the processes of a cluster have to connect to each other by default.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// The byte a process answers a peer's handshake with.
const ACK: u8 = 0xA5;

/// Lines a worker process prints on stdout for the process that started it.
pub(crate) mod protocol {
    /// The cluster has formed (every peer connected): `lambdaflow-worker formed`.
    pub(crate) const FORMED: &str = "lambdaflow-worker formed";
    /// Events this process has read so far: `lambdaflow-worker progress N`.
    pub(crate) const PROGRESS: &str = "lambdaflow-worker progress ";
    /// Process 0 of a batch run published version V: `lambdaflow-worker published V`.
    pub(crate) const PUBLISHED: &str = "lambdaflow-worker published ";
}

/// One process's place in a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peers {
    /// Processes in the cluster.
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// `host:port` of every process, in process order (empty for a single process).
    pub addresses: Vec<String>,
    /// Worker threads per process (the same in every process).
    pub threads: usize,
}

impl Peers {
    /// A single process with `threads` workers.
    pub fn single(threads: usize) -> Peers {
        Peers { processes: 1, process: 0, addresses: Vec::new(), threads: threads.max(1) }
    }

    /// Process `process` of a cluster whose addresses are listed in `hostfile`.
    pub fn from_hostfile(hostfile: &Path, processes: usize, process: usize, threads: usize) -> Result<Peers> {
        let addresses = read_hostfile(hostfile)?;
        Peers::new(addresses, processes, process, threads).map_err(|e| Error::Usage(format!("{}: {e}", hostfile.display())))
    }

    /// Checks and builds a cluster description.
    pub fn new(addresses: Vec<String>, processes: usize, process: usize, threads: usize) -> std::result::Result<Peers, String> {
        if processes == 0 {
            return Err("--processes must be at least 1".into());
        }
        if process >= processes {
            return Err(format!("--process {process} is out of range: there are {processes} processes (0..{})", processes - 1));
        }
        if threads == 0 {
            return Err("-w must be at least 1".into());
        }
        if processes > 1 && addresses.len() < processes {
            return Err(format!("the hostfile lists {} address(es), but --processes is {processes}", addresses.len()));
        }
        let addresses = if processes > 1 { addresses.into_iter().take(processes).collect() } else { Vec::new() };
        Ok(Peers { processes, process, addresses, threads })
    }

    /// Identifies this cluster in the connection handshake (the same for every process of
    /// it, different for another cluster's processes): a hash of the addresses and sizes.
    pub fn token(&self) -> u64 {
        let text = format!("lambdaflow/{}x{}/{}", self.processes, self.threads, self.addresses.join(","));
        (u64::from(crc32c::crc32c(text.as_bytes())) << 32) | u64::from(crc32c::crc32c_append(0x9e37_79b9, text.as_bytes()))
    }

    /// Workers in the whole cluster.
    pub fn workers(&self) -> usize {
        self.processes * self.threads
    }

    /// The process worker `index` lives in.
    pub fn process_of(&self, index: usize) -> usize {
        index / self.threads
    }

    /// `ends` with zeros for the partitions no worker of this process reads (partition `p`
    /// is read by worker `p % workers`): what a follower in this process needs to follow.
    pub fn own_ends(&self, ends: &[u64]) -> Vec<u64> {
        ends.iter().enumerate().map(|(p, e)| if self.process_of(p % self.workers()) == self.process { *e } else { 0 }).collect()
    }

    /// Whether the run spans processes (and output must be gathered to worker 0).
    pub fn spans_processes(&self) -> bool {
        self.processes > 1
    }
}

/// Whether process `pid` is running (where that cannot be known, it is assumed to be: a
/// pending version is never removed on a guess).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes the hostfiles of `cluster_dir` whose writing process is gone (killed before its
/// clusters' drops could remove them). A live process's hostfiles are never touched.
fn remove_stale_hostfiles(cluster_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cluster_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // `{name}-{pid}-{n}.hosts`
        let pid = name.strip_suffix(".hosts").and_then(|stem| stem.rsplit('-').nth(1)).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// What a process of a run is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Role {
    /// A batch run: process 0 publishes the version.
    Batch,
    /// The speed layer: process 0 is the serving process.
    Speed,
}

/// Log offsets per partition, written `10,12,9,11`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cut(pub(crate) Vec<u64>);

impl std::str::FromStr for Cut {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Cut, String> {
        s.split(',')
            .map(|v| v.trim().parse::<u64>().map_err(|_| format!("`{v}` is not an offset (expected e.g. 10,12,9,11)")))
            .collect::<std::result::Result<Vec<u64>, String>>()
            .map(Cut)
    }
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// The arguments of one `worker` process. The process that starts workers writes them
/// ([`WorkerArgs::to_args`]) and the `worker` command parses them through this same type,
/// so the two sides cannot drift apart.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub(crate) struct WorkerArgs {
    /// What this run is.
    #[arg(long, value_enum)]
    pub(crate) role: Role,
    /// Processes in the cluster.
    #[arg(long)]
    pub(crate) processes: usize,
    /// This process's index, 0..processes.
    #[arg(long)]
    pub(crate) process: usize,
    /// One host:port per line, in process order.
    #[arg(long)]
    pub(crate) hostfile: PathBuf,
    /// Log offsets per partition the run starts from (batch: covers up to; speed: starts at), e.g. 10,12,9,11.
    #[arg(long)]
    pub(crate) cut: Cut,
    /// Speed: the batch version whose seeds it starts from (none: from offset 0).
    #[arg(long)]
    pub(crate) batch_version: Option<u64>,
    /// How long to wait for every peer to connect (e.g. 30s, 2m).
    #[arg(long = "peer-timeout", alias = "peer-timeout-secs", value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_positive_duration)]
    pub(crate) peer_timeout: Duration,
    /// Exit when stdin closes (set by the process that starts local workers).
    #[arg(long, hide = true)]
    pub(crate) exit_with_parent: bool,
}

impl WorkerArgs {
    /// A run's arguments for every process; [`LocalCluster::start`] fills in the process,
    /// the process count and the hostfile.
    pub(crate) fn of_run(role: Role, cut: &[u64], batch_version: Option<u64>, peer_timeout: Duration) -> WorkerArgs {
        WorkerArgs {
            role,
            processes: 1,
            process: 0,
            hostfile: PathBuf::new(),
            cut: Cut(cut.to_vec()),
            batch_version,
            peer_timeout,
            exit_with_parent: false,
        }
    }

    /// The command line (after `worker`) that parses back into `self`.
    pub(crate) fn to_args(&self) -> Vec<std::ffi::OsString> {
        let role = match self.role {
            Role::Batch => "batch",
            Role::Speed => "speed",
        };
        let mut out: Vec<std::ffi::OsString> = vec!["--role".into(), role.into()];
        out.extend(["--processes".into(), self.processes.to_string().into(), "--process".into(), self.process.to_string().into()]);
        out.extend(["--hostfile".into(), self.hostfile.clone().into_os_string()]);
        out.extend(["--cut".into(), self.cut.to_string().into()]);
        if let Some(v) = self.batch_version {
            out.extend(["--batch-version".into(), v.to_string().into()]);
        }
        out.extend(["--peer-timeout".into(), format!("{}ms", self.peer_timeout.as_millis().max(1)).into()]);
        if self.exit_with_parent {
            out.push("--exit-with-parent".into());
        }
        out
    }
}

/// Reads a hostfile: one `host:port` per line, in process order; blank lines and lines
/// starting with `#` are skipped. A line that is not `host:port` is an error naming it.
pub(crate) fn read_hostfile(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), what: "read hostfile".into(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let port_ok = line.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(Error::Usage(format!("{} line {}: `{line}` is not host:port", path.display(), i + 1)));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// `n` loopback addresses with ports free right now (the kernel picks them).
pub(crate) fn free_loopback_addresses(n: usize) -> Result<Vec<String>> {
    // Hold every listener until all are chosen, so no port is picked twice.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|source| Error::Io { path: PathBuf::from("127.0.0.1:0"), what: "pick a free port".into(), source })?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.to_string())).collect::<std::io::Result<_>>().map_err(|source| Error::Io {
        path: PathBuf::from("127.0.0.1:0"),
        what: "pick a free port".into(),
        source,
    })
}

/// What a child worker process reported.
#[derive(Debug)]
pub(crate) enum Report {
    /// A protocol line from process `.0`.
    Line(usize, String),
    /// Process `.0` closed its stdout (it is exiting).
    Closed(usize),
}

/// The worker processes of a cluster started on loopback as children of this process.
/// Dropping it kills and reaps every child still running.
pub(crate) struct LocalCluster {
    children: Vec<(usize, Child)>,
    /// The children's stdin: they exit when it closes (this process is gone).
    lifelines: Vec<std::process::ChildStdin>,
    /// The hostfile the processes were started with.
    pub hostfile: PathBuf,
    /// This process's place, when it is process 0 of the cluster itself.
    pub peers: Peers,
    reports: mpsc::Receiver<Report>,
    what: String,
}

impl LocalCluster {
    /// Starts processes `first..processes` of a `processes`-process cluster on loopback:
    /// `exe --data DIR -w THREADS worker ARGS`, the `run`'s arguments with each process's
    /// index, the process count and the hostfile filled in.
    /// The hostfile is written to `dir/cluster/NAME.hosts`. `first` is 1 when this process
    /// is process 0 itself (the speed layer), 0 when every process is a child (a batch run).
    /// Their stdout is read for [`protocol`] lines; their stderr is this process's.
    pub(crate) fn start(
        exe: &Path,
        dir: &Path,
        name: &str,
        processes: usize,
        threads: usize,
        first: usize,
        run: &WorkerArgs,
    ) -> Result<LocalCluster> {
        let addresses = free_loopback_addresses(processes)?;
        let cluster_dir = dir.join("cluster");
        std::fs::create_dir_all(&cluster_dir).map_err(|source| Error::Io { path: cluster_dir.clone(), what: "create".into(), source })?;
        remove_stale_hostfiles(&cluster_dir);
        // Unique per cluster: an old cluster's drop removes its own file, never a new one's.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let hostfile = cluster_dir.join(format!("{name}-{}-{n}.hosts", std::process::id()));
        let text = format!(
            "# {name}: {processes} processes x {threads} workers, written by process {}\n{}\n",
            std::process::id(),
            addresses.join("\n")
        );
        std::fs::write(&hostfile, text).map_err(|source| Error::Io { path: hostfile.clone(), what: "write hostfile".into(), source })?;
        let peers = Peers::new(addresses, processes, 0, threads).map_err(Error::Usage)?;
        let (tx, reports) = mpsc::channel();
        let mut cluster = LocalCluster {
            children: Vec::new(),
            lifelines: Vec::new(),
            hostfile: hostfile.clone(),
            peers,
            reports,
            what: name.to_string(),
        };
        for process in first..processes {
            let args = WorkerArgs { processes, process, hostfile: hostfile.clone(), exit_with_parent: true, ..run.clone() };
            let mut cmd = Command::new(exe);
            cmd.arg("--data")
                .arg(dir)
                .arg("-w")
                .arg(threads.to_string())
                .arg("worker")
                .args(args.to_args())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = cmd.spawn().map_err(|source| Error::Io {
                path: exe.to_path_buf(),
                what: format!("start {name} process {process}"),
                source,
            })?;
            let stdout = child.stdout.take().expect("stdout is piped");
            cluster.lifelines.extend(child.stdin.take());
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-p{process}-out"))
                .spawn(move || {
                    // Read to the end whatever comes (a child must never get EPIPE).
                    let mut reader = BufReader::new(stdout);
                    let mut buf = Vec::new();
                    let mut listening = true;
                    while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        buf.clear();
                        if listening && line.starts_with("lambdaflow-worker ") {
                            listening = tx.send(Report::Line(process, line)).is_ok();
                        }
                    }
                    let _ = tx.send(Report::Closed(process));
                })
                .map_err(|source| Error::Io { path: exe.to_path_buf(), what: "start a reader thread".into(), source })?;
            cluster.children.push((process, child));
        }
        Ok(cluster)
    }

    /// The pids of the children, by process index.
    pub(crate) fn pids(&self) -> Vec<(usize, u32)> {
        self.children.iter().map(|(i, c)| (*i, c.id())).collect()
    }

    /// The next report, waiting at most `timeout`.
    pub(crate) fn next_report(&self, timeout: Duration) -> Option<Report> {
        self.reports.recv_timeout(timeout).ok()
    }

    /// The first child that has exited, with its status (successful exits included).
    pub(crate) fn exited(&mut self) -> Result<Option<(usize, ExitStatus)>> {
        for (i, child) in &mut self.children {
            if let Some(status) =
                child.try_wait().map_err(|source| Error::Io { path: PathBuf::from(format!("process {i}")), what: "wait".into(), source })?
            {
                return Ok(Some((*i, status)));
            }
        }
        Ok(None)
    }

    /// Takes child `process` out of the watched set once it exited successfully.
    pub(crate) fn forget(&mut self, process: usize) {
        self.children.retain(|(i, _)| *i != process);
    }

    /// Whether every child has been forgotten (all exited successfully).
    pub(crate) fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// An error naming a child that failed.
    pub(crate) fn failure(&self, process: usize, status: ExitStatus) -> Error {
        Error::Dataflow(DataflowError::ProcessFailed(format!(
            "{} process {process} of {} exited with {status}",
            self.what, self.peers.processes
        )))
    }

    /// Waits until every child has exited, at most `timeout`; kills the rest after it.
    pub(crate) fn wait_all(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (_, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.children.clear();
    }

    /// Kills every child still running and reaps them.
    pub(crate) fn kill_all(&mut self) {
        self.lifelines.clear();
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_file(&self.hostfile);
    }
}

/// In a worker started by [`LocalCluster`]: exits this process when the parent's end of
/// stdin closes (the parent died, even by SIGKILL), so no worker outlives it.
pub(crate) fn exit_with_parent() {
    let _ = std::thread::Builder::new().name("lambdaflow-lifeline".into()).spawn(|| {
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        eprintln!("lambdaflow worker: the process that started this worker is gone; exiting");
        std::process::exit(3);
    });
}

/// What timely's workers are built from: one allocator builder per local worker, and the
/// communication threads' guard (dropping it joins them).
pub(crate) type Communication = (Vec<timely::communication::AllocatorBuilder>, Box<dyn std::any::Any + Send>);

/// Forms this process's part of the cluster and returns what timely's workers are built
/// from (use with `timely::execute::execute_from`). One process: in-process channels.
/// Several: connects to every peer (to lower-numbered processes, and accepts the higher
/// ones), then hands the connections to timely's communication threads.
///
/// The connections are made here rather than by timely, which retries and polls once a
/// second and waits for missing peers forever: here a run forms in milliseconds, and a
/// peer that does not come up within `timeout` (or `alive` reporting a failure meanwhile)
/// is an error naming the processes that are missing.
pub(crate) fn communication(peers: &Peers, timeout: Duration, mut alive: impl FnMut() -> Result<()>) -> Result<Communication> {
    use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
    use timely::communication::allocator::ProcessBuilder;
    use timely::communication::{AllocatorBuilder, Hooks};
    if !peers.spans_processes() {
        return timely::CommunicationConfig::Process(peers.threads)
            .try_build()
            .map_err(|e| Error::Dataflow(DataflowError::ProcessFailed(e)));
    }
    let sockets = connect(peers, timeout, &mut alive)?;
    let hooks = Hooks::default();
    let local = ProcessBuilder::new_typed_vector(peers.threads, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) = initialize_networking_from_sockets(local, sockets, peers.process, peers.threads, hooks)
        .map_err(|e| Error::Dataflow(DataflowError::ProcessFailed(format!("starting the cluster's communication threads failed: {e}"))))?;
    Ok((builders.into_iter().map(AllocatorBuilder::Tcp).collect(), Box::new(guard)))
}

/// One connection to every other process: this one connects to the lower-numbered ones
/// (sending its index) and accepts the higher-numbered ones (reading theirs).
fn connect(peers: &Peers, timeout: Duration, alive: &mut impl FnMut() -> Result<()>) -> Result<Vec<Option<std::net::TcpStream>>> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, ToSocketAddrs};
    let (me, n) = (peers.process, peers.processes);
    let mine = &peers.addresses[me];
    let listener = TcpListener::bind(mine).map_err(|source| Error::Io {
        path: PathBuf::from(mine),
        what: format!("listen as process {me}"),
        source,
    })?;
    listener.set_nonblocking(true).map_err(|source| Error::Io { path: PathBuf::from(mine), what: "configure listener".into(), source })?;
    let deadline = Instant::now() + timeout;
    let token = peers.token();
    let mut sockets: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut to_connect: Vec<usize> = (0..me).collect();
    loop {
        // Dial the lower-numbered processes: send the cluster's token and this index, and
        // count the connection only once the peer acknowledges it.
        to_connect.retain(|&j| {
            let Some(addr) = peers.addresses[j].to_socket_addrs().ok().and_then(|mut a| a.next()) else { return true };
            let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return true };
            let mut hello = token.to_be_bytes().to_vec();
            hello.extend_from_slice(&(me as u64).to_be_bytes());
            let mut ack = [0u8; 1];
            let acked = stream.set_nodelay(true).is_ok()
                && stream.write_all(&hello).is_ok()
                && stream.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
                && stream.read_exact(&mut ack).is_ok()
                && ack[0] == ACK
                && stream.set_read_timeout(None).is_ok();
            if acked {
                sockets[j] = Some(stream);
            }
            !acked
        });
        // Accept the higher-numbered ones (a bounded number per round, so the deadline and
        // `alive` are checked even under a stream of connections).
        for _ in 0..64 {
            match listener.accept() {
                Ok((mut stream, from)) => {
                    // A peer says which cluster and process it is first; anything else (a port
                    // scan, a stray client, another cluster's process) is dropped.
                    let mut hello = [0u8; 16];
                    let read = stream.set_nonblocking(false).is_ok()
                        && stream.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
                        && stream.read_exact(&mut hello).is_ok();
                    let their_token = u64::from_be_bytes(hello[..8].try_into().expect("8 bytes"));
                    let id = u64::from_be_bytes(hello[8..].try_into().expect("8 bytes")) as usize;
                    if read
                        && their_token == token
                        && id > me
                        && id < n
                        && stream.write_all(&[ACK]).is_ok()
                        && stream.set_read_timeout(None).is_ok()
                        && stream.set_nodelay(true).is_ok()
                    {
                        // A peer that dials again (it missed the acknowledgement) replaces
                        // its earlier connection.
                        sockets[id] = Some(stream);
                    } else {
                        eprintln!(
                            "lambdaflow cluster: process {me} ignored a connection from {from} that is not a peer of this cluster \
                             (every process must be started with the same --processes, hostfile and -w; -w defaults to the \
                             machine's cores, here {}: give it explicitly when the machines differ)",
                            peers.threads
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // Errors of one connection (reset or aborted before accept): try the next.
                Err(e) => {
                    eprintln!("lambdaflow cluster: process {me}: accepting a connection failed: {e}");
                    break;
                }
            }
        }
        let missing: Vec<usize> = (0..n).filter(|j| *j != me && sockets[*j].is_none()).collect();
        if missing.is_empty() {
            return Ok(sockets);
        }
        alive()?;
        if Instant::now() >= deadline {
            let list: Vec<String> = missing.iter().map(|j| format!("{j} ({})", peers.addresses[*j])).collect();
            return Err(Error::Dataflow(DataflowError::Timeout(format!(
                "the cluster did not form within {}s: process {me} has no connection with process(es) {} \
                 (is every process started, with the same hostfile, --processes and -w?)",
                timeout.as_secs(),
                list.join(", ")
            ))));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::TempDir;

    // Proves the worker's arguments parse back into what the starting process wrote, and
    // a bad cut is refused naming the value.
    #[test]
    fn worker_args_round_trip() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            worker: WorkerArgs,
        }
        for (role, version) in [(Role::Batch, None), (Role::Speed, Some(7))] {
            let mut args = WorkerArgs::of_run(role, &[10, 0, 9, 11], version, Duration::from_millis(2500));
            args.processes = 4;
            args.process = 3;
            args.hostfile = PathBuf::from("/tmp/some dir/hosts");
            args.exit_with_parent = true;
            let mut argv = vec![std::ffi::OsString::from("worker")];
            argv.extend(args.to_args());
            let parsed = Cli::try_parse_from(argv).expect("parses").worker;
            assert_eq!(parsed, args);
        }
        let err = "1,x,3".parse::<Cut>().expect_err("refused");
        assert!(err.contains("`x`"), "{err}");
    }

    // Proves hostfiles left by a process that is gone (a kill -9) are removed when a new
    // cluster starts, and a live process's are kept.
    #[test]
    fn stale_hostfiles_are_removed() {
        let tmp = TempDir::new("cluster-stale");
        let dir = tmp.join("cluster");
        std::fs::create_dir_all(&dir).expect("dir");
        let dead = dir.join(format!("batch-{}-0.hosts", u32::MAX - 1));
        let live = dir.join("speed-1-0.hosts");
        std::fs::write(&dead, "127.0.0.1:1\n").expect("write");
        std::fs::write(&live, "127.0.0.1:1\n").expect("write");
        remove_stale_hostfiles(&dir);
        assert!(!dead.exists(), "a dead process's hostfile is removed");
        assert!(live.exists(), "a live process's hostfile is kept");
    }

    #[test]
    fn hostfiles_and_peers_are_checked() {
        let tmp = TempDir::new("cluster-hosts");
        let dir = tmp.path();
        let f = dir.join("hosts");
        std::fs::write(&f, "# two\n\n10.0.0.1:7000\n  host-b:7001  \n").expect("write");
        assert_eq!(read_hostfile(&f).expect("hostfile"), vec!["10.0.0.1:7000", "host-b:7001"]);
        for (bad, line) in [("a:1\nb\n", 2), (":80\n", 1), ("a:0\n", 1), ("a:99999\n", 1)] {
            std::fs::write(&f, bad).expect("write");
            let e = read_hostfile(&f).expect_err(bad).to_string();
            assert!(e.contains(&format!("line {line}")), "{bad:?}: {e}");
        }
        let two = vec!["a:1".to_string(), "b:2".to_string()];
        assert!(Peers::new(two.clone(), 3, 0, 1).unwrap_err().contains("lists 2 address(es)"));
        assert!(Peers::new(two.clone(), 2, 2, 1).unwrap_err().contains("out of range"));
        assert!(Peers::new(two.clone(), 2, 0, 0).unwrap_err().contains("-w"));
        assert!(Peers::new(two.clone(), 0, 0, 1).is_err());
        let p = Peers::new(two.clone(), 2, 1, 2).expect("peers");
        assert_eq!((p.workers(), p.process_of(1), p.process_of(2)), (4, 0, 1));
        // Partitions 0..8 on 4 workers: process 1 holds workers 2 and 3.
        assert_eq!(p.own_ends(&[10, 11, 12, 13, 14, 15, 16, 17]), vec![0, 0, 12, 13, 0, 0, 16, 17]);
        assert_eq!(p.token(), Peers::new(two.clone(), 2, 0, 2).expect("peers").token(), "the same for every process");
        assert_ne!(p.token(), Peers::new(two, 2, 1, 1).expect("peers").token(), "another cluster's differs");
    }

    #[test]
    fn processes_connect_and_strangers_are_refused() {
        use std::io::Write;
        let addresses = free_loopback_addresses(3).expect("ports");
        let peers: Vec<Peers> = (0..3).map(|i| Peers::new(addresses.clone(), 3, i, 1).expect("peers")).collect();
        // A stranger connects to process 0 first and claims to be process 1 of another cluster.
        let stranger_to = addresses[0].clone();
        let stranger = std::thread::spawn(move || {
            for _ in 0..200 {
                if let Ok(mut s) = std::net::TcpStream::connect(&stranger_to) {
                    let mut hello = 7u64.to_be_bytes().to_vec();
                    hello.extend_from_slice(&1u64.to_be_bytes());
                    let _ = s.write_all(&hello);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let handles: Vec<_> = peers
            .into_iter()
            .map(|p| {
                std::thread::spawn(move || {
                    connect(&p, Duration::from_secs(10), &mut || Ok(())).map(|s| s.iter().filter(|s| s.is_some()).count())
                })
            })
            .collect();
        let connected: Vec<usize> = handles.into_iter().map(|h| h.join().expect("thread").expect("formed")).collect();
        assert_eq!(connected, vec![2, 2, 2], "every process holds one connection to each other");
        stranger.join().expect("stranger");
    }

    #[test]
    fn a_missing_peer_is_named_after_the_timeout() {
        let addresses = free_loopback_addresses(2).expect("ports");
        let p = Peers::new(addresses.clone(), 2, 0, 1).expect("peers");
        let e = connect(&p, Duration::from_millis(300), &mut || Ok(())).expect_err("nobody else").to_string();
        assert!(e.contains(&format!("process(es) 1 ({})", addresses[1])), "{e}");
        // `alive` failing ends the wait at once, with its error.
        let e = connect(&p, Duration::from_secs(30), &mut || Err(Error::Dataflow(DataflowError::ProcessFailed("child 1 exited".into()))))
            .expect_err("dead")
            .to_string();
        assert!(e.contains("child 1 exited"), "{e}");
    }
}
