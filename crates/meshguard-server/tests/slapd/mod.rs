//! A real OpenLDAP `slapd` for tests and benchmarks: started on a loopback port it picks, with
//! its own mdb database and the memberof overlay, filled with `ldapadd` (alice is in
//! cn=managers, bob is not). Shared by tests/ldap.rs and benches/extauth_net.rs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The running server; killed when dropped.
pub struct Slapd(Child);
impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

const DATA: &str = "dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
userPassword: alice-pw

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
userPassword: bob-pw

dn: cn=managers,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: managers
member: uid=alice,ou=people,dc=example,dc=org
";

/// Runs slapd with the configuration in `dir` on `port` and waits until it accepts.
fn spawn(slapd: &std::path::Path, dir: &std::path::Path, port: u16) -> Slapd {
    let url = format!("ldap://127.0.0.1:{port}/");
    let child = Command::new(slapd)
        .arg("-f")
        .arg(dir.join("slapd.conf"))
        .args(["-h", &url, "-d", "0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("slapd.log")).expect("log"))
        .spawn()
        .expect("start slapd");
    let guard = Slapd(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "slapd did not start: {}",
            std::fs::read_to_string(dir.join("slapd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// Starts slapd again on `port` with the configuration and database an earlier
/// [`start_slapd`] left in `dir` (an outage drill: stop it by dropping the guard).
#[allow(dead_code)]
pub fn restart_slapd(dir: &std::path::Path, port: u16) -> Slapd {
    spawn(
        &slapd_bin().expect("slapd was found at the first start"),
        dir,
        port,
    )
}

/// The installed slapd, if any.
fn slapd_bin() -> Option<PathBuf> {
    ["/usr/sbin/slapd", "/usr/local/libexec/slapd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Starts slapd; `None` (or a panic under CI=true) when it is not installed.
pub fn start_slapd(dir: &std::path::Path) -> Option<(Slapd, u16)> {
    start_slapd_with(dir, "")
}

/// Starts slapd with extra database directives (e.g. `access to` rules) before the overlay.
pub fn start_slapd_with(dir: &std::path::Path, database_extra: &str) -> Option<(Slapd, u16)> {
    let Some(slapd) = slapd_bin() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("slapd is missing; scripts/test.sh installs it (Debian package slapd)");
        }
        eprintln!("SKIPPED: slapd not installed (run scripts/test.sh)");
        return None;
    };
    std::fs::create_dir_all(dir.join("db")).expect("db dir");
    let conf = dir.join("slapd.conf");
    std::fs::write(
        &conf,
        format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {dir}/slapd.pid
database mdb
suffix \"dc=example,dc=org\"
rootdn \"cn=admin,dc=example,dc=org\"
rootpw admin-pw
directory {dir}/db
{database_extra}
overlay memberof
",
            dir = dir.display()
        ),
    )
    .expect("conf");
    let port = free_port();
    let url = format!("ldap://127.0.0.1:{port}/");
    let guard = spawn(&slapd, dir, port);
    std::fs::write(dir.join("data.ldif"), DATA).expect("ldif");
    let out = Command::new("ldapadd")
        .args([
            "-x",
            "-H",
            &url,
            "-D",
            "cn=admin,dc=example,dc=org",
            "-w",
            "admin-pw",
            "-f",
        ])
        .arg(dir.join("data.ldif"))
        .output()
        .expect("ldapadd (ldap-utils)");
    assert!(
        out.status.success(),
        "ldapadd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((guard, port))
}
