//! A Redis server of a test's own, on another port than the machine's
//! shared one, for tests that pause, flush or restart Redis without
//! disturbing the tests that run beside them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Append-only file with an fsync per write: nothing acknowledged is
    /// lost by a crash.
    persistent: bool,
    /// TLS only, with the certificates in this directory (`ca.pem`,
    /// `server.pem`, `server.key`).
    tls: Option<PathBuf>,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it
    /// answers PING.
    pub fn start(persistent: bool) -> Self {
        Self::start_with(persistent, None)
    }

    /// A server that speaks TLS only, with the certificate and authority in
    /// `tls_dir`; clients check it against `ca.pem`.
    pub fn start_tls(tls_dir: &Path) -> Self {
        Self::start_with(false, Some(tls_dir.to_path_buf()))
    }

    fn start_with(persistent: bool, tls: Option<PathBuf>) -> Self {
        let port = super::free_loopback_addr()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            persistent,
            tls,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client of this server (checking its certificate, if TLS).
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()).expect("url"),
            Some(dir) => {
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(dir.join("ca.pem")).expect("ca.pem")),
                };
                redis::Client::build_with_tls(self.url(), certificates).expect("TLS client")
            }
        }
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        command.args(["--bind", "127.0.0.1", "--save", ""]);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(dir) => command
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem")),
        };
        command
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        self.child = Some(command.spawn().expect("redis-server (is it installed?)"));
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = self.client();
        loop {
            let ping = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match ping {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!("redis on port {} never answered: {e}", self.port),
                // Not listening yet, or still loading its append-only file.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGKILLs the server (a crash: no goodbye, no final save) and starts
    /// it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client().get_multiplexed_async_connection().await.expect("redis")
    }

    /// Runs one command on a connection of its own (`CLIENT PAUSE`,
    /// `FLUSHALL`).
    pub fn command(&self, args: &[&str]) {
        let mut connection = self.client().get_connection().expect("connection");
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query::<()>(&mut connection).expect("redis command");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
