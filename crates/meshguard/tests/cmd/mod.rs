//! Running the built binary as a user does, shared by the CLI tests.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshguard");

/// Runs `meshguard ARGS` with `input` on standard input.
pub fn run_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshguard");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// One HTTP/1.1 GET to `addr` with `headers`; the status and the body.
pub fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    (status, body)
}

/// A `meshguard serve` started by a test on loopback ports it picks (add
/// `--http-listen 127.0.0.1:0` and friends to `args`), killed when dropped. The banner is read to
/// its last line; the rest of stderr keeps being read (a server whose stderr closes would die)
/// and arrives on `log`.
pub struct Serve {
    pub child: std::process::Child,
    /// The gRPC, HTTP forward-auth and admin addresses from the banner (empty when off).
    pub grpc: String,
    pub http: String,
    pub admin: String,
    pub banner: String,
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve<I, S>(args: I) -> Serve
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").args(args);
    serve_command(cmd)
}

/// [`serve`] for a command the caller built (its own environment, working directory or
/// program arguments); stdout and stderr are taken over.
pub fn serve_command(mut cmd: Command) -> Serve {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshguard serve");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr"))
        .lines()
        .map_while(Result::ok);
    let (mut grpc, mut http, mut admin, mut banner) =
        (String::new(), String::new(), String::new(), String::new());
    for line in lines.by_ref() {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Envoy ext_authz gRPC (") {
            grpc = line.rsplit(' ').next().unwrap_or("").to_owned();
        }
        if line.contains("HTTP forward-auth (") {
            http = line.split("http://").nth(1).unwrap_or("").trim().to_owned();
        }
        if let Some(a) = line.trim().strip_prefix("admin: http://") {
            admin = a.split('/').next().unwrap_or("").to_owned();
        }
        if line.starts_with("stop with Ctrl-C") {
            break;
        }
    }
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines {
            let _ = tx.send(l);
        }
    });
    Serve {
        child,
        grpc,
        http,
        admin,
        banner,
        log,
    }
}
