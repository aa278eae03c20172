//! `grantd serve` as a child process (the real binary, its real signal handling and exit),
//! with its stderr collected and its listening addresses read from its first log line.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `grantd serve` child; killed (SIGKILL) on drop. Its stderr is collected.
pub struct Process {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(config: &Path) -> Process {
    let mut command = Command::new(env!("CARGO_BIN_EXE_grantd"));
    command.args(["serve", "--config", config.to_str().unwrap()]);
    spawn_command(command)
}

pub fn spawn_command(mut command: Command) -> Process {
    let mut child = command
        .env("GRANTD_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("grantd proxy listening") {
                let field = |name: &str| {
                    line.split(name).nth(1).map(|s| {
                        s.trim_start_matches("Some(")
                            .split([' ', ')'])
                            .next()
                            .unwrap()
                            .to_string()
                    })
                };
                let _ = tx.send((field("listen=").unwrap(), field("admin=").unwrap()));
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let Ok((proxy, admin)) = rx.recv_timeout(Duration::from_secs(30)) else {
        std::thread::sleep(Duration::from_millis(200));
        panic!("grantd did not start:\n{}", log.lock().unwrap());
    };
    Process {
        child,
        proxy: proxy.parse().unwrap(),
        admin: admin.parse().unwrap(),
        log,
    }
}

impl Process {
    /// SIGTERM, as an orchestrator stops a pod, then waits (up to `within`) for the exit.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "could not signal grantd");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}
