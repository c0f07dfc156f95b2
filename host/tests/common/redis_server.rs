//! A Redis server of a test's own, on another port than the machine's
//! shared one, for tests that pause, flush or restart Redis without
//! disturbing the tests that run beside them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Append-only file with an fsync per write: nothing acknowledged is
    /// lost by a crash.
    persistent: bool,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it
    /// answers PING.
    pub fn start(persistent: bool) -> Self {
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
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", ""])
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
        let client = redis::Client::open(self.url()).expect("url");
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
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }

    /// Runs one command on a connection of its own (`CLIENT PAUSE`,
    /// `FLUSHALL`).
    pub fn command(&self, args: &[&str]) {
        let client = redis::Client::open(self.url()).expect("url");
        let mut connection = client.get_connection().expect("connection");
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
