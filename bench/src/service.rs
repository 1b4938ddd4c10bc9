//! The service under test, run as a child process like in production.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::cpu;

/// How long the service may take to migrate its database and answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `cohort-ingest serve`; killed when dropped.
pub struct Service {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
}

impl Service {
    /// Starts the service binary next to this executable on a free port, against
    /// `database_url`, and waits until it is ready.
    pub async fn start(database_url: &str, admin_token: &str, client: &reqwest::Client) -> anyhow::Result<Service> {
        let binary = service_binary()?;
        let port = free_port()?;
        let child = Command::new(&binary)
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_TOKEN", admin_token)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the service exited at once")?;
        let mut service = Service { child, pid, base_url: format!("http://127.0.0.1:{port}") };
        service.wait_ready(client).await?;
        Ok(service)
    }

    /// Polls `/readyz` until it answers 200, the service exits, or the timeout passes.
    async fn wait_ready(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("{}/readyz", self.base_url);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the service exited during start-up ({status})");
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("the service was not ready within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The service's peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("cannot read the service's /proc status")?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in the service's /proc status")?;
        Ok(kib / 1024.0)
    }

    /// CPU time the service has used so far (user + system).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu::process_cpu(self.pid).context("the service's CPU time")
    }

    /// Stops the service and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `cohort-ingest` next to this executable (`target/<profile>/`). Under `cargo run` it is
/// (re)built first: `cargo run --bin cohort-bench` builds only the benchmark, and a stale
/// service binary would measure old code.
fn service_binary() -> anyhow::Result<PathBuf> {
    let this = std::env::current_exe().context("cannot locate the benchmark executable")?;
    let directory = this.parent().context("the benchmark executable has no directory")?;
    let binary = directory.join(format!("cohort-ingest{}", std::env::consts::EXE_SUFFIX));
    build_with_cargo(directory)?;
    if !binary.exists() {
        bail!("{} not found: build it first with `cargo build --release --bins`", binary.display());
    }
    Ok(binary)
}

/// Runs `cargo build --bin cohort-ingest` in the profile of `target_directory` when the
/// benchmark was started by cargo (which sets `CARGO` and `CARGO_MANIFEST_DIR`).
fn build_with_cargo(target_directory: &Path) -> anyhow::Result<()> {
    let (Some(cargo), Some(manifest_dir)) = (std::env::var_os("CARGO"), std::env::var_os("CARGO_MANIFEST_DIR")) else {
        return Ok(());
    };
    let mut build = std::process::Command::new(cargo);
    build.arg("build").arg("--quiet").arg("--package").arg("cohort-ingest").arg("--bin").arg("cohort-ingest");
    build.arg("--manifest-path").arg(Path::new(&manifest_dir).join("Cargo.toml"));
    if target_directory.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().context("cannot run cargo to build the service")?;
    if !status.success() {
        bail!("building cohort-ingest failed ({status})");
    }
    Ok(())
}

/// A local port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(listener.local_addr()?.port())
}
