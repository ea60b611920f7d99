//! A throwaway Postgres server from Debian's `postgresql` package: `initdb` into a temporary
//! directory, `pg_ctl start` on a free loopback port, stopped and deleted on drop.
//!
//! `initdb` refuses to run as root, so as root every server command runs as the `postgres`
//! user (`runuser -u postgres`) in a directory that user owns; as anyone else they run as
//! that user. The binaries are found in `$SLUICE_PG_BIN`, else the newest
//! `/usr/lib/postgresql/<version>/bin`, else `PATH`.
//!
//! Authentication: TCP connections use SCRAM passwords (the superuser `postgres` has
//! [`PgServer::admin_password`]), so a test of a wrong password means something; the Unix
//! socket (used by `pg_ctl` only) trusts the local user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// TLS files for a server started with [`PgServer::start_tls`]: a CA and a server
/// certificate for `DNS:localhost` only (so `127.0.0.1` fails a host name check).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate (PEM), for `sslrootcert`.
    pub ca_cert: PathBuf,
}

/// A running Postgres server; stopped (immediate mode) and deleted when dropped.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    admin_password: String,
    tls: Option<TlsFiles>,
}

fn find_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file());
    on_path.context(
        "Postgres server binaries not found (initdb, pg_ctl): install Debian's `postgresql` \
         (scripts/setup.sh does) or set SLUICE_PG_BIN",
    )
}

fn is_root() -> bool {
    // SAFETY-free check: /proc/self/status has the effective uid in the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .context("running `id postgres`")?;
        if !out.status.success() {
            bail!("no `postgres` user: install Debian's `postgresql` (scripts/setup.sh does)");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::new();
    while out.len() < bytes * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

impl PgServer {
    /// Starts a server without TLS.
    pub fn start() -> anyhow::Result<PgServer> {
        Self::start_inner(false)
    }

    /// Starts a server with TLS on (`ssl=on`), plaintext still allowed; see [`TlsFiles`].
    pub fn start_tls() -> anyhow::Result<PgServer> {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> anyhow::Result<PgServer> {
        let bin = find_bin()?;
        let as_postgres = is_root();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-pg-{}-{n}", std::process::id()));
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir)?;
        let mut server = PgServer {
            dir: dir.clone(),
            bin,
            port: free_port()?,
            as_postgres,
            admin_password: format!("admin-{}", random_hex(8)),
            tls: None,
        };
        std::fs::write(dir.join("pwfile"), &server.admin_password)?;
        if tls {
            server.tls = Some(make_certs(&dir)?);
        }
        if as_postgres {
            let (uid, gid) = postgres_ids()?;
            chown_tree(&dir, uid, gid)?;
        }
        let data = dir.join("data");
        let pwfile = dir.join("pwfile");
        server.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                &format!("--pwfile={}", path_str(&pwfile)?),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=40 -c log_min_messages=warning",
            server.port,
            path_str(&dir)?,
        );
        if server.tls.is_some() {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                path_str(&dir.join("server.crt"))?,
                path_str(&dir.join("server.key"))?
            ));
        }
        server.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&dir.join("server.log"))?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(server)
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.dir);
        let out = cmd
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            bail!(
                "{program} failed ({}): {}{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The directory of the server's binaries (`psql` is there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The TCP port (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The TLS files, for a server started with [`PgServer::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// `postgres://user:password@host:port/db?query` (the password percent-encoded).
    pub fn url(&self, host: &str, user: &str, password: &str, db: &str, query: &str) -> String {
        let password: String = password
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut url = format!("postgres://{user}:{password}@{host}:{}/{db}", self.port);
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// The superuser's URL over plaintext TCP.
    pub fn admin_url(&self) -> String {
        self.url(
            "127.0.0.1",
            "postgres",
            &self.admin_password,
            "postgres",
            "sslmode=disable",
        )
    }

    /// A superuser connection (plaintext), its connection task spawned on the current runtime.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres password={} dbname=postgres sslmode=disable",
                self.port, self.admin_password
            ),
            tokio_postgres::NoTls,
        )
        .await
        .context("connecting to the test Postgres")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Creates a login role with `password` allowed to read everything.
    pub async fn create_reader(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let client = self.client().await?;
        let quoted = password.replace('\'', "''");
        client
            .batch_execute(&format!(
                "CREATE ROLE {user} LOGIN PASSWORD '{quoted}'; GRANT pg_read_all_data TO {user};"
            ))
            .await?;
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        if let Some(data) = data.to_str() {
            let _ = self.run("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("temporary path is not UTF-8")
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            chown_tree(&path, uid, gid)?;
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// A CA and a server certificate for `DNS:localhost`, made with the `openssl` command.
fn make_certs(dir: &Path) -> anyhow::Result<TlsFiles> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (Debian's `openssl` package)")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    std::fs::write(
        dir.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )?;
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.csr",
        "-subj",
        "/CN=sluice test CA",
    ])?;
    run(&[
        "x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-out", "ca.pem", "-days", "3",
        "-extfile", "ca.ext",
    ])?;
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "3",
        "-extfile",
        "server.ext",
    ])?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    // Readable by the test process (and by the function) whoever owns the directory.
    std::fs::set_permissions(dir.join("ca.pem"), std::fs::Permissions::from_mode(0o644))?;
    Ok(TlsFiles {
        ca_cert: dir.join("ca.pem"),
    })
}

/// Waits until `check` is true, polling every 100 ms, at most `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
