//! A real PostgreSQL server for the reverse-ETL tests: Debian's package (installed by
//! `scripts/test.sh`), a fresh cluster in a temp dir, listening on 127.0.0.1 on a free port,
//! trust authentication for the `tributary` role; stopped (immediate shutdown) on drop.
//! As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The directory of `initdb` and `postgres`: `TRIBUTARY_PG_BIN`, else Debian's newest.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TRIBUTARY_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|p| p.join("postgres").is_file());
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: run scripts/test.sh (it installs Debian's postgresql), or set TRIBUTARY_PG_BIN to the directory of initdb and postgres"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program` with `args`, as the `postgres` user when we are root.
fn command(program: PathBuf, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub struct Postgres {
    server: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a server with a database `app`.
    pub async fn start() -> Postgres {
        Self::start_with(false).await
    }

    /// Starts a server that also accepts TLS (`ssl = on`), its certificate for 127.0.0.1
    /// signed by a CA of its own, at [`Postgres::ca_file`].
    pub async fn start_with_tls() -> Postgres {
        Self::start_with(true).await
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self._dir.path().join("ca.pem")
    }

    async fn start_with(tls: bool) -> Postgres {
        let bin = bin_dir();
        let root = is_root();
        let dir = tempfile::tempdir().expect("temp dir");
        if root {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the PostgreSQL dir to postgres");
        }
        let data = dir.path().join("data");
        let out = command(bin.join("initdb"), root)
            .arg("-D")
            .arg(&data)
            .args(["-U", "tributary", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tls_args: Vec<String> = Vec::new();
        if tls {
            let d = dir.path();
            std::fs::write(
                d.join("server.ext"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            for args in [
                "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=tributary-test-ca",
                "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
                "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext",
            ] {
                let out = Command::new("openssl")
                    .args(args.split(' '))
                    .current_dir(d)
                    .output()
                    .expect("openssl runs");
                assert!(
                    out.status.success(),
                    "openssl {args}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // The server refuses a key file others can read.
            let key = d.join("server.key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if root {
                let status = Command::new("chown")
                    .arg("postgres")
                    .arg(&key)
                    .status()
                    .unwrap();
                assert!(status.success());
            }
            tls_args = vec![
                "-c".into(),
                "log_connections=on".into(),
                "-c".into(),
                "ssl=on".into(),
                "-c".into(),
                format!("ssl_cert_file={}", d.join("server.pem").display()),
                "-c".into(),
                format!("ssl_key_file={}", key.display()),
            ];
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log");
        let server = command(bin.join("postgres"), root)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let pg = Postgres {
            server,
            port,
            _dir: dir,
        };
        // Bounded wait for the server to accept connections.
        for _ in 0..300 {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&pg.url("postgres"), tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                client
                    .batch_execute("CREATE DATABASE app")
                    .await
                    .expect("create database");
                return pg;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "PostgreSQL did not start within 30 s: {}",
            std::fs::read_to_string(pg._dir.path().join("postgres.log")).unwrap_or_default()
        );
    }

    /// The URL of database `db` for the `tributary` role.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://tributary@127.0.0.1:{}/{db}", self.port)
    }

    /// A client of database `app`.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url("app"), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(conn);
        client
    }

    /// Runs `sql` (several statements) in database `app`.
    pub async fn execute(&self, sql: &str) {
        self.client()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown (the postmaster takes its backends down with it).
        let _ = Command::new("kill")
            .args(["-QUIT", &self.server.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
